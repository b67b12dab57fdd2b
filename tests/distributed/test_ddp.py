"""`netmorph train` under ``torchrun --nproc-per-node 2`` on CPU (gloo): both ranks end with
identical weights, each rank trains on its own half of every global batch, rank 0 alone
writes the output, and the run is a plausible version of the single-process one.

The worker below runs the real command line (``netmorph_cli.cli.main``) in each rank, with
``train.train`` and ``train.augment`` wrapped to record what the rank trained and saw; it
saves that to ``rank{R}.pt`` (a test-only side channel: the command itself writes only
from rank 0).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from netmorph_cli.io import checkpoint as ck
from netmorph_cli.network import zoo
from netmorph_cli.training import data, train

N_TRAIN, N_TEST, BATCH = 256, 64, 64  # global batch 64 = 2 ranks × 32, 4 steps


pytestmark = pytest.mark.usefixtures("one_thread")

WORKER = textwrap.dedent("""
    import os, sys, torch
    from netmorph_cli.cli import commands as cli
    from netmorph_cli.training import train

    dump, argv = sys.argv[1], sys.argv[2:]
    seen, result = [], {}
    real_train, real_augment = train.train, train.augment

    def spy_train(*args, **kwargs):
        result["net"], result["history"] = real_train(*args, **kwargs)
        return result["net"], result["history"]

    def spy_augment(x, gen, **kwargs):
        seen.append(x.double().flatten(1).sum(1))  # one fingerprint per image
        return real_augment(x, gen, **kwargs)

    train.train, train.augment = spy_train, spy_augment
    try:
        cli.main(argv)
    except SystemExit as exc:
        code = exc.code or 0
    torch.save({"tensors": result["net"].tensors, "seen": seen,
                "test_error": result["history"][-1].test_error},
               os.path.join(dump, f"rank{os.environ['RANK']}.pt"))
    sys.exit(code)
""")


def _loopback_ok() -> str | None:
    """None when a TCP connection over 127.0.0.1 works here, else why not."""
    try:
        with socket.socket() as srv:
            srv.bind(("127.0.0.1", 0))
            srv.listen(1)
            with socket.create_connection(srv.getsockname(), timeout=5):
                pass
    except OSError as exc:
        return f"no loopback TCP for torchrun's rendezvous: {exc}"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "torch.distributed.run"]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    why = _loopback_ok()
    if why:
        pytest.skip(why)
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("this torch has no gloo backend")
    root = tmp_path_factory.mktemp("ddp")
    ds = data.synthetic(N_TRAIN, N_TEST)
    np.savez(root / "cifar10-mini.npz", x_train=ds.x_train, y_train=ds.y_train,
             x_test=ds.x_test, y_test=ds.y_test)
    parent = root / "r20.safetensors"
    ck.save(zoo.create("resnet20", seed=0), parent)
    (root / "worker.py").write_text(WORKER)
    out = root / "ddp.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [*_torchrun(), "--nnodes", "1", "--nproc-per-node", "2", "--master-addr",
           "127.0.0.1", "--master-port", str(_free_port()), str(root / "worker.py"), str(root),
           "train", str(parent), "--dataset", "cifar10-mini", "--data-dir", str(root),
           "-o", str(out), "--epochs", "1", "--batch-size", str(BATCH), "--device", "cpu",
           "--seed", "0"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("torchrun did not finish in 300 s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ranks = [torch.load(root / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    return root, out, ds, ranks, proc.stdout


def test_both_ranks_end_with_identical_weights(ddp_run):
    _, _, _, ranks, _ = ddp_run
    a, b = ranks[0]["tensors"], ranks[1]["tensors"]
    assert list(a) == list(b)
    for k in a:  # parameters (DDP's averaged gradients) and BN buffers (broadcast)
        assert torch.equal(a[k], b[k]), f"{k} differs between ranks"
    assert ranks[0]["test_error"] == ranks[1]["test_error"]


def test_each_rank_trains_on_its_own_half(ddp_run):
    _, _, ds, ranks, _ = ddp_run
    x = data.to_tensor(ds.x_train, data.CIFAR_MEAN, data.CIFAR_STD).double().flatten(1).sum(1)
    everything = sorted(x.tolist())
    assert len(set(everything)) == N_TRAIN  # fingerprints tell the images apart
    per_rank = []
    for r in ranks:
        assert [len(s) for s in r["seen"]] == [BATCH // 2] * (N_TRAIN // BATCH)
        per_rank.append(sorted(torch.cat(r["seen"]).tolist()))
    assert not set(per_rank[0]) & set(per_rank[1])  # disjoint shards
    assert sorted(per_rank[0] + per_rank[1]) == everything  # together: the whole epoch


def test_rank_zero_writes_the_output(ddp_run):
    root, out, _, ranks, stdout = ddp_run
    net = ck.load(out)
    for k, v in ranks[0]["tensors"].items():
        assert torch.equal(net.tensors[k], v), k
    entry = net.history[-1]
    assert entry["op"] == "train" and entry["world_size"] == 2 and entry["epochs_run"] == 1
    rows = [json.loads(line) for line in Path(f"{out}.metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1]  # written once, not once per rank
    assert stdout.count("trained 1 epochs") == 1 and stdout.count(f"wrote {out}") == 1
    assert torch.load(train.state_path(out), weights_only=True)["epoch"] == 1


def test_ddp_run_resembles_a_single_process_run(ddp_run, tmp_path):
    """Not equal (each rank's BN sees 32 images, not 64, and crops are drawn per rank), but
    the same number of steps on the same global batches with averaged gradients: the
    weights move about as far from their initialization as in one process."""
    root, _, ds, ranks, _ = ddp_run
    init = zoo.create("resnet20", seed=0)
    single, _ = train.train(init, train.TrainConfig(dataset="cifar10-mini", epochs=1,
                                                    batch_size=BATCH, seed=0),
                            tmp_path / "single.safetensors", dataset=ds)
    ddp = ranks[0]["tensors"]
    assert ddp["bn1.num_batches_tracked"] == single.tensors["bn1.num_batches_tracked"] == 4
    moved = {}
    for name, t in (("ddp", ddp), ("single", single.tensors)):
        moved[name] = sum(float((t[k] - init.tensors[k]).norm() ** 2) for k in t
                          if k.endswith("weight")) ** 0.5
    assert not torch.equal(ddp["conv1.weight"], single.tensors["conv1.weight"])
    # summed instead of averaged gradients would move the weights about twice as far
    assert 0.7 < moved["ddp"] / moved["single"] < 1.4, moved
