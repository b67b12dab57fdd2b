"""Node attributes: the ``Attr`` record and the checks an op's attributes are validated by.

``check(node, attr)`` raises ``ValueError`` with a message naming the field;
``network.validate_description`` prefixes it with the node (``node 'x' (conv): …``). The op
table (``ops.py``) lists each op's attributes with these checks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..base.limits import MAX_MAP_SIDE, MAX_WIDTH

Node = Mapping[str, Any]
Check = Callable[[Node, str], object]
REQUIRED: Any = object()  # ``Attr.default`` of an attribute every node must give


def short(v: Any) -> str:
    """``repr`` cut to 60 characters, for error messages quoting user input."""
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "…"


def finite(v: Any) -> bool:
    """A JSON number (not a boolean) that is finite."""
    return type(v) in (int, float) and math.isfinite(v)


def as_pair(v: Any) -> tuple[int, int]:
    """An int or [h, w] as (h, w)."""
    a, b = [v, v] if isinstance(v, int) else list(v)
    return a, b


# -- attribute checks: each ``check(node, attr)`` raises ValueError naming the field ----------

def integer(lo: int, hi: int) -> Check:
    """An integer in [lo, hi]."""
    def check(n: Node, attr: str) -> int:
        v = n[attr]
        if type(v) is not int or not lo <= v <= hi:
            raise ValueError(f"{attr} must be an integer from {lo} to {hi}, not {short(v)}")
        return v
    return check


count = integer(1, MAX_WIDTH)  # a width (channels, features, classes)


def pair(lo: int, hi: int = MAX_MAP_SIDE) -> Check:
    """[h, w], integers in [lo, hi] (kernel, stride, padding, dilation, pad)."""
    def check(n: Node, attr: str) -> list[int]:
        v = n[attr]
        if not (isinstance(v, list) and len(v) == 2
                and all(type(i) is int and i >= lo for i in v)):
            raise ValueError(f"{attr} must be a list of two integers ≥ {lo} (e.g. "
                             f"[{max(lo, 1)}, {max(lo, 1)}]), not {short(v)}")
        if max(v) > hi:
            raise ValueError(f"{attr} {v} is larger than netmorph's limit of {hi}")
        return v
    return check


def boolean(n: Node, attr: str) -> None:
    if type(n[attr]) is not bool:
        raise ValueError(f"{attr} must be true or false, not {short(n[attr])}")


def number(n: Node, attr: str) -> None:
    if not finite(n[attr]):
        raise ValueError(f"{attr} must be a finite number, not {short(n[attr])}")


def probability(n: Node, attr: str) -> None:
    if not (finite(n[attr]) and 0 <= n[attr] < 1):
        raise ValueError(f"{attr} must be a number from 0 to below 1, not {short(n[attr])}")


def choice(*allowed: str) -> Check:
    def check(n: Node, attr: str) -> None:
        if n[attr] not in allowed:
            raise ValueError(f"{attr} must be one of {', '.join(map(repr, allowed))}, "
                             f"not {short(n[attr])}")
    return check



@dataclass(frozen=True)
class Attr:
    """One attribute of an op: its name, its check and its default (``REQUIRED``: none)."""

    name: str
    check: Check
    default: Any = REQUIRED

    @property
    def required(self) -> bool:
        return self.default is REQUIRED
