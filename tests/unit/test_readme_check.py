"""tools/readme_check.py: how README outputs are compared with what the commands print, and
that the README's sessions parse (every command has its block, needs are read)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("readme_check", ROOT / "tools" / "readme_check.py")
assert _spec and _spec.loader
rc = importlib.util.module_from_spec(_spec)
sys.modules["readme_check"] = rc  # dataclasses look their module up there
_spec.loader.exec_module(rc)


def test_numbers_within_tolerance_words_exactly():
    want = ["morphed resnet20 → resnet20+1c1 at 6 blocks: solver residual 2.09e-15, FLOPs "
            "40.8M → 44.0M (1.08×)"]
    assert rc.compare(want, [want[0].replace("2.09e-15", "7.1e-15")], 0.02) is None
    assert rc.compare(want, [want[0].replace("2.09e-15", "3.0e-13")], 0.02)  # 100× off
    assert rc.compare(want, [want[0].replace("44.0M", "44.5M")], 0.02) is None  # 1.1%
    assert rc.compare(want, [want[0].replace("44.0M", "46.0M")], 0.02)  # 4.5%
    assert rc.compare(want, [want[0].replace("44.0M", "44.0G")], 0.02)  # unit differs
    assert rc.compare(want, [want[0].replace("6 blocks", "6 layers")], 0.02)
    assert rc.compare(["top-1 error 8.27%"], ["top-1 error 0.00%"], 0.02)


def test_times_shas_and_table_borders_are_not_compared():
    want = ["trained 1 epochs: test error 8.31%, train loss 0.1234, 612 images/s",
            "wrote r.safetensors (resnet20; sha256 4e910b28ca7cf840…)",
            "│ parent  │ 0.1409 │ 95.5%    │"]
    got = ["trained 1 epochs: test error 8.31%, train loss 0.1234, 37 images/s",
           "wrote r.safetensors (resnet20; sha256 0123456789abcdef…)",
           "| parent | 0.1409 | 95.5% |".replace("|", "│")]
    assert rc.compare(want, got, 0.02) is None


def test_ellipsis_stands_for_any_lines_and_extra_or_missing_lines_differ():
    want = ["PASSED", "...", "last"]
    assert rc.compare(want, ["PASSED", "a", "b", "last"], 0.02) is None
    assert rc.compare(["PASSED", "..."], ["PASSED", "a", "b"], 0.02) is None
    assert "extra" in rc.compare(["PASSED"], ["PASSED", "more"], 0.02)
    assert "missing" in rc.compare(["PASSED", "more"], ["PASSED"], 0.02)


def test_a_line_wrapped_at_another_width_matches():
    want = ["FAILED — training mode (BN on batch statistics), 8 batches of 128 cifar10 ",
            "training images in float32"]
    got = ["FAILED — training mode (BN on batch statistics), 8 batches of 128 cifar10 "
           "training images in float32"]
    assert rc.compare(want, got, 0.02) is None
    assert rc.compare(want, [got[0].replace("128", "256")], 0.02)
    assert rc.regenerated(["x", "..."], ["1", "2", "3"]) == ["1", "..."]


def test_the_readme_sessions_parse():
    lines = (ROOT / "README.md").read_text().splitlines()
    found = rc.sessions(lines)
    commands = [c.text for s in found for c in s.commands]
    assert any(c.startswith("netmorph reduce examples/modules/D.json") for c in commands)
    walk = next(s for s in found if s.commands[0].text.startswith("netmorph import"))
    assert walk.needs == ["cifar10", "weights"]
    assert any(c.startswith("netmorph report") for c in (x.text for x in walk.commands))
    assert all(c.startswith(("netmorph ", "python examples/")) for c in commands)
