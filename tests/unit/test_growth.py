"""What a morph added and how it trains (growth.py, train's new-parameter group, carried
momentum): the new group is exactly the parameters the parent did not have, for every kind
of morph; the ramp and scale are what the optimizer applies at each step; a network with
nothing new refuses new-parameter options; resume with groups and carried state is exact."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from netmorph_cli.errors import UsageError
from netmorph_cli.morph import morphs as morph
from netmorph_cli.network import zoo
from netmorph_cli.network.history import MorphRecord
from netmorph_cli.spec.parse import load_spec
from netmorph_cli.training import data, growth, train

MODULES = Path(__file__).resolve().parents[2] / "examples" / "modules"
pytestmark = pytest.mark.usefixtures("one_thread")


def config(**kw) -> train.TrainConfig:
    base = dict(dataset="synthetic", epochs=1, batch_size=64, seed=0, lr=0.02,
                schedule="cosine")
    return train.TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def small() -> data.Dataset:
    return data.synthetic(n_train=128, n_test=32)


@pytest.fixture(scope="module")
def parent():
    return zoo.create("resnet20", seed=0)


def params(net) -> dict[str, torch.Tensor]:
    return dict(net.module().named_parameters())


CHILDREN = {
    "preset 1c1 (identity shortcuts)": lambda p: morph.morph_network(
        p, morph.Preset.parse("1c1"))[0],
    "preset 3c3_2branch_half": lambda p: morph.morph_network(
        p, morph.Preset.parse("3c3_2branch_half"))[0],
    "module A at a conv": lambda p: morph.morph_network(
        p, load_spec(MODULES / "A.json"), at="layer2.1.conv1")[0],
    "module D at a conv": lambda p: morph.morph_network(
        p, load_spec(MODULES / "D.json"), at="layer1.1.conv1")[0],
    "module A at an identity shortcut": lambda p: morph.morph_network(
        p, load_spec(MODULES / "A.json"), at="layer3.2.shortcut")[0],
    "module after a node": lambda p: morph.morph_network(
        p, load_spec(MODULES / "morph_1c1.json"), after="layer1.1.relu2")[0],
    "ReLU → PReLU": lambda p: morph.prelu_all(p),
}


@pytest.mark.parametrize("kind", list(CHILDREN))
def test_new_parameters_are_exactly_those_the_parent_lacks(parent, kind):
    child = CHILDREN[kind](parent)
    mine, theirs = params(child), params(parent)
    expected = {k for k in mine if k not in theirs}
    assert expected  # every one of these morphs adds parameters
    assert set(growth.new_parameter_names(child)) == expected
    # and the ones the child shares with the parent are the parent's, unchanged
    for k in set(mine) & set(theirs):
        assert torch.equal(mine[k], theirs[k]), k
    # buffers the morph added (new BN statistics) are new tensors but not parameters
    assert set(growth.new_parameter_names(child)) <= set(growth.new_tensor_names(child))


def test_two_morphs_before_training_are_both_new_and_training_clears_them(parent, small,
                                                                          tmp_path):
    once = CHILDREN["preset 1c1 (identity shortcuts)"](parent)
    twice = CHILDREN["module A at a conv"](once)
    assert set(growth.new_parameter_names(twice)) == set(params(twice)) - set(params(parent))
    trained, _ = train.train(twice, config(), tmp_path / "t.st", dataset=small)
    assert growth.new_parameter_names(trained) == ()
    # a morph after the training: only its own parameters are new
    again = CHILDREN["module A at an identity shortcut"](trained)
    assert set(growth.new_parameter_names(again)) == set(params(again)) - set(params(trained))


def test_a_grown_kernel_keeps_its_trained_values_and_is_not_new(parent, small, tmp_path):
    child = CHILDREN["preset 1c1 (identity shortcuts)"](parent)
    trained, _ = train.train(child, config(), tmp_path / "t.st", dataset=small)
    grown, _ = morph.morph_network(trained, morph.Preset.parse("3c1"))
    w = grown.tensors["layer1.1.morph1.conv1.weight"]
    assert w.shape[2:] == (3, 3)
    assert torch.equal(w[:, :, 1:2, 1:2], trained.tensors["layer1.1.morph1.conv1.weight"])
    assert growth.new_tensor_names(grown) == ()
    with pytest.raises(UsageError, match="has none"):
        train.train(grown, config(new_lr_scale=0.1), tmp_path / "g.st", dataset=small)


def test_a_morph_recorded_before_added_existed_is_a_clear_error(parent):
    child = CHILDREN["preset 1c1 (identity shortcuts)"](parent)
    old = copy.copy(child)
    old.history = [{k: v for k, v in child.history[0].items() if k != "added"}]
    assert MorphRecord.from_json(old.history[0]).added is None
    with pytest.raises(UsageError, match="did not record the tensors it added"):
        growth.new_parameter_names(old)


def test_param_groups(parent):
    child = CHILDREN["module A at a conv"](parent)
    model = child.module()
    new = growth.new_parameter_names(child, model)
    groups = growth.param_groups(model, new, 0.1, 1e-4, new_lr_scale=0.1,
                                 new_weight_decay=0.0)
    assert [g["name"] for g in groups] == ["trained", "new"]
    assert groups[1]["lr"] == pytest.approx(0.01) and groups[1]["weight_decay"] == 0.0
    assert groups[0]["lr"] == 0.1 and groups[0]["weight_decay"] == 1e-4
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # each once, all
    assert {id(p) for p in groups[1]["params"]} == {
        id(p) for k, p in model.named_parameters() if k in new}
    torch.optim.SGD(groups, lr=0.1, momentum=0.9)  # any torch.optim optimizer takes them
    torch.optim.AdamW(growth.param_groups(model, new, 1e-3, 0.05))
    # nothing new: one group; new-parameter options then are an error
    assert len(growth.param_groups(model, (), 0.1, 1e-4)) == 1
    with pytest.raises(UsageError, match="no new parameters"):
        growth.param_groups(model, (), 0.1, 1e-4, new_lr_scale=0.1)
    with pytest.raises(UsageError, match="no new parameters"):
        growth.param_groups(model, (), 0.1, 1e-4, new_weight_decay=0.0)
    with pytest.raises(UsageError, match="not a parameter"):
        growth.param_groups(model, ["nope.weight"], 0.1, 1e-4)
    for lr, scale in ((0.0, 1.0), (float("nan"), 1.0), (0.1, -1.0), (0.1, float("inf"))):
        with pytest.raises(UsageError, match="positive"):
            growth.param_groups(model, new, lr, 1e-4, new_lr_scale=scale)


def test_ramp_values_at_given_steps():
    cfg = config(new_warmup=200)
    assert cfg.new_ramp(0) == 1 / 200
    assert cfg.new_ramp(99) == 0.5
    assert cfg.new_ramp(199) == 1.0
    assert cfg.new_ramp(10_000) == 1.0
    assert config().new_ramp(0) == 1.0
    assert not config().grows and cfg.grows
    for bad in (dict(new_warmup=-1), dict(new_warmup=2.5), dict(new_lr_scale=float("nan")),
                dict(new_lr_scale=-0.1), dict(new_weight_decay=float("inf"))):
        with pytest.raises(ValueError, match="new_"):
            config(**bad)


def test_the_optimizer_applies_scale_and_ramp_at_each_step(parent, small, tmp_path,
                                                          monkeypatch):
    """The lrs SGD actually steps with (recorded inside ``step``), against the schedule
    computed here: trained lr = cosine(t), new lr = cosine(t) × 0.1 × min(1, (i+1)/3)."""
    child = CHILDREN["module A at a conv"](parent)
    seen: list[tuple[float, ...]] = []
    real = torch.optim.SGD.step

    def step(self, *a, **kw):
        seen.append(tuple(g["lr"] for g in self.param_groups))
        return real(self, *a, **kw)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    cfg = config(epochs=2, new_lr_scale=0.1, new_warmup=3)
    train.train(child, cfg, tmp_path / "t.st", dataset=small)
    steps = 128 // 64
    assert len(seen) == 2 * steps
    import math
    for i, (lr_old, lr_new) in enumerate(seen):
        t = i / (2 * steps)
        base = 0.02 * 0.5 * (1 + math.cos(math.pi * t))
        assert lr_old == pytest.approx(base, rel=1e-12)
        assert lr_new == pytest.approx(base * 0.1 * min(1.0, (i + 1) / 3), rel=1e-12)


def test_new_weight_decay_reaches_the_new_group_only(parent, small, tmp_path, monkeypatch):
    child = CHILDREN["module A at a conv"](parent)
    seen = []
    real = torch.optim.SGD.step

    def step(self, *a, **kw):
        seen.append([(g["name"], g["weight_decay"], len(g["params"]))
                     for g in self.param_groups])
        return real(self, *a, **kw)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    train.train(child, config(new_weight_decay=0.0), tmp_path / "t.st", dataset=small)
    n_new = len(growth.new_parameter_names(child))
    assert seen[0] == [("trained", 1e-4, len(params(child)) - n_new), ("new", 0.0, n_new)]


def test_new_parameters_move_less_at_a_lower_lr(parent, small, tmp_path):
    child = CHILDREN["module A at a conv"](parent)
    new = growth.new_parameter_names(child)

    def moved(**kw) -> float:  # (calibration would set the new BN parameters first)
        out, _ = train.train(child, config(calibrate=False, **kw),
                             tmp_path / f"{len(kw)}{kw}.st", dataset=small)
        return sum(float((out.tensors[k] - child.tensors[k]).norm()) for k in new)

    assert moved(new_lr_scale=0.0) == 0.0  # lr 0 and no weight decay on them: frozen
    assert moved(new_lr_scale=0.1) < moved()


def _parent_state(parent, small, tmp_path) -> Path:
    out = tmp_path / "parent.st"
    train.train(parent, config(), out, dataset=small)
    return train.state_path(out)


def test_carried_momentum(parent, small, tmp_path):
    state_file = _parent_state(parent, small, tmp_path)
    state = torch.load(state_file, weights_only=True)
    names = state["param_names"]
    parent_buf = {names[i]: s["momentum_buffer"] for i, s in state["optimizer"]["state"].items()}
    child = CHILDREN["module A at a conv"](parent)
    model = child.module()
    new = growth.new_parameter_names(child, model)
    opt = torch.optim.SGD(growth.param_groups(model, new, 0.1, 1e-4), lr=0.1, momentum=0.9)
    counts = growth.carry_momentum(opt, model, state, new)
    named = dict(model.named_parameters())
    old = [k for k in named if k not in new]
    assert counts == {"carried": len(old), "padded": 0, "fresh": len(new)}
    for k in old:
        assert torch.equal(opt.state[named[k]]["momentum_buffer"], parent_buf[k])
    for k in new:
        assert "momentum_buffer" not in opt.state[named[k]]
    # a kernel grown 1×1 → 3×3: the parent's buffer at the centre, zeros around it
    once = CHILDREN["preset 1c1 (identity shortcuts)"](parent)
    t1, _ = train.train(once, config(), tmp_path / "once.st", dataset=small)
    s1 = torch.load(train.state_path(tmp_path / "once.st"), weights_only=True)
    grown, _ = morph.morph_network(t1, morph.Preset.parse("3c1"))
    gm = grown.module()
    opt = torch.optim.SGD(gm.parameters(), lr=0.1, momentum=0.9)
    counts = growth.carry_momentum(opt, gm, s1)
    assert counts["padded"] == 6 and counts["fresh"] == 0
    k = "layer1.1.morph1.conv1.weight"
    buf = opt.state[dict(gm.named_parameters())[k]]["momentum_buffer"]
    before = s1["optimizer"]["state"][s1["param_names"].index(k)]["momentum_buffer"]
    assert torch.equal(buf[:, :, 1:2, 1:2], before)
    ring = buf.clone()
    ring[:, :, 1, 1] = 0
    assert not ring.any()  # zeros around the centre


def test_carry_refuses_states_that_cannot_be_carried(parent, small, tmp_path):
    state = torch.load(_parent_state(parent, small, tmp_path), weights_only=True)
    model = parent.module()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(UsageError, match="does not name its parameters"):
        growth.carry_momentum(opt, model, {k: v for k, v in state.items()
                                           if k != "param_names"})
    with pytest.raises(UsageError, match="no momentum"):
        growth.carry_momentum(opt, model, {**state, "optimizer": {"state": {}}})
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a state")
    with pytest.raises(UsageError, match="not a training state"):
        train.train(parent, config(), tmp_path / "x.st", dataset=small, from_state=bad)
    torch.save({"x": 1}, bad)
    with pytest.raises(UsageError, match="not a netmorph training state"):
        train.train(parent, config(), tmp_path / "x.st", dataset=small, from_state=bad)
    with pytest.raises(UsageError, match="no file"):
        train.train(parent, config(), tmp_path / "x.st", dataset=small,
                    from_state=tmp_path / "missing.pt")


def test_resume_with_groups_and_carried_state_is_bit_exact(parent, small, tmp_path):
    state_file = _parent_state(parent, small, tmp_path)
    child = CHILDREN["module A at a conv"](parent)
    cfg = config(epochs=2, new_lr_scale=0.1, new_warmup=3, new_weight_decay=0.0)
    ref, _ = train.train(child, cfg, tmp_path / "ref.st", dataset=small,
                         from_state=state_file)
    assert ref.history[-1]["carried_state"]["carried"] > 0
    out = tmp_path / "r.st"

    def interrupt(epoch, step, steps, loss, lr, ips):
        if epoch == 1 and step == 1:
            raise KeyboardInterrupt

    with pytest.raises(Exception, match="interrupted"):
        train.train(child, cfg, out, dataset=small, from_state=state_file,
                    hooks=train.TrainHooks(on_step=interrupt))
    resumed, _ = train.train(child, cfg, out, dataset=small, resume=True)
    for k in ref.tensors:
        assert torch.equal(ref.tensors[k], resumed.tensors[k]), k
    assert resumed.history[-1]["carried_state"] == ref.history[-1]["carried_state"]
    # carrying changes the result: the same run without the parent's momentum differs
    fresh, _ = train.train(child, cfg, tmp_path / "fresh.st", dataset=small)
    assert not torch.equal(fresh.tensors["conv1.weight"], ref.tensors["conv1.weight"])


def test_the_python_api_names_the_new_parameters_of_a_module():
    import netmorph

    parent = zoo.create("resnet20", seed=0).module()
    x = torch.randn(2, 3, 32, 32)
    child = netmorph.morph(parent, "1c1", example_input=x)
    new = netmorph.new_parameters(child)
    theirs = {k for k, _ in parent.named_parameters()}
    assert set(new) == {k for k, _ in child.named_parameters() if k not in theirs}
    assert all(p is dict(child.named_parameters())[k] for k, p in new.items())
    groups = netmorph.param_groups(child, 0.02, 1e-4, new_lr_scale=0.1, new_weight_decay=0.0)
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in groups] == [
        ("trained", 0.02, 1e-4), ("new", pytest.approx(0.002), 0.0)]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in new.values()}
    with pytest.raises(UsageError, match="no new parameters"):
        netmorph.param_groups(parent_module(),
                              0.1, 1e-4, new_lr_scale=0.5)
    with pytest.raises(TypeError, match="plain nn.Module"):
        netmorph.new_parameters(torch.nn.Conv2d(3, 3, 1))


def parent_module():
    return zoo.create("resnet20", seed=0).module()
