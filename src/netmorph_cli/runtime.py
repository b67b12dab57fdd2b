"""Device and dtype choices shared by the commands (explicit, never implicit)."""

from __future__ import annotations

import torch

from .errors import NetmorphError


class UsageError(NetmorphError):
    """A bad option value that the library itself detects."""

    exit_code = 2


DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise UsageError(f"unknown dtype {name!r} (choose from {', '.join(DTYPES)})") from None


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``; a CUDA device that is not there is a clear error."""
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r} (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {name!r} requested but no CUDA device is available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"device {name!r} does not exist "
                             f"({torch.cuda.device_count()} CUDA devices)")
    elif dev.type != "cpu":
        raise UsageError(f"unsupported device {name!r} (use cpu, cuda or cuda:N)")
    return dev
