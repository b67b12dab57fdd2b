"""Morphing a network: the insertion engine, the morphs (``morphs``: where a module goes),
BN calibration and verification. May import: ``solver``, ``network``, ``spec``; not ``io``
(files are the caller's).
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    """``netmorph_cli.morph.NAME`` of the module this package was before the stage layout
    (its ``morphs`` module), imported on first use so that the package stays light."""
    import importlib

    module = importlib.import_module(f"{__name__}.morphs")  # not `from .`: it asks here
    try:
        return getattr(module, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
