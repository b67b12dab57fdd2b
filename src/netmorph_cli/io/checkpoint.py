"""Checkpoints: netmorph's safetensors and ``.pt`` files, atomic writes, safe loading.

A netmorph checkpoint is a network description plus its tensors, the morph history and free
metadata (normalization, parent sha256, …). Two containers hold the same content:

- safetensors (the default; any suffix but ``.pt``/``.pth``): tensors as they are, and
  string metadata ``{"format": "netmorph", "netmorph": "1", "version", "description",
  "history", "meta"}`` where the last three are JSON;
- ``.pt`` (or ``.pth``): ``torch.save`` of a plain dict ``{"netmorph": 1, "version",
  "description", "history", "meta", "state_dict"}`` that loads with
  ``torch.load(weights_only=True)``.

Reading detects the container by content, never by suffix, and never runs pickled code:
``.pt`` files are always read with ``torch.load(weights_only=True)``. Every failure is one
``CheckpointError`` that names the file and says what to do. Writes are atomic (a temp file in
the same directory, fsync, ``os.replace``), never overwrite an input, and need ``force`` to
replace an existing output. Plain PyTorch state_dicts come in through ``importers.py``.
"""

from __future__ import annotations

import json
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from safetensors import SafetensorError
from safetensors import torch as st

from .. import __version__
from ..base import limits
from ..errors import CheckpointError, NetworkError
from ..network.attrs import short
from ..network.description import FORMAT as DESCRIPTION_FORMAT
from ..network.description import (
    Network,
    expected_tensors,
    validate_description,
    validate_history,
    validate_meta,
)
from . import outputs

FORMAT = 1  # checkpoint container format this netmorph writes and reads
_MAX_HEADER = limits.MAX_SAFETENSORS_HEADER  # a safetensors header larger than this is not one
_LIST = 8  # keys shown in an error before "… and N more"
WRAPPERS = ("state_dict", "model", "model_state_dict")  # dict keys a state_dict may sit under
TORCH_SUFFIXES = (".pt", ".pth")  # written with torch.save; every other suffix is safetensors


# --------------------------------------------------------------------------------------------
# hashing and writing

def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes (what ``meta['parent_sha256']`` refers to)."""
    return outputs.sha256(path)


def save(net: Network, path: str | Path, *, force: bool = False,
         protect: Iterable[str | Path] = ()) -> str:
    """Write ``net`` to ``path`` under the write policy (``outputs.py``: atomic, exclusive
    without ``force``, never over one of ``protect``, the inputs); return the sha256 of the
    written file.

    ``.pt``/``.pth`` write a torch.save dict, anything else safetensors.
    ``meta['sha256']`` is not written: a file cannot hold its own digest (see ``file_sha256``).
    """
    net.check()
    path = Path(path)
    outputs.check_outputs([path], inputs=protect, force=force)
    tensors = _plain_tensors(net.tensors)
    fields = {
        "description": _dumps(net.description, "description"),
        "history": _dumps(net.history, "history"),
        "meta": _dumps({k: v for k, v in net.meta.items() if k != "sha256"}, "meta"),
    }
    writer: Callable[[IO[bytes]], Any]
    if path.suffix.lower() in TORCH_SUFFIXES:
        payload = {"netmorph": FORMAT, "version": __version__, **fields, "state_dict": tensors}
        writer = lambda f: torch.save(payload, f)  # noqa: E731
    else:
        metadata = {"format": "netmorph", "netmorph": str(FORMAT), "version": __version__,
                    **fields}
        writer = lambda f: f.write(_canonical(st.save(tensors, metadata=metadata)))  # noqa: E731
    try:
        return outputs.write_file(path, writer, force=force, inputs=protect)
    except (SafetensorError, RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"cannot write '{path}': {_first_line(exc)}") from None


def check_output(path: str | Path, *, force: bool = False,
                 protect: Iterable[str | Path] = ()) -> None:
    """Refuse an output ``save`` would refuse, before any expensive work is done."""
    outputs.check_outputs([path], inputs=protect, force=force)


def _canonical(blob: bytes) -> bytes:
    """A safetensors file with its JSON header written with sorted keys: the writer emits
    the header from hash maps, so the same network would give a different file (and
    sha256) each time. Tensor offsets are relative to the data, so only the header moves;
    it stays padded with spaces to a multiple of 8 bytes, as the format asks."""
    n = int.from_bytes(blob[:8], "little")
    header = json.dumps(json.loads(blob[8:8 + n]), sort_keys=True, separators=(",", ":"))
    raw = header.encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + blob[8 + n:]


def _plain_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU tensors that each own compact, unshared storage (safetensors refuses shared or
    strided tensors; torch.save would write a view's whole storage). Copies keep every bit."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, t in tensors.items():
        t = t.detach().cpu()
        storage = t.untyped_storage()
        if (not t.is_contiguous() or t.storage_offset() != 0
                or storage.nbytes() != t.numel() * t.element_size()
                or storage.data_ptr() in seen):
            t = t.clone(memory_format=torch.contiguous_format)
        if t.numel():
            seen.add(t.untyped_storage().data_ptr())
        out[k] = t
    return out


def _dumps(value: Any, what: str) -> str:
    def default(o: Any) -> Any:
        if hasattr(o, "item") and callable(o.item):  # numpy / torch scalars
            return o.item()
        if hasattr(o, "tolist") and callable(o.tolist):
            return o.tolist()
        raise TypeError(f"{type(o).__name__} is not JSON-serializable")

    try:
        return json.dumps(value, default=default)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"the network's {what} cannot be stored: {exc}") from None


# --------------------------------------------------------------------------------------------
# reading

def load(path: str | Path) -> Network:
    """Read a netmorph checkpoint (safetensors or ``.pt``, detected by content).

    Raises one ``CheckpointError`` for a missing, empty, truncated, corrupt, foreign, unsafe
    or newer file, or one whose tensors do not match its description.
    """
    path = Path(path)
    kind = sniff(path)
    if kind == "safetensors":
        metadata, tensors = read_safetensors(path)
        if not metadata or metadata.get("format") != "netmorph":
            raise CheckpointError(
                f"'{path}' is a safetensors file without netmorph metadata, not a netmorph "
                f"checkpoint; if it holds a plain state_dict of a known layout, bring it in "
                f"with `netmorph import {path} -o OUT.safetensors`")
        _check_format(path, metadata.get("netmorph", "1"), metadata.get("version"))
        return _network(path, metadata, tensors)
    obj = torch_load(path)
    if not isinstance(obj, dict) or "netmorph" not in obj:
        if find_state_dict(obj) is not None:
            raise CheckpointError(
                f"'{path}' is a plain PyTorch state_dict, not a netmorph checkpoint; bring it "
                f"in with `netmorph import {path} -o OUT.safetensors`")
        what = (f"a dict with keys {names(list(obj))}" if isinstance(obj, dict)
                else f"a {type(obj).__name__}")
        raise CheckpointError(f"'{path}' is a PyTorch file holding {what}, "
                              f"not a netmorph checkpoint")
    _check_format(path, obj["netmorph"], obj.get("version"))
    sd = obj.get("state_dict")
    if not isinstance(sd, dict) or not all(isinstance(t, torch.Tensor) for t in sd.values()):
        raise CheckpointError(f"'{path}' is a damaged netmorph checkpoint: "
                              f"its 'state_dict' is not a dict of tensors")
    return _network(path, obj, {k: t.detach() for k, t in sd.items()})


def sniff(path: Path) -> str:
    """'safetensors' or 'torch' from the first bytes; errors for anything unreadable."""
    if not path.exists():
        raise CheckpointError(f"'{path}' does not exist")
    if path.is_dir():
        raise CheckpointError(f"'{path}' is a directory, not a checkpoint file")
    if not path.is_file():  # a FIFO would block the open; a device has no end
        raise CheckpointError(f"'{path}' is not a regular file (a device, pipe or socket); "
                              f"netmorph reads checkpoints from files")
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as exc:
        raise CheckpointError(f"cannot read '{path}': {exc.strerror or exc}") from None
    if not head:
        raise CheckpointError(f"'{path}' is empty (0 bytes); it is not a checkpoint")
    # safetensors first: its 8-byte little-endian header length may start with any byte,
    # 0x80 (a legacy pickle's first byte) whenever the length is 128 mod 256
    n = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
    if head[8:9] == b"{" or (len(head) == 8 and 0 < n <= _MAX_HEADER):
        return "safetensors"  # the header length, then a JSON header
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch zip / legacy pickle
        return "torch"
    raise CheckpointError(f"'{path}' is not a checkpoint: neither safetensors nor a PyTorch "
                          f"file (it starts with {head[:8]!r})")


def read_safetensors(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The metadata and tensors of a safetensors file. The header is read and checked
    first: the tensors it declares must end exactly at the end of the file and fit in the
    memory available now, before any tensor byte is read (a valid header on a huge or
    sparse file is refused, not allocated)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little")
            if len(head) < 8 or n > _MAX_HEADER:
                raise CheckpointError(f"'{path}' is not a valid safetensors file "
                                      f"(header length {n} bytes)")
            if 8 + n > size:
                raise CheckpointError(f"'{path}' is truncated: its safetensors header needs "
                                      f"{8 + n} bytes, the file has {size}")
            raw = f.read(n)
    except OSError as exc:
        raise CheckpointError(f"cannot read '{path}': {exc.strerror or exc}") from None
    try:
        header = limits.parse_json(raw)
    except ValueError as exc:
        raise CheckpointError(f"'{path}' is a corrupt or truncated safetensors file (its "
                              f"header: {_first_line(exc)})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"'{path}' is a corrupt safetensors file (its header is not an "
                              f"object)")
    need = _declared_bytes(path, header)
    if 8 + n + need != size:
        raise CheckpointError(
            f"'{path}' is {'truncated' if 8 + n + need > size else 'corrupt'}: its header "
            f"declares {limits.format_bytes(need)} of tensors after {8 + n} bytes, the file "
            f"has {size} bytes")
    limits.check_memory(need, f"loading '{path}'")
    try:
        tensors = st.load_file(str(path))
    except (ValueError, AttributeError, SafetensorError, OSError) as exc:
        raise CheckpointError(f"'{path}' is a corrupt or truncated safetensors file "
                              f"({_first_line(exc)})") from None
    except MemoryError:
        raise CheckpointError(f"not enough memory to load '{path}' "
                              f"({limits.format_bytes(need)} of tensors)") from None
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        metadata = {}
    return metadata, tensors


def _declared_bytes(path: Path, header: dict[str, Any]) -> int:
    """The end of the last tensor's bytes that a safetensors header declares."""
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(type(o) is int and o >= 0 for o in offsets)
                or offsets[0] > offsets[1]):
            raise CheckpointError(f"'{path}' is a corrupt safetensors file (tensor "
                                  f"{short(name)} has no valid data_offsets)")
        end = max(end, offsets[1])
    return end


def torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with every failure turned into one CheckpointError."""
    try:
        # an open file, not the path: recent torch.load dispatches "*.safetensors" paths to
        # safetensors by suffix, and netmorph goes by content
        with open(path, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        bad = _unsafe_globals(path)
        if bad:
            raise CheckpointError(
                f"refusing to load '{path}': it contains pickled objects other than tensors "
                f"({', '.join(bad[:_LIST])}); netmorph only reads weights") from None
        raise CheckpointError(f"refusing to load '{path}': it cannot be read as weights only "
                              f"({_torch_reason(exc)}); netmorph only reads weights") from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile,
            AttributeError, KeyError, IndexError, TypeError) as exc:
        raise CheckpointError(f"'{path}' is a corrupt or truncated PyTorch file "
                              f"({_torch_reason(exc)})") from None


def _unsafe_globals(path: Path) -> list[str]:
    """The globals a pickle would import, other than torch's own and OrderedDict.

    Parses opcodes only (``pickletools``); nothing is executed."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                names = [n for n in z.namelist() if n.endswith("data.pkl")]
                blobs = [z.read(n) for n in names]
        else:
            blobs = [path.read_bytes()]
    except (OSError, zipfile.BadZipFile, RuntimeError):
        return []
    found = [g for blob in blobs for g in _pickle_globals(blob)]
    safe = re.compile(r"^(torch\.|collections\.OrderedDict$|_codecs\.encode$)")
    return list(dict.fromkeys(g for g in found if not safe.match(g)))


def _pickle_globals(blob: bytes) -> list[str]:
    """``module.name`` of every global a pickle stream imports (several pickles in a row, as
    in legacy torch files). Tracks pushed and memoized strings for protocol-4 STACK_GLOBAL."""
    found: list[str] = []
    pos = 0
    while pos < len(blob):
        strings: list[str] = []
        memo: dict[int, str | None] = {}
        last: str | None = None
        try:
            for op, arg, at in pickletools.genops(blob[pos:]):
                name = op.name
                if name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                elif name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif name == "MEMOIZE":
                    memo[len(memo)] = last
                elif name in ("BINPUT", "LONG_BINPUT", "PUT") and arg is not None:
                    memo[int(arg)] = last
                elif name in ("BINGET", "LONG_BINGET", "GET") and arg is not None:
                    got = memo.get(int(arg))
                    if got is not None:
                        strings.append(got)
                last = arg if isinstance(arg, str) and "UNICODE" in name else None
                if last is not None:
                    strings.append(last)
                if name == "STOP":
                    pos += (at or 0) + 1
                    break
            else:
                break
        except (ValueError, EOFError, IndexError, KeyError):
            break  # the raw storage bytes after the pickles, or a damaged stream
    return found


def _torch_reason(exc: BaseException) -> str:
    """The informative sentence of torch's (long, advisory) error text."""
    for line in str(exc).splitlines():
        if re.search(r"GLOBAL|[Uu]nsupported|zip archive|EOF|magic", line):
            return _sentence(line)
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
    return _sentence(lines[0]) if lines else type(exc).__name__


def _sentence(text: str) -> str:
    return text.strip().split(". ")[0].rstrip(".")[:200]


def _check_format(path: Path, fmt: Any, version: Any) -> None:
    try:
        fmt = int(fmt)
    except (TypeError, ValueError):
        raise CheckpointError(f"'{path}' has an unreadable netmorph format {fmt!r}") from None
    if fmt > FORMAT:
        raise CheckpointError(
            f"'{path}' was written by a newer netmorph ({version or 'unknown version'}, "
            f"checkpoint format {fmt}); this netmorph {__version__} reads format {FORMAT}: "
            f"upgrade netmorph")
    if fmt < 1:
        raise CheckpointError(f"'{path}' has an unknown netmorph format {fmt}")


def _network(path: Path, fields: Mapping[str, Any], tensors: dict[str, torch.Tensor]
             ) -> Network:
    decoded: dict[str, Any] = {}
    for key, kind in (("description", dict), ("history", list), ("meta", dict)):
        raw = fields.get(key)
        try:
            value = limits.parse_json(raw) if isinstance(raw, str) else None
        except limits.JSONDepthError as exc:
            raise CheckpointError(f"'{path}' is a damaged netmorph checkpoint: its {key} is "
                                  f"{exc}") from None
        except ValueError as exc:
            if "lone surrogate" in str(exc):
                raise CheckpointError(f"'{path}' is a damaged netmorph checkpoint: its {key} "
                                      f"holds a string with a lone surrogate (not valid "
                                      f"Unicode)") from None
            value = None
        if not isinstance(value, kind):
            raise CheckpointError(f"'{path}' is a damaged netmorph checkpoint: "
                                  f"its {key} is missing or not valid JSON")
        decoded[key] = value
    fmt = decoded["description"].get("format")
    if isinstance(fmt, int) and fmt > DESCRIPTION_FORMAT:
        raise CheckpointError(
            f"'{path}' holds a network description of format {fmt}, written by a newer "
            f"netmorph ({fields.get('version') or 'unknown version'}); this netmorph "
            f"{__version__} reads format {DESCRIPTION_FORMAT}: upgrade netmorph")
    net = Network(decoded["description"], tensors, decoded["history"], decoded["meta"])
    try:
        validate_description(net.description)
    except NetworkError as exc:
        raise CheckpointError(f"'{path}' does not hold a valid network: {exc}") from None
    try:
        validate_history(net.history)
        validate_meta(net.meta, net.description["input"][0])
    except NetworkError as exc:
        raise CheckpointError(f"'{path}' is a damaged netmorph checkpoint: {exc}") from None
    try:
        net.check()
    except NetworkError as exc:
        raise CheckpointError(f"'{path}' does not hold a valid network: {exc}") from None
    # safetensors stores tensors in its own order; give them the description's (state_dict) order
    net.tensors = {k: tensors[k] for k in expected_tensors(net.description)}
    check_values(path, net.description, net.tensors)
    return net


def check_values(path: Path, desc: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
                  ) -> None:
    """Refuse NaN/inf in any floating tensor and a negative BN running variance: either makes
    every output NaN, so eval would report chance accuracy and morph would verify nothing."""
    for k, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            nan = int(torch.isnan(t).sum())
            what = ", ".join(f"{c} {w}" for c, w in ((nan, "NaN"), (int(torch.isinf(t).sum()),
                                                                    "infinite")) if c)
            raise CheckpointError(f"'{path}': tensor {k!r} holds non-finite values ({what} of "
                                  f"{t.numel()}); a network's tensors must be finite (was it "
                                  f"saved after training diverged?)")
    for n in desc["nodes"]:
        var = tensors.get(f"{n['name']}.running_var") if n["op"] == "bn" else None
        if var is not None and bool((var < 0).any()):
            raise CheckpointError(f"'{path}': tensor '{n['name']}.running_var' holds "
                                  f"{int((var < 0).sum())} negative variances; a variance "
                                  f"is ≥ 0")


def _is_state_dict(obj: Any) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def find_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in WRAPPERS:
            if _is_state_dict(obj.get(key)):
                return dict(obj[key])
    return None


def names(keys: list[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:_LIST])
    rest = len(keys) - _LIST
    return f"{shown} … and {rest} more ({len(keys)} in all)" if rest > 0 else shown
