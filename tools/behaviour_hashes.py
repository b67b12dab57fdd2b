"""Hash what netmorph's commands write and print on a fixed corpus, to show that a change
that should not change behaviour (the layout issue's move into stage packages) does not.

    python tools/behaviour_hashes.py --write tools/behaviour_hashes.json   # before
    python tools/behaviour_hashes.py --check tools/behaviour_hashes.json   # after

The corpus: every preset on a fresh ResNet-20 and ResNet-32 (seed 0), each example module at
three sites of ResNet-20 (a square conv, a conv of the last stage, an identity shortcut),
an imported CNN (examples/cnn.py's VGG) and a module in it, ``reduce --json`` of every
example spec, ``info --json`` of the children. A file's hash is its sha256 (the bytes are
deterministic on one machine with one thread and one set of versions; see the README's
determinism statement), a printout's the sha256 of its stdout and stderr, times in seconds
masked. Runs with one thread.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = ROOT / "examples" / "modules"
PRESETS = ["1c1", "3c1", "3c3", "1c1_half", "1c1_2branch", "1c3", "5c5_2branch"]
SITES = ["layer1.0.conv1", "layer3.1.conv2", "layer2.1.shortcut"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NETMORPH_PROGRESS": "off"}


def run(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "netmorph_cli", *args], capture_output=True,
                          text=True, env=ENV, cwd=ROOT)
    text = f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return re.sub(r"\b\d+(\.\d+)?(e-?\d+)? s\b", "N s", text)  # times are not behaviour


def digest(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def corpus(tmp: Path) -> dict[str, str]:
    out: dict[str, str] = {}

    def file_case(name: str, path: Path, printed: str) -> None:
        out[name] = digest(path.read_bytes()) if path.exists() else f"missing: {printed!r}"
        out[f"{name} info --json"] = digest(run("info", str(path), "--json"))

    for arch in ("resnet20", "resnet32"):
        parent = tmp / f"{arch}.safetensors"
        run("init", arch, "-o", str(parent))
        out[f"init {arch}"] = digest(parent.read_bytes())
        for preset in PRESETS:
            child = tmp / f"{arch}_{preset}.safetensors"
            printed = run("morph", str(parent), "--module", preset, "-o", str(child))
            file_case(f"{arch} {preset}", child, printed)
    parent = tmp / "resnet20.safetensors"
    for spec in sorted(MODULES.glob("*.json")):
        out[f"reduce --json {spec.name}"] = digest(run("reduce", str(spec), "--json"))
        for site in SITES:
            child = tmp / f"{spec.stem}@{site}.safetensors"
            printed = run("morph", str(parent), "--module", str(spec), "--at", site, "-o",
                          str(child))
            if child.exists():
                file_case(f"{spec.stem}@{site}", child, printed)
            else:  # a refusal is behaviour too: its message
                out[f"{spec.stem}@{site} refused"] = digest(printed)
    subprocess.run([sys.executable, str(ROOT / "examples" / "cnn.py"), str(tmp / "vgg.pt2")],
                   capture_output=True, env=ENV, check=True)
    vgg = tmp / "vgg.safetensors"
    run("import", str(tmp / "vgg.pt2"), "-o", str(vgg))
    file_case("import vgg.pt2", vgg, "")
    child = tmp / "vgg_C.safetensors"
    printed = run("morph", str(vgg), "--module", str(MODULES / "C.json"), "--at", "features.4",
                  "-o", str(child))
    file_case("vgg C@features.4", child, printed)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", metavar="JSON")
    group.add_argument("--check", metavar="JSON")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        hashes = corpus(Path(tmp))
    if args.write:
        Path(args.write).write_text(json.dumps(hashes, indent=1, sort_keys=True) + "\n")
        print(f"wrote {len(hashes)} hashes to {args.write}")
        return
    want = json.loads(Path(args.check).read_text())
    diff = sorted(k for k in set(want) | set(hashes) if want.get(k) != hashes.get(k))
    for k in diff:
        print(f"differs: {k}")
    print(f"{len(hashes) - len(diff)} of {len(want)} hashes agree")
    sys.exit(1 if diff else 0)


if __name__ == "__main__":
    main()
