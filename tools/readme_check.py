"""Run the README's shell sessions and compare what they print with what the README shows.

    .venv/bin/python tools/readme_check.py            # check (exit 1 on a difference)
    .venv/bin/python tools/readme_check.py --write    # regenerate the outputs in README.md

A *session* is a fenced block whose lines starting with ``$ `` are commands; the lines after
a command, up to the next one, are what it prints (stdout and stderr). Sessions run in README
order in one scratch directory, so a later one can use the files an earlier one wrote: the
repository's ``examples/`` is linked in, ``.venv/bin`` is first on ``PATH``, ``COLUMNS=100``
fixes the width of tables, ``NETMORPH_PROGRESS=off`` leaves out the progress lines a long
command prints every few seconds when its output is not a terminal (their number depends on
the machine's speed), ``NETMORPH_DATA`` points at the data (``--data-dir``, default
``$NETMORPH_DATA`` or ``../shared/data``) and the akamaster ResNet-20 weights are linked in
as ``resnet20-12fca82f.th`` when found (``--weights``, default ``../shared/weights``).

An HTML comment before a block says what it needs: ``<!-- readme-check: needs cifar10 -->``,
``<!-- readme-check: needs weights -->`` (the block is skipped, and the skip reported, when
that is missing) or ``<!-- readme-check: skip -->`` (never run: hours of training).

Comparison, after collapsing whitespace and table borders: words must be equal; numbers must
agree to ``--rtol`` (default 2%) where |x| ≥ 1e-3 and to within a factor of 10 below that
(rounding errors such as 8.3e-16 depend on the CPU and thread count); times and speeds
(a number before ``s``, ``min``, ``img/s``, ``images/s``) and sha256 prefixes (12+ hex
digits before ``…``) are not compared. Outputs are compared as streams of words, so a
table wrapped at another width matches; a line ``...`` in the README stands for any number of
printed words. The data directory is printed as ``$NETMORPH_DATA``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FENCE = "```"
NEEDS = re.compile(r"<!--\s*readme-check:\s*(.*?)\s*-->")
NUMBER = re.compile(r"[-+]?(?:\d[\d,]*\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
TIMED = re.compile(r"[-+]?\d[\d,]*\.?\d*\s*(?:images/s|img/s|s|min|h)\b")
SHA = re.compile(r"\b[0-9a-f]{12,}…")
BORDERS = re.compile(r"[\s│┃┏┓┗┛┡┩└┘┌┐╇╈┳┻━─╍]+")


@dataclass
class Command:
    line: int  # index in the README of the "$ " line
    text: str
    expected: list[str] = field(default_factory=list)


@dataclass
class Session:
    needs: list[str]
    commands: list[Command]


def sessions(lines: list[str]) -> list[Session]:
    found, i = [], 0
    while i < len(lines):
        if lines[i].startswith(FENCE) and i + 1 < len(lines) and lines[i + 1].startswith("$ "):
            needs: list[str] = []
            j = i - 1
            while j >= 0 and not lines[j].strip():
                j -= 1
            if j >= 0 and (m := NEEDS.search(lines[j])):
                words = m.group(1).split()
                needs = words[1:] if words[:1] == ["needs"] else words  # or ["skip"]
            cmds: list[Command] = []
            i += 1
            while not lines[i].startswith(FENCE):
                if lines[i].startswith("$ "):
                    cmds.append(Command(i, lines[i][2:]))
                else:
                    cmds[-1].expected.append(lines[i])
                i += 1
            found.append(Session(needs, cmds))
        i += 1
    return found


def normalize(line: str) -> list[str]:
    line = SHA.sub("<sha>", TIMED.sub("<time>", line))
    return [t for t in BORDERS.split(line) if t]


def tokens_match(want: str, got: str, rtol: float) -> bool:
    """Equal words; the numbers in them equal to the tolerance (module docstring)."""
    if want == got:
        return True
    if NUMBER.sub("#", want) != NUMBER.sub("#", got):
        return False
    return all(numbers_match(float(x.replace(",", "")), float(y.replace(",", "")), rtol)
               for x, y in zip(NUMBER.findall(want), NUMBER.findall(got), strict=True))


def numbers_match(x: float, y: float, rtol: float) -> bool:
    if abs(x) < 1e-3 and abs(y) < 1e-3:
        return x == y or (x != 0 and y != 0 and 0.1 <= abs(y / x) <= 10)
    return abs(x - y) <= rtol * max(abs(x), abs(y))


def compare(expected: list[str], actual: list[str], rtol: float) -> str | None:
    """None when ``actual`` matches; else the first difference. Compared as one stream of
    words, so a table or a long line wrapped at another width still matches; a README line
    ``...`` skips printed words up to the next expected one."""
    want: list[str | None] = []  # None: the '...' wildcard
    for line in expected:
        want.extend([None] if line.strip() == "..." else normalize(line))
    got = [t for line in actual for t in normalize(line)]
    i = j = 0
    while i < len(want):
        w = want[i]
        if w is None:
            if i + 1 == len(want):
                return None
            nxt = want[i + 1]
            while j < len(got) and not (nxt is not None and tokens_match(nxt, got[j], rtol)):
                j += 1
            i += 1
            continue
        if j >= len(got):
            return f"missing: {' '.join(str(x) for x in want[i:i + 8])!r}"
        if not tokens_match(w, got[j], rtol):
            return (f"README: {' '.join(str(x) for x in want[max(i - 4, 0):i + 4])!r}\n"
                    f"      got:    {' '.join(got[max(j - 4, 0):j + 4])!r}")
        i, j = i + 1, j + 1
    return None if j == len(got) else f"extra: {' '.join(got[j:j + 8])!r}"


def regenerated(expected: list[str], actual: list[str]) -> list[str]:
    """The printed lines, cut where the README cut them with '...'."""
    if any(x.strip() == "..." for x in expected):
        keep = next(k for k, x in enumerate(expected) if x.strip() == "...")
        return actual[:keep] + ["..."]
    return actual


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--readme", default=str(ROOT / "README.md"))
    ap.add_argument("--write", action="store_true", help="Rewrite the outputs in the README.")
    ap.add_argument("--rtol", type=float, default=0.02)
    ap.add_argument("--data-dir", default=os.environ.get("NETMORPH_DATA",
                                                         str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--weights", default=str(ROOT.parent / "shared" / "weights"))
    args = ap.parse_args()
    readme = Path(args.readme)
    lines = readme.read_text().splitlines()
    have = {"cifar10": (Path(args.data_dir) / "cifar10.npz").is_file()
            or (Path(args.data_dir) / "cifar-10-batches-py").is_dir(),
            "weights": (Path(args.weights) / "akamaster_resnet20-12fca82f.th").is_file()}
    scratch = Path(tempfile.mkdtemp(prefix="readme-check."))
    (scratch / "examples").symlink_to(ROOT / "examples")
    if have["weights"]:
        (scratch / "resnet20-12fca82f.th").symlink_to(
            Path(args.weights).resolve() / "akamaster_resnet20-12fca82f.th")
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "COLUMNS": "100", "NETMORPH_PROGRESS": "off",
           "NETMORPH_DATA": str(Path(args.data_dir).resolve()),
           "NO_COLOR": "1", "TERM": "dumb"}
    failures, ran, skipped = 0, 0, 0
    edits: list[tuple[Command, list[str]]] = []
    try:
        for s in sessions(lines):
            missing = [n for n in s.needs if n == "skip" or not have.get(n, True)]
            if missing:
                skipped += len(s.commands)
                print(f"skip  {s.commands[0].text}  (needs {', '.join(missing)})")
                continue
            for c in s.commands:
                r = subprocess.run(["bash", "-c", c.text], cwd=scratch, env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                actual = r.stdout.replace(env["NETMORPH_DATA"], "$NETMORPH_DATA")
                actual_lines = actual.rstrip("\n").splitlines()
                ran += 1
                diff = compare(c.expected, actual_lines, args.rtol)
                print(f"{'ok   ' if diff is None else 'DIFF '} {c.text}")
                if diff is not None:
                    failures += 1
                    print(f"      README line {c.line + 1}: {diff}")
                    edits.append((c, regenerated(c.expected, actual_lines)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if args.write and edits:
        for c, new in sorted(edits, key=lambda e: -e[0].line):
            lines[c.line + 1:c.line + 1 + len(c.expected)] = new
        readme.write_text("\n".join(lines) + "\n")
        print(f"rewrote {len(edits)} outputs in {readme}")
        return 0
    print(f"{ran} commands run, {failures} differ, {skipped} skipped")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
