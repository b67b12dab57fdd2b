"""netmorph's Python API: grow a trained PyTorch CNN into a larger one that computes the same
function, inside a training script.

    import netmorph
    child = netmorph.morph(model, "D.json", at="features.4", example_input=x)
    optimizer = torch.optim.SGD(child.parameters(), lr=0.01)
    report = netmorph.verify(model, child, example_input=x)   # .passed, .max_rel_err

``morph`` takes a plain ``nn.Module`` (traced once with ``torch.export`` on
``example_input``, converted op by op and checked against the model) or a module that
netmorph returned or loaded, and returns a new ``nn.Module`` (netmorph's ``GraphNet``) on the
model's device, in the model's training mode, whose layers sit at the original module
paths (``child.features[3]`` is the model's ``features[3]``; the module replacing
``features.4`` lies under ``features.4.*``). ``save``/``load`` read and write netmorph
checkpoints (the CLI's files), history and lineage included; ``export`` writes a checked
.pt2 (or ONNX) file. Everything the CLI prints as ``Error: …`` is raised here as a
``netmorph_cli.errors.NetmorphError`` subclass.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netmorph_cli import __version__
from netmorph_cli.errors import NetmorphError
from netmorph_cli.morph.verify import VerifyReport
from netmorph_cli.network.description import GraphNet, Network, state_of
from netmorph_cli.network.presets import Preset
from netmorph_cli.spec.graph import ModuleGraph

__all__ = ["GraphNet", "NetmorphError", "VerifyReport", "__version__", "export", "load",
           "morph", "new_parameters", "param_groups", "save", "search", "search_step",
           "to_network", "verify"]


def to_network(model: nn.Module, example_input: torch.Tensor | None = None) -> Network:
    """The netmorph ``Network`` (description, tensors, history) of ``model``.

    A module netmorph made carries its own; any other is traced with ``torch.export`` on
    ``example_input`` (one (N, C, H, W) batch; the model's mode is restored afterwards) and
    its logits checked against the model's on random inputs (``VerificationError`` above
    1e-5 relative in float32, 1e-10 in float64)."""
    record = getattr(model, "netmorph_record", None)
    if isinstance(model, GraphNet) and record is not None:
        desc, history, meta = record
        tensors = {k: v.cpu() for k, v in state_of(model).items()}
        return Network(copy.deepcopy(desc), tensors, copy.deepcopy(history),
                       copy.deepcopy(meta)).check()
    if example_input is None:
        raise TypeError("example_input is needed to trace a plain nn.Module (one batch of "
                        "inputs, e.g. torch.randn(2, 3, 32, 32))")
    from netmorph_cli.io import conversion, importers, program

    was_training = model.training
    device = example_input.device
    try:
        prog = program.trace(model, example_input, type(model).__name__)
        net = conversion.to_network(
            prog, arch=type(model).__name__, normalization=importers.default_normalization(
                int(example_input.shape[1])),
            imported={"layout": "torch.export", "module": type(model).__qualname__})
        with torch.no_grad():
            importers.compare(net, lambda x: model.eval()(x.to(device)).cpu(),
                              type(model).__name__)
    finally:
        model.train(was_training)
    return net


def morph(model: nn.Module, module: str | Path | ModuleGraph | Preset | dict[str, Any], *,
          at: str | nn.Module | None = None, after: str | nn.Module | None = None,
          example_input: torch.Tensor | None = None, seed: int = 0, bn: bool = True,
          act: str = "prelu", calibrate: Iterable[torch.Tensor] | None = None) -> GraphNet:
    """A child of ``model`` with ``module`` in place of the conv ``at`` (stride 1, groups 1),
    or inserted ``after`` a node (the identity there morphed into the module); a preset
    (``"1c1"``, …) places itself in every ResNet block named ``layerL.I``.

    ``at``/``after``: a node name (the module path, ``"features.4"``) or the submodule
    itself (``model.features[4]``). ``module``: a preset name, a spec file path, a spec
    dict or a ``ModuleGraph``. The
    filters are solved in float64; the child is checked against the parent on 4 random
    inputs before it is returned. ``calibrate``: batches of (normalized) training inputs
    that set the new BN layers' statistics, so the child also starts where the parent is
    in training mode. The child is on the model's device and in its training mode."""
    from netmorph_cli.morph.morphs import morph_network

    spec = _module(module)
    at, after = _path(model, at, "at"), _path(model, after, "after")
    parent = to_network(model, example_input)
    child, _ = morph_network(parent, spec, at=at, after=after, seed=seed, bn=bn, act=act,
                             calibrate=("user data", [b.detach().cpu() for b in calibrate])
                             if calibrate is not None else None)
    return _to_module(child, _device(model, example_input), model.training)


def verify(parent: nn.Module, child: nn.Module, *, example_input: torch.Tensor | None = None,
           inputs: torch.Tensor | None = None, samples: int = 64,
           dtype: torch.dtype | None = None) -> VerifyReport:
    """Compare ``child`` with ``parent`` in eval mode (``netmorph verify``): logits and every
    morphed module's output, on ``inputs`` or ``samples`` seeded random inputs, in
    ``dtype`` (default: the child's; tolerance 1e-5 relative in float32, 1e-10 in
    float64). A plain ``parent`` is traced on ``example_input`` as ``morph`` did."""
    from netmorph_cli.morph import verify as verifying

    p = to_network(parent, example_input)
    c = to_network(child, example_input)
    dtype = dtype or c.dtype
    if inputs is not None:
        return verifying.verify(p, c, dtype=dtype, inputs=inputs.detach().cpu(),
                                inputs_name="given")
    return verifying.verify(p, c, dtype=dtype, samples=samples)


def load(path: str | Path) -> GraphNet:
    """The network of a netmorph checkpoint as an ``nn.Module`` (eval mode, CPU)."""
    from netmorph_cli.io.checkpoint import load as load_checkpoint

    return _to_module(load_checkpoint(path), torch.device("cpu"), False)


def save(model: nn.Module, path: str | Path, *, force: bool = False,
         example_input: torch.Tensor | None = None) -> str:
    """Write ``model`` as a netmorph checkpoint (safetensors, or ``.pt``); returns its
    sha256. A plain module is traced on ``example_input`` first."""
    from netmorph_cli.io.checkpoint import save as save_checkpoint

    return save_checkpoint(to_network(model, example_input), path, force=force)


def new_parameters(child: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters of ``child`` (a module netmorph returned or loaded) that the morphs
    since its last training added: solved filters, new BN scales and shifts, PReLU slopes,
    by name. Empty for a network with no morph since it was trained."""
    from netmorph_cli.training.growth import new_parameter_names

    if getattr(child, "netmorph_record", None) is None:
        raise TypeError("new_parameters needs a module netmorph returned or loaded (it "
                        "reads the morph history); a plain nn.Module has no morph")
    names = set(new_parameter_names(to_network(child), child))
    return {k: p for k, p in child.named_parameters() if k in names}


def param_groups(child: nn.Module, lr: float, weight_decay: float, *,
                 new_lr_scale: float = 1.0, new_weight_decay: float | None = None
                 ) -> list[dict[str, Any]]:
    """Parameter groups for any ``torch.optim`` optimizer: the trained parameters at ``lr``
    and ``weight_decay``, the ones ``new_parameters`` names at ``lr × new_lr_scale`` and
    ``new_weight_decay`` (default ``weight_decay``); one group when nothing is new (asking
    for new-parameter options then raises ``UsageError``). Each group carries ``name``
    ("trained"/"new") and ``lr_scale``, so a schedule sets ``lr_scale × lr(t)``::

        opt = torch.optim.SGD(netmorph.param_groups(child, 0.02, 1e-4, new_lr_scale=0.1),
                              lr=0.02, momentum=0.9)
    """
    from netmorph_cli.training.growth import param_groups as groups

    return groups(child, new_parameters(child), lr, weight_decay, new_lr_scale=new_lr_scale,
                  new_weight_decay=new_weight_decay)


def search(parent: str | Path | nn.Module, space: str | Path, run_dir: str | Path, *,
           dataset: str, data_dir: str | Path | None = None, device: str = "cpu",
           **config: Any) -> Any:
    """``netmorph search``: hill climbing over exact morphs from ``parent`` (a checkpoint
    file, or a module netmorph returned or loaded) over the search space file ``space``,
    written to ``run_dir`` (new or empty; a search already there is continued, and any
    setting given that differs from its own is a ``UsageError``).
    ``config``: ``SearchConfig``'s fields (steps, children, epochs, recipe, seed, max_flops,
    max_params, budget_s, …). Returns a ``SearchResult`` (best checkpoint, lineage,
    validation and test error)::

        result = netmorph.search("r20.safetensors", "space.json", "run", dataset="cifar10",
                                 steps=3, children=3, epochs=1)
    """
    from netmorph_cli.search.climb import resume, start
    from netmorph_cli.search.rundir import RunDir, SearchConfig

    rd = RunDir(Path(run_dir))
    if rd.config_file.is_file():  # continue it: with the settings it was started with
        stored, _ = rd.config()
        given = {"dataset": dataset, **config}
        differ = [k for k, v in given.items() if getattr(stored, k, v) != v]
        if differ:
            from netmorph_cli.errors import UsageError

            raise UsageError(f"{run_dir} holds a search with other settings ({', '.join(differ)}"
                             f"); continue it as it is (netmorph.search(parent, space, run_dir, "
                             f"dataset={stored.dataset!r})) or choose another run_dir")
        return resume(run_dir, data_dir=data_dir, device=device)
    net = parent if isinstance(parent, (str, Path)) else to_network(parent)
    return start(net, space, run_dir, SearchConfig(dataset=dataset, **config),
                 data_dir=data_dir, device=device)


def search_step(run_dir: str | Path, *, data_dir: str | Path | None = None,
                device: str = "cpu") -> dict[str, Any] | None:
    """One more step of the search in ``run_dir`` (started by ``search`` or the CLI; a step
    a kill interrupted is finished): its selection record, or None once every step is
    done (``search`` on the same run then measures the final test error)."""
    from netmorph_cli.search.climb import search_step as step

    return step(run_dir, data_dir=data_dir, device=device)


def _path(model: nn.Module, where: str | nn.Module | None, what: str) -> str | None:
    """A submodule given for ``at``/``after`` as its path in ``model``."""
    if where is None or isinstance(where, str):
        return where
    if not isinstance(where, nn.Module):
        raise TypeError(f"{what} must be a node name or a submodule of the model, not "
                        f"{type(where).__name__}")
    paths = [name for name, m in model.named_modules() if m is where and name]
    if not paths:
        raise ValueError(f"{what}: the {type(where).__name__} given is not a submodule of "
                         "the model")
    return paths[0]


def export(model: nn.Module, path: str | Path, *, fmt: str = "pt2", force: bool = False,
           example_input: torch.Tensor | None = None) -> Any:
    """``netmorph export``: write ``model`` as a torch.export program (or ONNX), load it
    back and check it against the network (1e-5 relative in float32); returns the
    ``ExportReport``. A plain module is traced on ``example_input`` first."""
    from netmorph_cli.io.export import export_network

    return export_network(to_network(model, example_input), path, fmt=fmt, force=force)


def _module(module: Any) -> ModuleGraph | Preset:
    from netmorph_cli.spec.parse import load_spec, spec_from_dict

    if isinstance(module, (ModuleGraph, Preset)):
        return module
    if isinstance(module, dict):
        return spec_from_dict(module)
    if isinstance(module, Path) or (isinstance(module, str) and (
            module.endswith(".json") or Path(module).is_file())):
        return load_spec(module)
    if isinstance(module, str):
        return Preset.parse(module)
    raise TypeError(f"module must be a preset name, a spec path or dict, a ModuleGraph or a "
                    f"Preset, not {type(module).__name__}")


def _device(model: nn.Module, example_input: torch.Tensor | None) -> torch.device:
    for p in model.parameters():
        return p.device
    return example_input.device if example_input is not None else torch.device("cpu")


def _to_module(net: Network, device: torch.device, training: bool) -> GraphNet:
    return net.module(device=device).train(training)  # carries net's record
