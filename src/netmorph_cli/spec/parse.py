"""Module-spec parsing and validation: JSON text → a checked ``ModuleGraph``.

Format (DESIGN.md): ``{"name"?, "source"?, "sink"?, "channels"?, "edges": [{"name"?,
"from", "to", "kernel"}, …]}``. ``kernel`` is a positive odd int or ``[kh, kw]``. When
``source``/``sink`` are left out they are inferred as the one blob with no incoming
(outgoing) edge. Every refusal names the culprit.
"""

from __future__ import annotations

import json
import math
import re
from fractions import Fraction
from pathlib import Path
from typing import Any

from ..base.limits import (
    MAX_JSON_DEPTH,
    MAX_KERNEL,
    MAX_SPEC_BYTES,
    MAX_WIDTH,
    JSONDepthError,
    parse_json,
    read_capped,
)
from ..errors import SpecError
from .graph import Edge, Kernel, ModuleGraph

_TOP_KEYS = {"name", "source", "sink", "channels", "edges"}
_EDGE_KEYS = {"name", "from", "to", "kernel"}


def load_spec(path: str | Path) -> ModuleGraph:
    """Read and validate the spec file at ``path`` (at most ``MAX_SPEC_BYTES``; a device or
    a FIFO is read up to that cap too, never until memory runs out)."""
    p = Path(path)
    if not p.exists():
        raise SpecError(f"spec file '{p}' does not exist")
    if p.is_dir():
        raise SpecError(f"spec file '{p}' is a directory, not a JSON file")
    try:
        raw = read_capped(p, MAX_SPEC_BYTES)
    except OSError as exc:
        raise SpecError(f"cannot read spec file '{p}': {exc.strerror or exc}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(f"spec file '{p}' is larger than {MAX_SPEC_BYTES // 2**20} MiB; "
                        "a module spec is a small JSON file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"cannot read spec file '{p}': not UTF-8 text ({exc.reason} at "
                        f"byte {exc.start})") from None
    return parse_spec(text, source_name=str(p))


def parse_spec(text: str, source_name: str = "spec") -> ModuleGraph:
    """Parse JSON ``text`` into a validated ModuleGraph."""
    if not text.strip():
        raise SpecError(f"{source_name} is empty: a module spec is a JSON object with 'edges'")
    try:
        data = parse_json(text)
    except json.JSONDecodeError as exc:
        raise SpecError(f"{source_name}: malformed JSON at line {exc.lineno}, column "
                        f"{exc.colno}: {exc.msg}") from None
    except JSONDepthError:
        raise SpecError(f"{source_name}: JSON nested more than {MAX_JSON_DEPTH} levels deep; "
                        "a module spec needs 4") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise SpecError(f"{source_name}: malformed JSON: {str(exc).split(';')[0]}") from None
    return spec_from_dict(data)


def spec_from_dict(data: Any) -> ModuleGraph:
    """Validate an already-decoded spec object."""
    if not isinstance(data, dict):
        raise SpecError(f"a module spec must be a JSON object, got {_kind(data)}")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise SpecError(f"unknown key {unknown[0]!r} in spec "
                        f"(known keys: {', '.join(sorted(_TOP_KEYS))})")
    if "edges" not in data:
        raise SpecError("spec is missing the key 'edges'")
    raw_edges = data["edges"]
    if not isinstance(raw_edges, list):
        raise SpecError(f"'edges' must be a list, got {_kind(raw_edges)}")
    if not raw_edges:
        raise SpecError("module is empty: 'edges' lists no edge")
    named = {raw["name"] for raw in raw_edges if isinstance(raw, dict) and "name" in raw
             and isinstance(raw["name"], str)}
    edges = tuple(_parse_edge(i, raw, named) for i, raw in enumerate(raw_edges))
    channels, rules = _parse_channels(data.get("channels", {}))
    name = data.get("name", "")
    if not isinstance(name, str):
        raise SpecError(f"'name' must be a string, got {_kind(name)}")
    source = _terminal(data, "source", edges)
    sink = _terminal(data, "sink", edges)
    for role, blob in (("source", source), ("sink", sink)):
        if blob in channels or blob in rules:
            raise SpecError(f"'channels' gives a width for the {role} {blob!r}: source and "
                            "sink take the widths of the layer being morphed")
    return ModuleGraph(source, sink, edges, channels, name, rules).check()


def _parse_edge(i: int, raw: Any, named: set[str]) -> Edge:
    where = f"edge #{i + 1}"
    if not isinstance(raw, dict):
        raise SpecError(f"{where} must be a JSON object, got {_kind(raw)}")
    if "name" in raw:
        if not isinstance(raw["name"], str) or not raw["name"]:
            raise SpecError(f"{where}: 'name' must be a non-empty string")
        where = f"edge {raw['name']!r}"
    unknown = sorted(set(raw) - _EDGE_KEYS)
    if unknown:
        raise SpecError(f"{where}: unknown key {unknown[0]!r} "
                        f"(known keys: {', '.join(sorted(_EDGE_KEYS))})")
    for key in ("from", "to", "kernel"):
        if key not in raw:
            raise SpecError(f"{where} is missing the key {key!r}")
    for key in ("from", "to"):
        if not isinstance(raw[key], str) or not raw[key]:
            raise SpecError(f"{where}: {key!r} must be a blob name (non-empty string), "
                            f"got {raw[key]!r}")
    name = raw["name"] if "name" in raw else _default_name(i, named)
    return Edge(name, raw["from"], raw["to"], _parse_kernel(where, raw["kernel"]))


def _default_name(i: int, named: set[str]) -> str:
    """``e<i+1>`` for the i-th edge, unless an explicitly named edge already has it."""
    name, k = f"e{i + 1}", 0
    while name in named:
        k += 1
        name = f"e{i + 1}_{k}"
    return name


def _parse_kernel(where: str, k: Any) -> Kernel:
    if isinstance(k, list):
        if len(k) != 2:
            raise SpecError(f"{where}: kernel must be an odd int or [kh, kw], "
                            f"got a list of {len(k)}")
        return (_odd(where, k[0]), _odd(where, k[1]))
    return (_odd(where, k), _odd(where, k))


def _odd(where: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1 or v % 2 == 0:
        raise SpecError(f"{where}: bad kernel size {json.dumps(v)}: kernel sizes must be "
                        "positive odd integers (1, 3, 5, …)")
    if v > MAX_KERNEL:
        raise SpecError(f"{where}: kernel size {v} is larger than netmorph's limit of "
                        f"{MAX_KERNEL}")
    return v


_WIDTHS = ('a width is a positive integer (fixed), a multiple of the layer\'s output '
           'channels such as "2.5x" (rounded up), or "auto" (chosen for the layer from the '
           'feasibility bound)')


def _parse_channels(raw: Any) -> tuple[dict[str, int], dict[str, str]]:
    """(fixed widths, width rules: blob → "Nx" or "auto") of a spec's "channels"."""
    if not isinstance(raw, dict):
        raise SpecError(f"'channels' must be an object of blob → width, got {_kind(raw)}")
    fixed: dict[str, int] = {}
    rules: dict[str, str] = {}
    for blob, w in raw.items():
        if isinstance(w, str):
            rules[blob] = width_rule(blob, w)
            continue
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            raise SpecError(f"bad width {short_json(w)} for blob {blob!r}: {_WIDTHS}")
        if w > MAX_WIDTH:
            raise SpecError(f"width {w} for blob {blob!r} is larger than netmorph's limit of "
                            f"{MAX_WIDTH} channels")
        fixed[blob] = w
    return fixed, rules


def width_rule(blob: str, text: str) -> str:
    """The canonical form of a width given as text (``"2.5x"``, ``"auto"``), or the
    ``SpecError`` naming ``blob`` and what a width may be."""
    t = text.strip().lower()
    if t == "auto":
        return "auto"
    m = _RELATIVE.fullmatch(t) if len(t) <= 24 else None
    if m is None:
        raise SpecError(f"bad width {short_json(text)} for blob {blob!r}: {_WIDTHS}")
    factor = Fraction(m[1])
    if factor <= 0:
        raise SpecError(f"width {short_json(text)} for blob {blob!r} is zero channels at "
                        f"every layer: {_WIDTHS}")
    if factor > MAX_WIDTH:
        raise SpecError(f"width {short_json(text)} for blob {blob!r} is larger than "
                        f"netmorph's limit of {MAX_WIDTH} channels at every layer")
    return f"{m[1]}x"


_RELATIVE = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*x")


def relative_width(rule: str, channels: int) -> int:
    """``"2.5x"`` of ``channels``: 2.5·channels rounded up (exact: no float rounding)."""
    return max(1, math.ceil(Fraction(rule[:-1]) * channels))


def short_json(v: Any, limit: int = 40) -> str:
    text = json.dumps(v)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _terminal(data: dict, role: str, edges: tuple[Edge, ...]) -> str:
    """The declared source/sink, or the unique blob with no in (out) edges."""
    if role in data:
        blob = data[role]
        if not isinstance(blob, str) or not blob:
            raise SpecError(f"{role!r} must be a blob name (non-empty string), got {blob!r}")
        return blob
    blobs = list(dict.fromkeys(b for e in edges for b in (e.src, e.dst)))
    has = {e.dst for e in edges} if role == "source" else {e.src for e in edges}
    cands = [b for b in blobs if b not in has]
    what = "incoming" if role == "source" else "outgoing"
    if not cands:
        probe = ModuleGraph("", "", edges)
        cycle = probe.find_cycle()
        if cycle:
            raise SpecError(f"module has a cycle: {' → '.join(cycle)}")
        raise SpecError(f"no {role}: every blob has {what} edges")  # pragma: no cover
    if len(cands) > 1:
        raise SpecError(f"several {role}s: blobs {', '.join(map(repr, cands))} have no "
                        f"{what} edges; a module has exactly one {role}")
    return cands[0]


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(v), type(v).__name__)
