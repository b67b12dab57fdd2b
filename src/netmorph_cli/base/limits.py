"""Resource caps on everything netmorph reads, checked before anything is allocated.

Every size a user-supplied file can ask for (a spec's widths and kernels, a preset's kernels,
a checkpoint description's widths, kernels and input size, the nesting of its JSON, the
length of a spec file) is refused above a cap here with a clear error, instead of running
out of memory, tripping an MKL assertion or a ``RecursionError`` deep inside a library.
The caps are meant to be far above any real network — ImageNet-scale and beyond — and far
below what would exhaust a machine. Each value says why it is what it is.

This module only holds the numbers and two small readers (``read_capped``, ``parse_json``);
``spec.py``, ``network.py``, ``checkpoint.py`` and ``morph.py`` apply them and raise their own
typed errors.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

MAX_SPEC_BYTES = 64 * 2**20
"""A module spec file is at most 64 MiB. The largest module netmorph benchmarks (100,000
edges, series-parallel) is ≈ 6.5 MB of JSON, so this allows ≈ 1M edges; it stops ``reduce
/dev/zero`` (or any huge file) from being read into memory until ``MemoryError``."""

MAX_JSON_DEPTH = 64
"""JSON (specs, checkpoint descriptions, history, metadata, safetensors headers) nests at
most 64 levels. A spec needs 4 (object → edges → edge → kernel), a history entry about 6;
Python's decoder recurses once per level and fails at ≈ 1000 with a ``RecursionError``."""

MAX_WIDTH = 65536
"""Channels of any blob or layer, features of a linear layer and the number of classes are at
most 2^16. The widest layers of real CNNs are 2048–4096 (ResNet-50/152, VGG, EfficientNet-B7),
wide ResNets reach 8192 and ImageNet-21k heads have 21,843 classes. One 65536→65536 3×3
filter is already 155 GB in float32, so larger values can only be mistakes or attacks."""

MAX_KERNEL = 63
"""Kernel sides (spec edges, presets, checkpoint convs and pooling windows) are at most 63.
Stems use 7×7, ConvNeXt 7×7, RepLKNet 31×31 and SLaK 51×51, the largest kernels in published
CNNs. The morph pads a block's input by its module's margin, so a 10^6 kernel would allocate
terabytes before any check could run."""

MAX_INPUT_SIDE = 8192
"""A network's input height and width are at most 8192 pixels: ImageNet uses 224, detection
and segmentation 512–2048, whole-slide and satellite tiles up to a few thousand. A 10^6×10^6
input made torch/MKL abort with an internal assertion instead of an error."""

MAX_INPUT_ELEMENTS = 2**28
"""One input sample (C·H·W) has at most 2^28 values (1 GiB in float32): 3×8192×8192 fits,
so does a 256-band hyperspectral 1024×1024 image; verify and eval run batches of these."""

MAX_MAP_SIDE = 2 * MAX_INPUT_SIDE
"""Every feature map side inside a network is at most 16384: twice the largest input leaves
room for zero padding (a module realized with one input padding grows its input by its
margin), while a padding, stride or dilation of 10^9 in a tampered description is refused
before a layer runs."""

MAX_BATCH = 65536
"""A training batch or a verification's number of random inputs is at most 2^16: CIFAR's
whole training set is 50,000 images and verify's default is 64 samples; a value of 10^9
would ask for terabytes of inputs before any check could run."""

MAX_SAFETENSORS_HEADER = 100 * 2**20
"""A safetensors JSON header is at most 100 MiB (the limit the safetensors library itself
enforces); netmorph's headers are a few hundred KB even for ResNet-110 children."""


class JSONDepthError(ValueError):
    """JSON nested deeper than ``MAX_JSON_DEPTH``."""


_KEEP = b'[]{}":,'  # structure, quotes, and the separators that keep strings apart
_DROP = bytes(b for b in range(256) if b not in _KEEP)
_SQUARE = bytes.maketrans(b"{}", b"[]")


def json_depth_exceeds(raw: str | bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether JSON text nests arrays/objects more than ``limit`` deep, in linear time and
    without recursion (≈ 40 ms for a 7 MB spec). Strings are cut out (escaped backslashes and
    quotes first, then every quoted run), leaving only brackets; innermost ``[]`` pairs are
    then peeled ``limit`` times and a pair left over means a deeper level. Malformed text
    may be misjudged; the decoder then fails on it, and ``parse_json`` turns its
    ``RecursionError`` into ``JSONDepthError`` too."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    # strings without brackets become "" (two strings are always apart by , : [ or {)
    skeleton = data.translate(_SQUARE, _DROP).replace(b'""', b"").translate(None, b":,")
    if b'"' in skeleton:  # strings holding brackets: keep what lies between them
        skeleton = b"".join(skeleton.split(b'"')[0::2])
    for _ in range(limit):
        peeled = skeleton.replace(b"[]", b"")
        if len(peeled) == len(skeleton):
            break
        skeleton = peeled
    return b"[]" in skeleton


def parse_json(raw: str | bytes, limit: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` that refuses nesting deeper than ``limit`` (``JSONDepthError``) before
    the decoder recurses; ``json.JSONDecodeError`` for malformed text as usual."""
    if json_depth_exceeds(raw, limit):
        raise JSONDepthError(f"JSON nested more than {limit} levels deep")
    try:
        value = json.loads(raw)
    except RecursionError:
        raise JSONDepthError(f"JSON nested more than {limit} levels deep") from None
    if b"\\u" in (raw if isinstance(raw, bytes) else raw.encode("utf-8", "replace")):
        _check_strings(value)  # only \u escapes can decode to a lone surrogate
    return value


def _check_strings(value: Any) -> None:
    """``json.JSONDecodeError`` for a string that is not valid Unicode (a lone surrogate,
    ``"\\ud800"``): it could not be printed or written as UTF-8 later."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise json.JSONDecodeError("a string holds a lone surrogate (not valid "
                                           "Unicode)", "", 0) from None


def read_capped(path: str | Path, cap: int) -> bytes:
    """At most ``cap + 1`` bytes of ``path``: a longer file is known to be too large without
    reading it all (``/dev/zero`` included). A FIFO is opened without blocking, so one with
    no writer reads as empty instead of hanging; one being written is read as usual."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.set_blocking(fd, True)  # a writer's data is waited for; no writer: EOF
        chunks, left = [], cap + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def format_bytes(n: float) -> str:
    """A byte count for messages: ``512 B``, ``1.5 GiB``, ``4.27 TiB`` (3 significant
    digits; every size message of netmorph uses it)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


def available_memory() -> int:
    """Bytes of memory a new allocation can get now without swapping: ``MemAvailable`` of
    /proc/meminfo (Linux), else the free physical pages; a large number where neither is
    known (the caller's allocation then fails as it would have)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def check_memory(need: int, what: str, *, cap: int | None = None, device: Any = None) -> None:
    """``ResourceLimitError`` before ``what`` allocates ``need`` bytes that the machine does
    not have (or more than ``cap``), naming the estimate and the limit; on a CUDA
    ``device``, the memory free on that device."""
    if getattr(device, "type", None) == "cuda":
        import torch

        free = int(torch.cuda.mem_get_info(device)[0])
        have = free if cap is None else min(cap, free)
    else:
        have = available_memory() if cap is None else min(cap, available_memory())
    if need > have:
        from ..errors import ResourceLimitError

        raise ResourceLimitError(f"{what} needs about {format_bytes(need)} of memory and "
                                 f"{format_bytes(have)} is available: refused before "
                                 f"allocating it")
