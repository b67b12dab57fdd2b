"""Inner widths that fit the layer (issue 22): fixed, relative ("2.5x" of the layer's output
channels, rounded up) or open ("auto" / no entry: the layer's output width, raised to the
feasibility bound + 10% where Algorithm 2 needs it); what a morph records and prints; width
advice checked by one re-solve, or a plain "none proven" with the reason.

Tolerances: F64 = 1e-10, the float64 verify default (parent vs child logits, relative) and
the solver's float64 residual.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from netmorph_cli.errors import InfeasibleError, NetworkError, SolverError, SpecError
from netmorph_cli.morph.morphs import morph_at
from netmorph_cli.morph.verify import verify
from netmorph_cli.network import zoo
from netmorph_cli.network.description import FORMAT, Network, node
from netmorph_cli.network.history import MorphRecord, check_entry
from netmorph_cli.solver import solve
from netmorph_cli.solver.feasibility import MARGIN, with_margin
from netmorph_cli.solver.rng import SeededRng
from netmorph_cli.solver.solve import morph_filter, solve_random
from netmorph_cli.solver.widths import module_widths, resolve
from netmorph_cli.spec.parse import load_spec, spec_from_dict

pytestmark = pytest.mark.usefixtures("one_thread")

MODULES = Path(__file__).resolve().parents[2] / "examples" / "modules"
F64 = 1e-10
D_EDGES = [("F1", "s", "a", 3), ("F2", "s", "b", 3), ("F3", "a", "c", 3), ("F4", "b", "c", 3),
           ("F5", "a", "t", 3), ("F6", "c", "t", 3), ("F7", "b", "t", 3)]
# a module on which the unknowns count's candidate does not solve (its paths overlap)
M82_EDGES = [("E0", "s", "a", 3), ("E1", "s", "b", 3), ("E2", "s", "c", 3), ("E3", "s", "d", 3),
             ("E4", "a", "b", 3), ("E5", "a", "c", 1), ("E6", "a", "d", 1), ("E7", "a", "t", 1),
             ("E8", "b", "c", 3), ("E9", "c", "d", 1), ("E10", "d", "t", 3)]


def spec(name: str, edges=D_EDGES, **channels: int | str):
    return spec_from_dict({"name": name, "channels": channels, "edges": [
        {"name": n, "from": a, "to": b, "kernel": k} for n, a, b, k in edges]})


def rng(seed: int = 0) -> SeededRng:
    return SeededRng(seed, torch.float64, "cpu")


def net() -> Network:
    """input (3, 8, 8) → c1 3→8 → c2 8→16 (widening) → c3 16→8 (narrowing) → c4 8→8
    (square), all 3×3 'same' → GAP → fc, float64 with random weights."""
    convs = [("c1", "input", 3, 8), ("c2", "c1", 8, 16), ("c3", "c2", 16, 8), ("c4", "c3", 8, 8)]
    desc = {"format": FORMAT, "arch": "widths", "input": [3, 8, 8], "num_classes": 3,
            "output": "fc", "nodes": [
                *(node(n, "conv", [x], **{"in": i, "out": o}, kernel=[3, 3], padding=[1, 1])
                  for n, x, i, o in convs),
                node("g", "gap", ["c4"]), node("fc", "linear", ["g"], **{"in": 8, "out": 3})]}
    gen = torch.Generator().manual_seed(0)
    tensors = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64)
               for k, v in zoo.init_tensors(desc).items()}
    return Network(desc, tensors).check()


# -- resolving -------------------------------------------------------------------------------

@pytest.mark.parametrize("rule, c_out, want", [("2.5x", 16, 40), ("1.1x", 10, 11),
                                               ("0.5x", 3, 2), ("0.01x", 16, 1),
                                               ("3x", 4, 12), ("1x", 64, 64)])
def test_relative_widths_are_the_layer_output_times_n_rounded_up(rule, c_out, want):
    graph = spec("D_rel", a=rule, b=7, c="auto")
    fixed, choice = resolve(graph, 16, c_out)
    assert choice.widths["a"] == want and choice.rules["a"] == rule  # exact: 1.1·10 is 11
    assert choice.widths["b"] == 7 and choice.rules["b"] == "fixed"
    assert fixed.channels == choice.inner and not fixed.width_rules
    assert f"a={want}" in choice.line()


def test_example_d_fits_every_layer_ratio():
    """D.json's "3x": a and b alone carry the source cut at any C_in (≥ 2.72·C_out), so no
    layer ratio makes it too narrow."""
    d = load_spec(MODULES / "D.json")
    assert d.width_rules == {"a": "3x", "b": "3x", "c": "3x"} and not d.channels
    assert module_widths(d, 16, 16) == {"s": 16, "a": 48, "b": 48, "c": 48, "t": 16}
    assert module_widths(d, 64, 64)["a"] == 192
    for c_in, c_out in ((16, 4), (8, 16), (16, 16)):
        res = morph_filter(rng(1).filter(c_out, c_in, (3, 3)), d, seed=0)
        assert res.residual <= F64 and res.widths.rules == {b: "3x" for b in "abc"}


def test_a_relative_width_over_the_limit_at_this_layer_names_the_blob():
    graph = spec("D_big", a="5000x", b=8, c=8)
    with pytest.raises(SpecError, match=r"width '5000x' for blob 'a' is 80000 channels at "
                                        r"this 16→16 layer, larger than netmorph's limit"):
        resolve(graph, 16, 16)


def test_open_widths_are_the_layer_output_unless_the_bound_needs_more():
    """Simple modules (and the presets) keep the old default, the layer's output width; D
    open at 16 → 16 gets the sink cut's bound (30, 28, 30) + 10%."""
    a = load_spec(MODULES / "A.json")
    assert resolve(a, 8, 16)[1].widths["a"] == 16
    assert resolve(a, 16, 8)[1].line() == ("a=8 (auto: the layer's output width; the "
                                           "feasibility bound needs no more)")
    d = spec("D_auto", a="auto")  # b, c: no entry, open too
    _, choice = resolve(d, 16, 16)
    assert choice.raised == {"a": 30, "b": 28, "c": 30}
    assert choice.inner == {"a": 33, "b": 31, "c": 33} == {
        b: with_margin(w) for b, w in choice.raised.items()}
    assert choice.line() == ("a=33 b=31 c=33 (auto: feasibility bound of the sink cut (F5, "
                             f"F6, F7), a=30 b=28 c=30, + {MARGIN:.0%} margin)")
    # a fixed blob stays as given; only the open ones are raised
    _, mixed = resolve(spec("D_mixed", b=16), 16, 16)
    assert mixed.widths["b"] == 16 and mixed.widths["a"] > 16 and mixed.widths["c"] > 16


# -- auto widths solve, at square and non-square layers ----------------------------------------

@pytest.mark.parametrize("layer", ["c2", "c3", "c4"], ids=["8to16", "16to8", "8to8"])
def test_auto_widths_solve_and_are_recorded(layer):
    parent = net()
    child = morph_at(parent, spec("D_auto", a="auto", b="auto", c="auto"), layer, seed=0)
    report = verify(parent, child, samples=8)
    assert report.max_rel_err <= F64, report.max_rel_err
    entry = child.history[-1]
    check_entry(entry)
    record = MorphRecord.from_json(entry)
    c_in, c_out = parent.nodes[layer]["in"], parent.nodes[layer]["out"]
    assert record.widths == resolve(spec("D_auto"), c_in, c_out)[1].inner
    assert set(record.widths) == {"a", "b", "c"} and min(record.widths.values()) >= c_out
    assert record.widths_how.startswith("auto")
    assert record.spec["channels"] == {"a": "auto", "b": "auto", "c": "auto"}
    assert child.tensors[f"{layer}.F1.weight"].shape == (record.widths["a"], c_in, 3, 3)
    assert record.residual <= F64
    assert MorphRecord.from_json(json.loads(json.dumps(entry))).to_json() == entry


def test_relative_widths_are_recorded_as_numbers_with_their_rule():
    parent = net()
    child = morph_at(parent, load_spec(MODULES / "D.json"), "c2", seed=0)  # 8 → 16
    entry = child.history[-1]
    assert entry["widths"] == {"a": 48, "b": 48, "c": 48}
    assert entry["widths_how"] == "3x of the layer's 16 output channels"
    assert entry["spec"]["channels"] == {"a": "3x", "b": "3x", "c": "3x"}
    assert verify(parent, child, samples=4).max_rel_err <= F64


def test_a_history_widths_field_of_the_wrong_type_is_refused():
    with pytest.raises(NetworkError, match="'widths' must be an object of inner blob → "
                                           "positive integer width"):
        check_entry({"op": "module", "widths": {"a": "3x"}})
    with pytest.raises(NetworkError, match="'widths_how' must be a string"):
        check_entry({"op": "module", "widths_how": 3})
    old = {"op": "module", "module": "D", "residual": 1e-15}  # written before: no widths
    assert MorphRecord.from_json(old).widths is None


def test_auto_widths_widen_once_more_where_the_bound_does_not_solve():
    """M82's cheapest bound (edge E4: a = b = 26 at C = 8, + 10%) grinds; the second try,
    1.5× wider, solves — and says so."""
    res = morph_filter(rng(1).filter(8, 8, (3, 3)), spec("M82", M82_EDGES), seed=0,
                       max_seconds=120)
    assert res.residual <= F64
    assert "1.5× wider" in res.widths.line() and res.widths.inner["a"] == 44


def test_reduce_solve_resolves_against_its_layer():
    res = solve_random(load_spec(MODULES / "D.json"), channels=8, seed=0)
    js = res.to_json()
    assert js["widths"] == {"a": 24, "b": 24, "c": 24}
    assert js["width_rules"] == {"a": "3x", "b": "3x", "c": "3x"}
    auto = solve_random(spec("D_auto"), channels=8, seed=0).to_json()
    assert auto["widths"] == {"a": 17, "b": 16, "c": 17} and auto["residual"] <= F64


# -- fixed widths: refused with advice proven by one re-solve -----------------------------------

def advised(msg: str) -> dict:
    assert "verified, a re-solve of this filter at those widths" in msg, msg
    return json.loads(re.search(r'"channels": (\{[^}]*\})', msg).group(1))


@pytest.mark.parametrize("channels", [{"a": 8, "b": 8, "c": 8}, {"a": "1x", "b": "1x",
                                                                 "c": "1x"}],
                         ids=["ints", "relative"])
def test_fixed_widths_too_narrow_are_refused_with_proven_advice(channels):
    parent = net()
    with pytest.raises(SolverError) as info:
        morph_at(parent, spec("D_fixed", **channels), "c4", seed=0)
    msg = str(info.value)
    assert "too narrow for Algorithm 2 at these widths (a: 8, b: 8, c: 8" in msg
    wide = advised(msg)
    assert wide == {"a": 17, "b": 16, "c": 17}  # the sink cut's 8, 6, 8 … raised + 10%
    child = morph_at(parent, spec("D_fixed", **wide), "c4", seed=0)
    assert verify(parent, child, samples=4).max_rel_err <= F64


def test_relative_widths_too_narrow_at_a_narrowing_layer_stay_fixed():
    """"2.5x" of a 16 → 4 layer is 10 channels: too narrow; the user chose it, so it is
    refused (with advice), not silently widened."""
    graph = spec("D_25", a="2.5x", b="2.5x", c="2.5x")
    with pytest.raises(InfeasibleError) as info:
        morph_filter(rng(1).filter(4, 16, (3, 3)), graph, seed=0)
    msg = str(info.value)
    assert "(a: 10, b: 10, c: 10; layer 16→4)" in msg
    wide = advised(msg)
    assert wide["c"] == "2.5x" and wide["a"] > 10  # the unwidened blob keeps its rule


def test_advice_that_would_take_too_long_is_not_printed_and_says_why(monkeypatch):
    monkeypatch.setattr(solve, "solve_seconds", lambda *a, **k: 1e4)
    with pytest.raises(InfeasibleError) as info:
        morph_filter(rng(1).filter(8, 8, (3, 3)), spec("D_fixed", a=8, b=8, c=8), seed=0)
    msg = str(info.value)
    assert "No width advice is proven (tried: " in msg
    assert "would take about 10000 s on this machine, more than the 10 s allowed" in msg
    assert "Widen" not in msg and "verified" not in msg
    assert 'leave these blobs "auto"' in msg
