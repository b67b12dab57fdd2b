"""Channel movements of a traced model: view, reshape, transpose, permute, split, chunk and
index_select calls that only move values, followed through as an index map (``Moved``) and
turned into one ``channels`` node (or no node) once each pixel is back in place.

ShuffleNet's channel shuffle (view to (N, g, C/g, H, W), transpose, view back) and its
channel split (chunk) are such movements; a reshape that mixes pixels is refused where a
layer consumes it (``conversion.node_of``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .program import Call, SymInt, Value

Converter = Any  # conversion._Converter


@dataclass(frozen=True, eq=False)
class Moved:
    """A pure data movement of a node's (C, H, W) output in progress (view, reshape,
    transpose, permute, split, chunk): ``index`` (any shape, the batch dimension left out)
    holds each element's flat position in the node's output. Once it is (C', H, W) again and
    every pixel stays in place it becomes a ``channels`` node (or the node itself); a
    movement that mixes pixels is refused where it is consumed."""

    node: str
    index: torch.Tensor
    by: str = ""  # the call that made it, for messages

    def channels(self, shape: tuple[int, ...]) -> list[int] | None:
        """The channel index if this is a channel movement of a (C, H, W) ``shape``."""
        idx = self.index
        if len(shape) != 3 or idx.dim() != 3 or tuple(idx.shape[1:]) != shape[1:]:
            return None
        hw = shape[1] * shape[2]
        ch = idx[:, 0, 0] // hw
        pixels = torch.arange(hw).view(shape[1], shape[2])
        if not torch.equal(idx, ch[:, None, None] * hw + pixels):
            return None
        return [int(c) for c in ch]



def _source(c: Converter, call: Call) -> Moved:
    """The tensor argument of a movement call as a ``Moved`` (a node: the identity one)."""
    v = call.args.get("self", call.args.get("input"))
    got = c.env.get(v.name) if isinstance(v, Value) else None
    if isinstance(got, Moved):
        return got
    x = c.value(call, "self" if "self" in call.args else "input")
    shape = c.shapes[x]
    return Moved(x, torch.arange(math.prod(shape)).view(shape))


def _moved(c: Converter, call: Call, m: Moved, index: int = 0) -> None:
    """Bind a movement's result: the node itself, a ``channels`` node, or (still 5-D, or
    not a channel movement yet) the pending ``Moved``."""
    shape = c.shapes[m.node]
    picked = m.channels(shape)
    if picked is None:
        c.bind(call, Moved(m.node, m.index, f"{call.target} (node '{call.name}')"),
               index)  # type: ignore[arg-type]
    elif picked == list(range(shape[0])):
        c.bind(call, m.node, index)
    else:
        name = c.op_name(call, "channels")
        c.bind(call, c.emit(call, name, "channels", [m.node], index=picked), index)


def _batch_first(c: Converter, call: Call, size: list[Any], numel: int) -> list[int]:
    """A view's target without its batch dimension (-1 resolved), or a refusal."""
    if not size or not (isinstance(size[0], SymInt) or size[0] in (-1, c.p.input_shape[0])):
        raise c.fail(call, f"a reshape to {size} that does not keep the batch first")
    rest = [int(s) if not isinstance(s, SymInt) else -2 for s in size[1:]]
    if -2 in rest or rest.count(-1) > 1:
        raise c.fail(call, f"a reshape to {size} whose sizes netmorph cannot fix")
    if -1 in rest:
        known = math.prod(s for s in rest if s != -1)
        rest[rest.index(-1)] = numel // known if known else 0
    if math.prod(rest) != numel:
        raise c.fail(call, f"a reshape of {numel} values per image to {size}")
    return rest


def _dims(c: Converter, call: Call, dims: list[int], rank: int) -> list[int]:
    if any(not -(rank + 1) <= d <= rank for d in dims):
        raise c.fail(call, f"dims {dims} of a {rank + 1}-D tensor")
    out = [d % (rank + 1) for d in dims]
    if 0 in out:
        raise c.fail(call, "a transpose or permute that moves the batch dimension")
    return [d - 1 for d in out]


def _transpose(c: Converter, call: Call) -> None:
    m = _source(c, call)
    a, b = _dims(c, call, [int(call.args["dim0"]), int(call.args["dim1"])], m.index.dim())
    _moved(c, call, Moved(m.node, m.index.transpose(a, b)))


def _permute(c: Converter, call: Call) -> None:
    m = _source(c, call)
    dims = [int(d) for d in call.args["dims"]]
    if dims[0] % (m.index.dim() + 1) != 0:
        raise c.fail(call, "a permute that moves the batch dimension")
    _moved(c, call, Moved(m.node, m.index.permute(_dims(c, call, dims[1:], m.index.dim()))))


def _split(c: Converter, call: Call) -> None:
    """split / split_with_sizes / chunk / unbind-free splits: each piece is a movement."""
    m = _source(c, call)
    dim = _dims(c, call, [int(call.args.get("dim", 0))], m.index.dim())[0]
    op = call.target.split(".")[1]
    if op == "chunk":
        pieces = m.index.chunk(int(call.args["chunks"]), dim)
    else:
        sizes = call.args.get("split_size") or call.args.get("split_sizes") or 0
        pieces = m.index.split(sizes if isinstance(sizes, list) else int(sizes), dim)
    for i, piece in enumerate(pieces):
        if i < len(call.outputs) and call.outputs[i] is not None:
            _moved(c, call, Moved(m.node, piece), i)


def _index_select(c: Converter, call: Call) -> None:
    """x.index_select(1, constant): what an exported ``channels`` node traces to."""
    _, index = c.param(call, "index")
    m = _source(c, call)
    dim = _dims(c, call, [int(call.args.get("dim", 0))], m.index.dim())[0]
    _moved(c, call, Moved(m.node, m.index.index_select(dim, index.long().reshape(-1))))
