"""Export a network for deployment: a ``torch.export`` program (``.pt2``) or ONNX, checked.

The exported artifact is netmorph's ``GraphNet`` in eval mode (BN on running statistics),
traced with a dynamic batch dimension where torch allows it. It takes *normalized* inputs:
the checkpoint's ``meta['normalization']`` is not part of the graph, as it is not part of
netmorph's module. After writing, the file is loaded back and run against netmorph's module on
seeded random inputs; an artifact off by more than ``TOLERANCES`` (relative, ‖Δ‖∞ / ‖ref‖∞
as in ``verify.py``: 1e-5 in float32, 1e-10 in float64) is removed and the export fails,
so no half-good file remains.

ONNX needs the ``onnx`` extra (``onnxscript`` for ``torch.onnx.export(dynamo=True)``,
``onnxruntime`` for the check). ONNX Runtime's CPU kernels have no float64 convolution, so an
ONNX export is float32 unless asked otherwise.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import torch

from ..base.limits import MAX_BATCH
from ..base.runtime import quiet_torch
from ..errors import NetmorphError, UsageError, VerificationError
from ..network.description import Network
from . import outputs

FORMATS = ("pt2", "onnx")
TOLERANCE = 1e-5  # max relative error of the artifact's logits (float32)
TOLERANCES = {torch.float32: TOLERANCE, torch.float64: 1e-10}  # by the artifact's dtype
ONNX_EXTRA = "--format onnx needs the onnx extra: pip install 'netmorph[onnx]'"
_EXAMPLE_BATCH = 2  # a batch of 1 would be specialized by the tracer, not kept dynamic

Runner = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ExportReport:
    format: str  # "pt2" or "onnx"
    path: str
    sha256: str
    dtype: str  # of the artifact's parameters and inputs
    max_abs_err: float  # artifact vs netmorph's module, over the check's inputs
    max_rel_err: float  # ‖Δ‖∞ / ‖netmorph logits‖∞
    tolerance: float
    samples: int
    dynamic_batch: bool
    note: str  # why the batch is static, or ""
    seconds: float  # export, write and check

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def export_network(net: Network, path: str | Path, *, fmt: str = "pt2",
                   dtype: torch.dtype | None = None, force: bool = False,
                   protect: Iterable[str | Path] = (), samples: int = 8,
                   seed: int = 0) -> ExportReport:
    """Export ``net`` to ``path`` in ``fmt`` under the write policy, then check the written
    file against ``net.module()``; raise ``VerificationError`` (exit 1) and remove the file
    if it is off by more than ``TOLERANCES`` (by the artifact's dtype).

    ``dtype``: of the artifact [default: the checkpoint's for pt2, float32 for onnx]."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        _require_onnx()
        if dtype == torch.float64:
            raise UsageError("ONNX Runtime's CPU kernels have no float64 convolution, so a "
                             "float64 ONNX file cannot be checked; export ONNX in float32")
    start = time.perf_counter()
    path, protect = Path(path), list(protect)
    outputs.check_outputs([path], inputs=protect, force=force)
    dtype = dtype or (torch.float32 if fmt == "onnx" else net.dtype)
    module = net.module(dtype)
    example = torch.zeros(_EXAMPLE_BATCH, *net.description["input"], dtype=dtype)
    with quiet_torch():
        if fmt == "pt2":
            writer, dynamic, note = _pt2(module, example, {"netmorph.json": _card(net)})
        else:
            writer, dynamic, note = _onnx(module, example)
    sha = outputs.write_file(path, writer, force=force, inputs=protect)
    try:
        max_abs, rel = _check(net, fmt, path, dtype, samples, seed, dynamic)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    tol = TOLERANCES.get(dtype, TOLERANCE)
    if not rel <= tol:  # NaN fails too
        path.unlink(missing_ok=True)
        err = VerificationError(
            f"the exported {fmt} program does not reproduce netmorph's module (max relative "
            f"error {rel:.3g} > {tol:g} on {samples} random inputs); '{path}' removed")
        err.exit_code = 1  # a failed check, not bad input
        raise err
    return ExportReport(fmt, str(path), sha, str(dtype).removeprefix("torch."), max_abs, rel,
                        tol, samples, dynamic, note, time.perf_counter() - start)


def _require_onnx() -> None:
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise UsageError(ONNX_EXTRA) from None


def _batch_dim() -> tuple[dict[int, Any]]:
    return ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},)


def _trace(export: Callable[..., Any], example: torch.Tensor, what: str
           ) -> tuple[Any, bool, str]:
    """``export(example, dynamic_shapes)`` with a dynamic batch, else with a static batch of
    one (and why)."""
    try:
        return export(example, _batch_dim()), True, ""
    except Exception as exc:  # torch raises many kinds of errors for a constraint it cannot keep
        note = f"static batch of 1: {what} cannot keep the batch dynamic ({_first_line(exc)})"
    try:
        return export(example[:1], None), False, note
    except Exception as exc:
        raise NetmorphError(f"{what} cannot export this network: {_first_line(exc)}") from None


def _card(net: Network) -> str:
    """What the program itself does not say, as JSON in the archive's ``extra/`` folder: the
    architecture name and the input normalization (``netmorph import`` reads them back)."""
    return json.dumps({"arch": net.description["arch"],
                       "normalization": net.meta.get("normalization")}, sort_keys=True)


def _pt2(module: torch.nn.Module, example: torch.Tensor, extra: dict[str, str]
         ) -> tuple[Callable[[IO[bytes]], Any], bool, str]:
    program, dynamic, note = _trace(
        lambda x, shapes: torch.export.export(module, (x,), dynamic_shapes=shapes), example,
        "torch.export")
    return (lambda f: torch.export.save(program, f, extra_files=extra)), dynamic, note


def _onnx(module: torch.nn.Module, example: torch.Tensor
          ) -> tuple[Callable[[IO[bytes]], Any], bool, str]:
    program, dynamic, note = _trace(
        lambda x, shapes: torch.onnx.export(module, (x,), dynamo=True, dynamic_shapes=shapes,
                                            input_names=["input"], output_names=["logits"],
                                            verbose=False),
        example, "torch.onnx")
    try:
        blob = program.model_proto.SerializeToString()  # > 2 GB would need external data
    except ValueError as exc:
        raise NetmorphError(f"cannot serialize the ONNX model: {_first_line(exc)}") from None
    return (lambda f: f.write(blob)), dynamic, note


def _load(fmt: str, path: Path) -> Runner:
    """Run the artifact at ``path``: the file just written, read back as a user would."""
    if fmt == "pt2":
        # torch.export.load can run code from an untrusted file (it unpickles parts of the
        # archive, builds guards from its strings): fine for the file this process just
        # wrote, never for one from elsewhere. netmorph's importers never call it: they
        # parse a .pt2 archive themselves and read tensors with weights_only=True.
        program = torch.export.load(path).module()
        return lambda x: program(x)
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])


def _check(net: Network, fmt: str, path: Path, dtype: torch.dtype, samples: int, seed: int,
           dynamic: bool) -> tuple[float, float]:
    """(max abs, max relative error) of the artifact against netmorph's module in the
    checkpoint's own dtype, on ``samples`` seeded float32 inputs (and, if the batch is
    dynamic, also on the first alone: a batch size the tracer did not see; if static, one
    at a time)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, *net.description["input"], generator=gen)  # (N, C, H, W) float32
    reference = net.module()
    try:
        with quiet_torch():
            run = _load(fmt, path)
            with torch.inference_mode():
                ref = reference(x.to(net.dtype)).double()  # (N, classes)
                if dynamic:
                    got = [run(x.to(dtype)).double(), run(x[:1].to(dtype)).double()]
                else:
                    got = [torch.cat([run(xi) for xi in x.to(dtype).split(1)]).double()]
    except Exception as exc:
        raise _unrunnable(fmt, path, _first_line(exc)) from None
    if any(y.shape != ref[:len(y)].shape for y in got):
        raise _unrunnable(fmt, path, f"it returns shape {tuple(got[0].shape)}, netmorph's "
                          f"module {tuple(ref.shape)}")
    max_abs = float(torch.cat([(y - ref[:len(y)]).abs().flatten() for y in got]).max())  # NaN stays
    scale = float(ref.abs().max())
    return max_abs, max_abs / scale if scale > 0 else max_abs


def _unrunnable(fmt: str, path: Path, why: str) -> VerificationError:
    err = VerificationError(f"the exported {fmt} file cannot be run back ({why}); "
                            f"'{path}' removed")
    err.exit_code = 1  # a failed check, not bad input
    return err


def _first_line(exc: BaseException) -> str:
    lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
    return lines[0][:200] if lines else type(exc).__name__
