"""The package layout the README states: every module listed, each importing only modules
listed before it (no cycles, nothing imports upward), and no module over 500 lines
without a stated reason."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "src" / "netmorph_cli"


def readme_order() -> list[str]:
    text = (ROOT / "README.md").read_text()
    start = text.index("Layout of `src/netmorph_cli/`")
    end = text.index("(the only code that prints)", start)
    return [m for m in re.findall(r"`(\w+)\.py`", text[start:end])]


def internal_imports(module: str) -> set[str]:
    src = (PKG / f"{module}.py").read_text()
    deps = set(re.findall(r"^\s*from \.(\w+) import", src, re.M))
    for names in re.findall(r"^\s*from \. import ([\w, ]+)", src, re.M):
        deps |= {n.strip() for n in names.split(",")}
    return deps - {"__version__"}


def test_every_module_is_listed_once():
    order = readme_order()
    files = {p.stem for p in PKG.glob("*.py")} - {"__init__", "__main__"}
    assert len(order) == len(set(order))
    assert set(order) == files


def test_modules_import_only_what_is_listed_before_them():
    order = readme_order()
    for i, module in enumerate(order):
        later = [d for d in internal_imports(module) if d in order[i + 1:]]
        assert not later, f"{module}.py imports {later}, listed after it"


# files allowed to be longer, each with its reason
LONG = {"cli.py": "every command's options and help texts (the CLI contract) in one place; "
                  "command bodies stay short and call the library"}


def test_no_module_is_over_500_lines_without_a_reason():
    long = {p.name: n for p in PKG.glob("*.py")
            if (n := len(p.read_text().splitlines())) > 500 and p.name not in LONG}
    assert not long, long
