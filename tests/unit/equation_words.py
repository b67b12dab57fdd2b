"""Module equations expanded as formal sums of edge words, for tests that compare an
equation's text with the module's paths (shared by test_graph.py and test_reduce.py)."""

from __future__ import annotations

from collections import Counter

from netmorph_cli.spec.graph import ModuleGraph


class Words:
    """Formal sums of edge words: evaluates an equation text with ⊛ as concatenation.

    ``F2 ⊛ F1`` (apply F1, then F2) becomes the word (F1, F2), i.e. the path in order, so a
    correct module equation evaluates to exactly the multiset of s→t paths.
    """

    def __init__(self, terms: Counter):
        self.terms = terms

    def __add__(self, other: Words) -> Words:
        return Words(self.terms + other.terms)

    def __mul__(self, other: Words) -> Words:  # self ⊛ other: other first
        out: Counter = Counter()
        for a, x in self.terms.items():
            for b, y in other.terms.items():
                out[b + a] += x * y
        return Words(out)


def expand(equation: str, g: ModuleGraph) -> Counter:
    assert equation.startswith("G = ")
    symbols = {e.name: Words(Counter({(e.name,): 1})) for e in g.edges}
    value = eval(equation[4:].replace("⊛", "*"), {"__builtins__": {}}, symbols)
    return value.terms
