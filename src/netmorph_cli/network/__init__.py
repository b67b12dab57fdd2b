"""Networks as data: node attributes and the op table, typed history records, the
description and its generic module (``description``), FLOPs, the architecture registry and
zoo, the paper's presets. May import: ``spec`` (presets' module graphs).
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    """``netmorph_cli.network.NAME`` of the module this package was before the stage layout
    (its ``description`` module), imported on first use so that the package stays light."""
    import importlib

    module = importlib.import_module(f"{__name__}.description")  # not `from .`: it asks here
    try:
        return getattr(module, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
