"""Parent-versus-child comparison: does the child compute the parent's function?

Both networks run in eval mode in one dtype on the same inputs (seeded random images by
default, or real ones); the report gives the logits' max absolute and max relative error
(‖Δ‖∞ / ‖parent logits‖∞, normwise so that near-zero logits do not inflate it), top-1
agreement, and the same errors at every morphed module's output, from the node pairs the
child's history records.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import VerificationError
from ..network.description import Network, check_forward
from ..network.history import MorphRecord, parse_history

DEFAULT_TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


@dataclass(frozen=True)
class SiteError:
    parent_node: str
    child_node: str
    max_abs_err: float
    max_rel_err: float


@dataclass(frozen=True)
class VerifyReport:
    passed: bool
    max_abs_err: float
    max_rel_err: float
    top1_agreement: float
    dtype: str
    samples: int
    tolerance: float
    inputs: str  # "random" or a data-set name
    sites: tuple[SiteError, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "max_abs_err": self.max_abs_err,
                "max_rel_err": self.max_rel_err, "top1_agreement": self.top1_agreement,
                "dtype": self.dtype, "samples": self.samples, "tolerance": self.tolerance,
                "inputs": self.inputs,
                "modules": [{"parent": s.parent_node, "child": s.child_node,
                             "max_abs_err": s.max_abs_err, "max_rel_err": s.max_rel_err,
                             "within_tolerance": self.site_within(s)}
                            for s in self.sites]}

    def site_within(self, site: SiteError) -> bool:
        """A module output within the logits' tolerance (relative to that output's own
        largest value). A diagnostic: the verdict is the logits'. An output outside it while
        the logits agree is rounding the module amplifies (solved filters that are large and
        cancel; ``info``'s cond column), or a difference the network downstream damps."""
        return site.max_rel_err == site.max_rel_err and site.max_rel_err <= self.tolerance

    def sites_outside(self) -> list[SiteError]:
        return [s for s in self.sites if not self.site_within(s)]


def require_passed(report: VerifyReport) -> None:
    """Raise unless a morph's own check passed: a ``VerificationError`` with exit code 1
    (a failed check, not bad input), raised before anything is written."""
    if not report.passed:
        err = VerificationError(f"the morphed network does not reproduce the parent (max "
                                f"relative error {report.max_rel_err:.3g} > "
                                f"{report.tolerance:g}); nothing written")
        err.exit_code = 1
        raise err


def check_pair(parent: Network, child: Network) -> None:
    """Refuse pairs that cannot be parent and child."""
    pd, cd = parent.description, child.description
    if list(pd["input"]) != list(cd["input"]):
        raise VerificationError(f"not a parent/child pair: inputs differ ({pd['input']} vs "
                                f"{cd['input']})")
    if pd["num_classes"] != cd["num_classes"]:
        raise VerificationError(f"not a parent/child pair: {pd['num_classes']} vs "
                                f"{cd['num_classes']} classes")


def compare_pairs(parent: Network, child: Network) -> list[tuple[str, str]]:
    """Node pairs recorded by the morphs the child has beyond the parent."""
    p_nodes, c_nodes = parent.nodes, child.nodes
    n = len(parent.history) if child.history[:len(parent.history)] == parent.history else 0
    pairs: list[tuple[str, str]] = []
    for entry in parse_history(child.history)[n:]:
        for a, b in entry.compare if isinstance(entry, MorphRecord) else ():
            if (a in p_nodes or a == "input") and b in c_nodes and (a, b) not in pairs:
                pairs.append((a, b))
    return pairs


def _worst(a: float, b: float) -> float:
    """max(a, b) that keeps a NaN from either side (Python's max drops a NaN ``b``)."""
    return b if b != b or b > a else a


def verify(parent: Network, child: Network, *, dtype: torch.dtype = torch.float64,
           samples: int = 64, seed: int = 0, inputs: torch.Tensor | None = None,
           inputs_name: str = "random", tol: float | None = None,
           device: torch.device | str = "cpu", batch_size: int = 64) -> VerifyReport:
    """Compare ``child`` with ``parent`` on ``samples`` inputs (or on ``inputs``)."""
    check_pair(parent, child)
    tol = DEFAULT_TOL.get(dtype, 1e-5) if tol is None else tol
    n_in = samples if inputs is None else int(inputs.shape[0])
    per_input = math.prod(parent.description["input"])
    check_forward(child.description, min(batch_size, max(n_in, 1)), dtype, "verify",
                  factor=2.0, extra=8 * n_in * per_input, device=device)
    if inputs is None:
        gen = torch.Generator().manual_seed(seed)
        inputs = torch.randn(samples, *parent.description["input"], generator=gen,
                             dtype=torch.float64)
    pairs = compare_pairs(parent, child)
    pnet, cnet = parent.module(dtype, device), child.module(dtype, device)
    max_abs = scale = 0.0
    agree = 0
    site_abs = [0.0] * len(pairs)
    site_scale = [0.0] * len(pairs)
    with torch.inference_mode():
        for x in inputs.split(batch_size):
            x = x.to(device=device, dtype=dtype)
            py, pv = pnet(x, capture=[a for a, _ in pairs] or ["input"])
            cy, cv = cnet(x, capture=[b for _, b in pairs] or ["input"])
            max_abs = _worst(max_abs, float((cy - py).abs().max()))
            scale = _worst(scale, float(py.abs().max()))
            agree += int((cy.argmax(1) == py.argmax(1)).sum())
            for i, (a, b) in enumerate(pairs):
                if pv[a].shape != cv[b].shape:
                    raise VerificationError(f"module output {b!r} has shape "
                                            f"{tuple(cv[b].shape)}, parent's {a!r} "
                                            f"{tuple(pv[a].shape)}")
                site_abs[i] = _worst(site_abs[i], float((cv[b] - pv[a]).abs().max()))
                site_scale[i] = _worst(site_scale[i], float(pv[a].abs().max()))
    n = inputs.shape[0]
    rel = max_abs / scale if scale > 0 else max_abs
    sites = tuple(SiteError(a, b, site_abs[i], site_abs[i] / site_scale[i]
                            if site_scale[i] > 0 else site_abs[i])
                  for i, (a, b) in enumerate(pairs))
    finite = all(v == v for v in (max_abs, rel))  # NaN never passes
    return VerifyReport(finite and rel <= tol, max_abs, rel, agree / n if n else 1.0,
                        str(dtype).removeprefix("torch."), n, tol, inputs_name, sites)


# -- training mode ---------------------------------------------------------------------

@dataclass(frozen=True)
class TrainModeReport:
    """Parent and child in training mode (BN on batch statistics) on the same batches."""

    passed: bool
    parent_loss: float  # mean cross-entropy over all images
    child_loss: float
    parent_accuracy: float
    child_accuracy: float
    max_rel_err: float  # ‖Δ logits‖∞ / ‖parent logits‖∞ over all batches
    loss_diff_std: float  # std over batches of (child − parent) batch loss
    batches: int
    batch_size: int
    dtype: str
    inputs: str
    limit: float  # the child loss that passes: 1.10 · parent_loss + 0.01

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "mode": "train", "dtype": self.dtype,
                "inputs": self.inputs,
                "train_mode": {"parent_loss": self.parent_loss, "child_loss": self.child_loss,
                               "parent_accuracy": self.parent_accuracy,
                               "child_accuracy": self.child_accuracy,
                               "max_rel_err": self.max_rel_err,
                               "loss_diff_std": self.loss_diff_std, "limit": self.limit,
                               "batches": self.batches, "batch_size": self.batch_size}}


def train_mode_limit(parent_loss: float) -> float:
    """The loss a child may reach in training mode and pass: new BN layers add batch-
    statistic noise that moves the loss a few percent either way."""
    return parent_loss * 1.10 + 0.01


@contextlib.contextmanager
def _draws(seed: int, device: torch.device | str) -> Iterator[None]:
    """Random draws seeded by ``seed`` inside, the caller's generators untouched."""
    cuda = [torch.device(device)] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


def verify_train_mode(parent: Network, child: Network,
                      batches: list[tuple[torch.Tensor, torch.Tensor]], *,
                      dtype: torch.dtype = torch.float32, inputs_name: str = "data",
                      device: torch.device | str = "cpu") -> TrainModeReport:
    """Run both networks in training mode on ``batches`` (normalized images, labels) and
    compare losses, accuracies and logits. Neither network is changed: the modules are
    copies, their running statistics are thrown away. Both run each batch on the same
    random draws, so dropout layers drop the same units in both."""
    check_pair(parent, child)
    if not batches:
        raise VerificationError("no batches to verify in training mode")
    pnet = parent.module(dtype, device).train()
    cnet = child.module(dtype, device).train()
    p_loss, c_loss, diffs = [], [], []
    p_right = c_right = n = 0
    max_abs = scale = 0.0
    with torch.no_grad():
        for k, (x, y) in enumerate(batches):
            x, y = x.to(device=device, dtype=dtype), y.to(device)
            # the same random draws for both (dropout masks: a morph adds no random op)
            with _draws(k, device):
                py = pnet(x)
            with _draws(k, device):
                cy = cnet(x)
            lp = float(torch.nn.functional.cross_entropy(py.double(), y))
            lc = float(torch.nn.functional.cross_entropy(cy.double(), y))
            p_loss.append(lp * len(y))
            c_loss.append(lc * len(y))
            diffs.append(lc - lp)
            p_right += int((py.argmax(1) == y).sum())
            c_right += int((cy.argmax(1) == y).sum())
            n += len(y)
            max_abs = _worst(max_abs, float((cy - py).abs().max()))
            scale = _worst(scale, float(py.abs().max()))
    pl, cl = sum(p_loss) / n, sum(c_loss) / n
    spread = float(torch.tensor(diffs, dtype=torch.float64).std()) if len(diffs) > 1 else 0.0
    limit = train_mode_limit(pl)
    rel = max_abs / scale if scale > 0 else max_abs
    return TrainModeReport(cl == cl and cl <= limit, pl, cl, p_right / n, c_right / n, rel,
                           spread, len(batches), len(batches[0][1]),
                           str(dtype).removeprefix("torch."), inputs_name, limit)
