"""Helpers for CLI tests: run the console-script entry point in process and check the
error contract (one ``Error: …`` line on stderr, nothing on stdout, the right exit code)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from netmorph_cli.cli.commands import main
from netmorph_cli.training import data


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """Run the console-script entry point in process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    code = info.value.code
    return (0 if code is None else code), out, err


def assert_one_error_line(code: int, out: str, err: str, *needles: str,
                          exit_code: int = 2) -> str:
    """The error contract: exit ``exit_code``, empty stdout, one ``Error:`` line that
    contains every needle, no traceback. Returns the line."""
    assert code == exit_code, err
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: ")
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


def write_mini(root: Path, n_train: int, n_test: int, classes: int = 10,
               name: str = "cifar10-mini", seed: int = 0) -> Path:
    """A learnable tiny set (the synthetic generator's images) under a real set's name."""
    ds = data.synthetic(n_train, n_test, classes=classes, seed=seed)
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / f"{name}.npz", x_train=ds.x_train, y_train=ds.y_train,
             x_test=ds.x_test, y_test=ds.y_test)
    return root


def train_args(ckpt: Path, out: Path, data_dir: Path, *extra: str) -> list[str]:
    """``netmorph train`` on ``cifar10-mini`` in ``data_dir``, batch 64, on the CPU."""
    return ["train", str(ckpt), "--dataset", "cifar10-mini", "--data-dir", str(data_dir),
            "-o", str(out), "--batch-size", "64", "--device", "cpu", *extra]
