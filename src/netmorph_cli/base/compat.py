"""Old import paths kept working: ``netmorph_cli.network``, ``.spec`` and ``.morph`` were
modules before the stage layout and are packages now; each hands out the names of the module
it was (``network.description``, ``spec.parse``, ``morph.morphs``), imported on first use so
that importing the package stays light (the CLI starts without torch)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def old_module_names(package: str, module: str) -> Callable[[str], Any]:
    """A package's ``__getattr__`` (PEP 562) that looks unknown names up in ``module``."""

    def __getattr__(name: str) -> Any:
        # importlib, not ``from . import``: that would ask this very function for the module
        found = importlib.import_module(f"{package}.{module}")
        try:
            return getattr(found, name)
        except AttributeError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

    return __getattr__
