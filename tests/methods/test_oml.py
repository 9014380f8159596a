"""OML and MAML-Rep: meta-training on real Fashion-MNIST / MNIST-5k classes, then a frozen RLN on the stream."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import cltk
from cltk.meta.oml import MetaLearner, load_meta_checkpoint, meta_training_set, resolve_meta_dataset, split_model
from cltk.methods.base import get_method
from cltk.models import build_model
from cltk.streams.builders import make_stream
from tests.methods.conftest import accuracy, drive, tiny_mlp, tiny_stream

TINY = dict(meta_steps=3, meta_per_class=20)      # meta-training settings small enough for a unit test
METHODS = ("oml", "maml-rep")


def _params(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _learner(stream, mode: str, first_order: bool, hidden: int = 64, seed: int = 0):
    model = tiny_mlp(stream, hidden)
    rln, pln = split_model(model, 2)
    x, y = meta_training_set("fashion-mnist", stream, 30, seed)
    torch.manual_seed(seed)
    out = nn.Linear(hidden, 10)
    learner = MetaLearner(rln, nn.Sequential(*list(pln)[:-1]), out, x, y, mode=mode, n_way=3, support_per_class=5,
                          query_per_class=5, remember=15 if mode == "online" else 0, inner_lr=0.03, inner_steps=5,
                          meta_lr=1e-3, first_order=first_order, seed=seed)
    return model, rln, learner


# ---------------------------------------------------------------------------------------------------- the stream

@pytest.mark.parametrize("name", METHODS)
def test_rln_frozen_and_pln_trained_during_stream(name):
    stream = tiny_stream("task")
    method = get_method(name, **TINY)
    seen: dict = {}

    def on_step(m, model, task, step):
        if not seen:
            seen["rln"], seen["pln"] = _params(m.rln), _params(m.pln)

    drive(method, tiny_mlp(stream), stream, iters=10, on_step=on_step)
    assert all(not p.requires_grad for p in method.rln.parameters())
    offered = {id(p) for g in method.make_optimizer(method.model.parameters()).param_groups for p in g["params"]}
    assert offered == {id(p) for p in method.pln.parameters()}
    for before, after in zip(seen["rln"], method.rln.parameters()):
        assert torch.equal(before, after)
    assert any(not torch.equal(b, a) for b, a in zip(seen["pln"], method.pln.parameters()))


@pytest.mark.parametrize("name, scenario, model_name", [("oml", "task", "mlp"), ("maml-rep", "domain", "convnet"),
                                                        ("oml", "class", "convnet"), ("maml-rep", "class", "mlp")])
def test_tiny_run_gives_finite_accuracy(name, scenario, model_name):
    stream = tiny_stream(scenario)
    result = cltk.run(get_method(name, **TINY), model_name, stream, iters_per_task=10, batch_size=32,
                      progress=False, readout=False)
    acc = result.summary()["acc"]
    assert math.isfinite(acc) and 0.0 <= acc <= 1.0
    assert len(result.R) == len(stream.tasks)


def test_drive_learns_the_first_task():
    stream = tiny_stream("task")
    method = get_method("oml", **TINY)
    model = drive(method, tiny_mlp(stream), stream, iters=30)
    # task-IL with 2 classes per task: chance is 0.5; the PLN on the frozen RLN must learn the last task
    assert accuracy(method, model, stream, 1) > 0.8


# -------------------------------------------------------------------------------------------------- meta-training

@pytest.mark.parametrize("mode", ["online", "batch"])
@pytest.mark.parametrize("first_order", [False, True], ids=["second-order", "first-order"])
def test_meta_training_changes_rln_and_reduces_meta_loss(mode, first_order):
    stream = tiny_stream("class")
    _, rln, learner = _learner(stream, mode, first_order)
    held_out = [learner.sample(torch.Generator().manual_seed(100 + i)) for i in range(8)]
    before_loss = learner.evaluate(held_out)
    before_rln = _params(rln)
    losses = [learner.step() for _ in range(40)]
    after_loss = learner.evaluate(held_out)
    assert all(math.isfinite(v) for v in losses)
    assert any(not torch.equal(b, a) for b, a in zip(before_rln, rln.parameters()))
    assert after_loss < 0.9 * before_loss, (before_loss, after_loss)


@pytest.mark.parametrize("mode", ["online", "batch"])
def test_second_order_gradient_differs_from_first_order(mode):
    stream = tiny_stream("class")
    grads = {}
    for first_order in (False, True):
        _, rln, learner = _learner(stream, mode, first_order)
        ep = learner.sample(torch.Generator().manual_seed(7))
        g = torch.autograd.grad(learner.episode_loss(ep), list(rln.parameters()))
        grads[first_order] = torch.cat([t.flatten() for t in g])
    assert grads[True].abs().sum() > 0 and grads[False].abs().sum() > 0
    assert not torch.allclose(grads[True], grads[False], rtol=1e-3, atol=1e-6)


def test_meta_training_data_is_disjoint_from_the_stream():
    stream = tiny_stream("class")           # MNIST-5k classes 0-3
    assert resolve_meta_dataset("auto", stream) == ("fashion-mnist", None)
    assert resolve_meta_dataset("mnist5k", stream) == ("mnist5k", [4, 5, 6, 7, 8, 9])
    x, y = meta_training_set("mnist5k", stream, 10, 0)
    assert x.shape == (60, *stream.input_shape) and sorted(set(y.tolist())) == list(range(6))
    full = make_stream("split-mnist5k", "class", 0, train_per_task=20, test_per_task=10)
    with pytest.raises(ValueError, match="meta_dataset"):
        resolve_meta_dataset("mnist5k", full)
    fashion = make_stream("split-fashion-mnist", "task", 0, train_per_task=20, test_per_task=10)
    assert resolve_meta_dataset("auto", fashion) == ("mnist5k", None)


# ---------------------------------------------------------------------------------------------------- checkpoints

@pytest.mark.parametrize("name", METHODS)
def test_meta_checkpoint_roundtrip(name, tmp_path):
    stream = tiny_stream("task")
    path = str(tmp_path / "meta.pt")
    first = get_method(name, meta_checkpoint=path, **TINY)
    first.setup(tiny_mlp(stream), stream)
    assert len(first.meta_losses) == TINY["meta_steps"]
    torch.manual_seed(1)
    other = nn.Sequential(*[type(m)(m.in_features, m.out_features) if isinstance(m, nn.Linear) else m
                            for m in tiny_mlp(stream)])
    second = get_method(name, meta_checkpoint=path, **TINY)
    second.setup(other, stream)
    assert second.meta_losses == []                       # loaded, not meta-trained again
    for a, b in zip(first.rln.parameters(), second.rln.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(list(first.pln)[:-1], list(second.pln)[:-1]):
        for pa, pb in zip(a.parameters(), b.parameters()):
            assert torch.equal(pa, pb)
    assert second.meta_info["meta_steps"] == TINY["meta_steps"]


def test_meta_checkpoint_for_another_architecture_is_refused(tmp_path):
    stream = tiny_stream("task")
    path = str(tmp_path / "meta.pt")
    get_method("oml", meta_checkpoint=path, **TINY).setup(tiny_mlp(stream), stream)
    with pytest.raises(ValueError, match="another architecture"):
        get_method("oml", meta_checkpoint=path, **TINY).setup(tiny_mlp(stream, hidden=32), stream)
    with pytest.raises(ValueError, match="another architecture"):
        get_method("oml", meta_checkpoint=path, pln_layers=1, **TINY).setup(tiny_mlp(stream), stream)
    rln, pln = split_model(build_model("convnet", stream, seed=0), 2)
    with pytest.raises(ValueError, match="another architecture"):
        load_meta_checkpoint(path, rln, nn.Sequential(*list(pln)[:-1]))


# ----------------------------------------------------------------------------------------- splitting and config

def test_split_model_shares_parameters_and_composes():
    stream = tiny_stream("class")
    for name in ("mlp", "convnet"):
        model = build_model(name, stream, seed=0)
        rln, pln = split_model(model, 2)
        x = stream.tasks[0].test.x[:5]
        assert torch.equal(pln(rln(x)), model(x))
        assert sum(1 for m in pln if any(True for _ in m.parameters())) == 2
        ids = {id(p) for p in model.parameters()}
        assert {id(p) for p in [*rln.parameters(), *pln.parameters()]} == ids


class _TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(196, 8), nn.Linear(8, 4)

    def forward(self, x):
        return self.b(self.a(x.flatten(1)))


def test_models_it_cannot_split_are_refused():
    stream = tiny_stream("class")
    with pytest.raises(TypeError, match="cannot split a _TwoHeads"):
        get_method("oml", **TINY).setup(_TwoHeads(), stream)
    bn = nn.Sequential(nn.Flatten(), nn.Linear(196, 8), nn.BatchNorm1d(8), nn.Linear(8, 4))
    with pytest.raises(TypeError, match="BatchNorm1d holds buffers"):
        get_method("oml", **TINY).setup(bn, stream)
    with pytest.raises(ValueError, match="pln_layers"):
        get_method("maml-rep", pln_layers=3, **TINY).setup(tiny_mlp(stream), stream)


@pytest.mark.parametrize("name, field, value", [
    ("oml", "pln_layers", 0), ("oml", "meta_steps", -1), ("oml", "meta_lr", 0.0), ("oml", "inner_lr", -0.1),
    ("oml", "n_way", 0), ("oml", "support_per_class", 0), ("oml", "query_per_class", 1.5),
    ("oml", "first_order", 1), ("oml", "meta_dataset", ""), ("oml", "meta_checkpoint", None),
    ("oml", "remember", -1), ("oml", "meta_per_class", 9), ("oml", "meta_seed", -1),
    ("maml-rep", "inner_steps", 0), ("maml-rep", "meta_lr", float("nan")),
])
def test_config_validation_names_the_field(name, field, value):
    with pytest.raises(ValueError, match=field):
        get_method(name, **{field: value})


def test_unknown_meta_dataset_is_reported():
    stream = tiny_stream("class")
    with pytest.raises(ValueError, match="no-such-set"):
        get_method("oml", meta_dataset="no-such-set", **TINY).setup(tiny_mlp(stream), stream)


@pytest.mark.parametrize("name", METHODS)
def test_meta_training_is_deterministic_reused_and_leaves_the_global_rng(name):
    from cltk.meta import oml as meta
    stream = tiny_stream("class")
    meta._MEMO.clear()
    model = tiny_mlp(stream)
    rng = torch.get_rng_state()
    first = get_method(name, **TINY)
    first.setup(model, stream)
    assert torch.equal(torch.get_rng_state(), rng)
    assert first.meta_info["reused"] is False
    again = get_method(name, **TINY)
    again.setup(tiny_mlp(stream), stream)                 # same initial weights: the in-process result is reused
    assert again.meta_info["reused"] is True and again.meta_losses == first.meta_losses
    meta._MEMO.clear()
    fresh = get_method(name, **TINY)
    fresh.setup(tiny_mlp(stream), stream)                 # recomputed: the same weights
    assert fresh.meta_info["reused"] is False
    for a, b, c in zip(first.model.parameters(), again.model.parameters(), fresh.model.parameters()):
        assert torch.equal(a, b) and torch.equal(a, c)
    other = get_method(name, meta_seed=1, **TINY)
    other.setup(tiny_mlp(stream), stream)                 # another meta-training setting: not reused
    assert other.meta_info["reused"] is False
    assert any(not torch.equal(a, b) for a, b in zip(first.rln.parameters(), other.rln.parameters()))
