"""Module specs: the module DAG (``graph``), spec files (``parse``) and Algorithm 1's
reduction (``reduce``). Pure: no torch I/O, no printing.
May import: ``errors``, ``limits``.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    """``netmorph_cli.spec.NAME`` of the module this package was before the stage layout
    (its ``parse`` module), imported on first use so that the package stays light."""
    import importlib

    module = importlib.import_module(f"{__name__}.parse")  # not `from .`: it asks here
    try:
        return getattr(module, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
