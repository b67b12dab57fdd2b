"""The package layout the README states: stage packages in order, every module listed once,
each importing only modules listed before it (no cycles, no package imports a later one),
only ``cli/`` prints, every package says in its docstring what it may import, and no module
is over 500 lines without a stated reason."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "src" / "netmorph_cli"


def readme_order() -> list[str]:
    """``pkg.module`` (``module`` at the top level) in the README's order."""
    text = (ROOT / "README.md").read_text()
    start = text.index("Layout of `src/netmorph_cli/`")
    end = text.index("(the only code that prints)", start)
    order = []
    for item in re.split(r"\n- ", text[start:end])[1:]:
        m = re.match(r"`(\w+)/`:", item)
        prefix = f"{m[1]}." if m else ""
        order += [prefix + name for name in re.findall(r"`(\w+)\.py`", item)]
    return order


def modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        if p.stem in ("__init__", "__main__"):
            continue
        rel = p.relative_to(PKG).with_suffix("")
        out[".".join(rel.parts)] = p
    return out


def internal_imports(key: str, path: Path) -> set[str]:
    """The netmorph_cli modules ``key`` imports (anywhere in the file), as ``pkg.module``."""
    here = key.split(".")[:-1]  # the importing module's package parts
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        base = here[:len(here) - (node.level - 1)] if node.level > 1 else here
        target = base + (node.module.split(".") if node.module else [])
        for alias in node.names:
            full = ".".join(target + [alias.name])
            if full in MODULES:
                deps.add(full)
            elif ".".join(target) in MODULES:
                deps.add(".".join(target))
    return deps


MODULES = modules()


def test_every_module_is_listed_once():
    order = readme_order()
    assert len(order) == len(set(order))
    assert set(order) == set(MODULES)


def test_modules_import_only_what_is_listed_before_them():
    order = readme_order()
    for i, key in enumerate(order):
        later = [d for d in internal_imports(key, MODULES[key]) if d in order[i + 1:]]
        assert not later, f"{key} imports {later}, listed after it"


def test_the_import_check_sees_every_kind_of_relative_import():
    """The checker itself: a package-relative, a parent-relative and a ``from . import``."""
    assert {"io.outputs", "network.description"} <= internal_imports(
        "io.checkpoint", MODULES["io.checkpoint"])
    assert "io.conversion" in internal_imports("io.importers", MODULES["io.importers"])
    assert "errors" in internal_imports("spec.graph", MODULES["spec.graph"])


PRINTS = re.compile(r"\bprint\(|click\.echo|console\.print|sys\.std(out|err)\.write")


def test_only_cli_prints():
    talkers = [k for k, p in MODULES.items()
               if not k.startswith("cli.") and PRINTS.search(p.read_text())]
    assert not talkers, talkers


def test_every_package_says_what_it_holds_and_may_import():
    for init in PKG.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.splitlines()) <= 3, init
        assert "May import" in doc or "may import" in doc.lower(), init


# files allowed to be longer, each with its reason
LONG: dict[str, str] = {}


def test_no_module_is_over_500_lines_without_a_reason():
    long = {str(p.relative_to(PKG)): n for p in MODULES.values()
            if (n := len(p.read_text().splitlines())) > 500
            and str(p.relative_to(PKG)) not in LONG}
    assert not long, long


def test_exports_written_before_the_layout_still_import():
    """A .pt2 written by netmorph before the stage layout names its op modules
    ``netmorph_cli.network.OpModule``; one written after, ``…network.description.OpModule``:
    the reader knows both (a file format outlives a module path)."""
    from types import SimpleNamespace

    from netmorph_cli.io.aten import is_op_module
    from netmorph_cli.network.description import OpModule

    assert f"{OpModule.__module__}.{OpModule.__qualname__}" == \
        "netmorph_cli.network.description.OpModule"
    for path in ("netmorph_cli.network.OpModule", "netmorph_cli.network.description.OpModule"):
        assert is_op_module(SimpleNamespace(module_type=path))
    assert not is_op_module(SimpleNamespace(module_type="torch.nn.modules.conv.Conv2d"))


def test_old_import_paths_keep_working():
    """``netmorph_cli.errors`` stayed; ``.network``, ``.spec``, ``.morph`` were modules and
    are packages now that hand out their old module's names (the same objects)."""
    import netmorph_cli.network as old_network
    from netmorph_cli.errors import NetmorphError
    from netmorph_cli.morph import morph_network
    from netmorph_cli.morph.morphs import morph_network as new_morph_network
    from netmorph_cli.network import Network
    from netmorph_cli.network.description import Network as NewNetwork
    from netmorph_cli.spec import load_spec
    from netmorph_cli.spec.parse import load_spec as new_load_spec

    assert Network is NewNetwork and load_spec is new_load_spec
    assert morph_network is new_morph_network and issubclass(NetmorphError, Exception)
    try:
        old_network.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no attribute 'no_such_name'" in str(exc)
    else:
        raise AssertionError("an unknown name must be an AttributeError")


def test_only_errors_lives_outside_a_stage_package():
    top = {p.name for p in PKG.glob("*.py")}
    assert top == {"__init__.py", "__main__.py", "errors.py"}, top
