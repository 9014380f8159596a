"""HAT and PackNet: property tests on the tiny real two-task MNIST-5k stream (task-IL)."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from cltk.methods import Batch, available_methods, get_method
from cltk.methods.hat import HATNet, _weight_views
from cltk.methods.packnet import PackNetNet
from tests.methods.conftest import accuracy, drive, tiny_mlp, tiny_stream

# "decided" attention: within this distance of 0 or 1 (float32 sigmoid at s_max)
DECIDED = 1e-6


@pytest.fixture(scope="module")
def stream():
    return tiny_stream("task")


def _spy_after_task(method, record):
    """Call ``record(method, task)`` right after ``method.after_task(task)``."""
    original = method.after_task

    def after_task(task):
        original(task)
        record(method, task)
    method.after_task = after_task


def _task_logits(method, model, stream, k):
    """Task ``k``'s test logits on its own output units (the only ones task-IL evaluates)."""
    model.eval()
    task = stream.tasks[k]
    with torch.no_grad():
        return method.eval_logits(model, task.test.x, torch.full_like(task.test.y, k))[:, list(task.output_units)]


# ------------------------------------------------------------------------------------------------------------ HAT

def test_both_methods_are_registered_with_metadata():
    methods = available_methods()
    for name in ("hat", "packnet"):
        cls = methods[name]
        assert cls.scenarios == ("task",) and cls.paper and cls.description


def test_fp32_attention_at_s_max_is_binary_outside_the_documented_band():
    e = torch.cat([torch.linspace(0.23, 6.0, 2001), -torch.linspace(0.23, 6.0, 2001)])
    a = torch.sigmoid(400.0 * e)
    assert torch.all((a == 0) | (a == 1))
    e = torch.cat([torch.linspace(0.035, 0.23, 2001), -torch.linspace(0.035, 0.23, 2001)])
    a = torch.sigmoid(400.0 * e)
    assert torch.all(torch.minimum(a, 1 - a) <= DECIDED)


def test_hat_masks_are_binary_at_s_max(stream):
    """Binary at s_max: a unit is *decided* when its float32 attention sigmoid(s_max e) is within 1e-6 of 0 or 1
    (|e| >= 0.035 for s_max = 400). After training, at least 95% of every task's units are decided."""
    m = get_method("hat", optimizer="adam", lr=1e-3)
    model = drive(m, tiny_mlp(stream), stream, iters=100)
    for k in range(2):
        a = torch.cat(m.unit_masks(k))
        decided = torch.minimum(a, 1 - a) <= DECIDED
        assert decided.float().mean().item() >= 0.95, f"task {k}: only {decided.float().mean():.3f} decided"
        assert 0 < (a > 0.5).sum() < a.numel()   # some units on, some off
        # the same embeddings at s = 1 are far from binary: binarity comes from s_max
        e = torch.cat([emb.weight[k] for emb in model.embeddings]).detach()
        soft = torch.sigmoid(e)
        assert (torch.minimum(soft, 1 - soft) <= DECIDED).float().mean().item() < 0.05


def test_hat_gradient_of_weights_used_by_task0_is_zero_during_task1(stream):
    m = get_method("hat", optimizer="adam", lr=1e-3)
    seen = {"checked": 0}
    before = {}

    def record(method, task):
        if task.index == 0:
            for p in method.used_weights():
                before[p] = p.detach().clone()
    _spy_after_task(m, record)

    def on_step(method, model, task, step):
        if task.index != 1:
            return
        n_used = n_free_moving = 0
        for p, used in method.used_weights().items():
            hard = used == 1.0
            n_used += int(hard.sum())
            assert torch.all(p.grad[hard] == 0)
            n_free_moving += int((p.grad[used == 0.0] != 0).sum())
        assert n_used > 0 and n_free_moving > 0
        seen["checked"] += 1
    model = drive(m, tiny_mlp(stream), stream, iters=40, on_step=on_step)
    assert seen["checked"] == 40
    # the weights task 0 uses with attention exactly 1 never moved while task 1 trained
    for p, used0 in _weight_views(model, m.unit_masks(0)).items():
        hard0 = used0 == 1.0
        assert hard0.any() and torch.equal(p.detach()[hard0], before[p][hard0])


def test_hat_s_anneals_from_inverse_s_max_to_s_max_each_epoch(stream):
    m = get_method("hat", optimizer="adam", lr=1e-3)
    scales = []
    drive(m, tiny_mlp(stream), stream, iters=14, batch_size=32,
          on_step=lambda method, model, task, step: scales.append((task.index, method.s)))
    n = math.ceil(len(stream.tasks[0].train) / 32)
    assert m.steps_per_cycle == math.ceil(len(stream.tasks[1].train) / 32)
    s0 = [s for k, s in scales if k == 0]
    assert s0[0] == pytest.approx(1 / 400) and s0[n - 1] == pytest.approx(400) and s0[n] == pytest.approx(1 / 400)
    assert all(b > a for a, b in zip(s0[: n - 1], s0[1:n]))
    m2 = get_method("hat", optimizer="adam", lr=1e-3, anneal_steps=5)
    scales.clear()
    drive(m2, tiny_mlp(stream), stream, iters=6,
          on_step=lambda method, model, task, step: scales.append(method.s))
    assert scales[:6] == pytest.approx([1 / 400 + (400 - 1 / 400) * b / 4 for b in range(5)] + [1 / 400])


def test_hat_embedding_gradient_compensation_and_clamp(stream):
    m = get_method("hat", thres_emb=0.5)
    model = m.setup(tiny_mlp(stream), stream)
    task = stream.tasks[0]
    m.before_task(task)
    x, y, t = m.training_data(task)
    for _ in range(3):   # third step of the cycle: s strictly between 1/s_max and s_max
        loss = m.loss(model, Batch(x[:32], y[:32], t[:32]))
        model.zero_grad(set_to_none=True)
        loss.backward()
        raw = [e.weight.grad.clone() for e in model.embeddings]
        m.after_backward(model)
        s = m.s
        for emb, g in zip(model.embeddings, raw):
            e = emb.weight.detach()
            expected = g * 400 / s * (torch.cosh(torch.clamp(s * e, -50, 50)) + 1) / (torch.cosh(e) + 1)
            torch.testing.assert_close(emb.weight.grad, expected)
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.05 * p.grad
        m.after_step(model)
        assert all(emb.weight.abs().max() <= 0.5 for emb in model.embeddings)
    assert 1 / 400 < s < 400


def test_hat_penalty_is_normalised_over_free_units(stream):
    m = get_method("hat", optimizer="adam", lr=1e-3)
    model = drive(m, tiny_mlp(stream), stream, iters=30)
    m.before_task(stream.tasks[1])
    m.s = 400.0
    a = [mk for mk in m.unit_masks(1)]
    prev = m.cumulative
    expected = 0.75 * sum((ai * (1 - pi)).sum() for ai, pi in zip(a, prev)) / sum((1 - pi).sum() for pi in prev)
    torch.testing.assert_close(m.penalty(model), expected)


def test_hat_state_dict_round_trip(stream):
    m = get_method("hat", optimizer="adam", lr=1e-3)
    model = drive(m, tiny_mlp(stream), stream, iters=20)
    m2 = get_method("hat", optimizer="adam", lr=1e-3)
    model2 = m2.setup(tiny_mlp(stream), stream)
    model2.load_state_dict(model.state_dict())
    m2.load_state_dict(copy.deepcopy(m.state_dict()))
    for k in range(2):
        assert torch.equal(_task_logits(m, model, stream, k), _task_logits(m2, model2, stream, k))
    task = stream.tasks[1]
    x, y, t = task.train.x[:32], task.train.y[:32], torch.full((32,), 1)
    grads = []
    for meth, mod in ((m, model), (m2, model2)):
        meth.before_task(task)
        mod.train()
        mod.zero_grad(set_to_none=True)
        meth.loss(mod, Batch(x, y, t)).backward()
        meth.after_backward(mod)
        grads.append([p.grad.clone() for p in mod.parameters()])
    assert all(torch.equal(g1, g2) for g1, g2 in zip(*grads))


@pytest.mark.parametrize("field,value", [("s_max", 0.0), ("s_max", -400.0), ("s_max", 1.0), ("c", -0.1),
                                         ("thres_emb", 0.0), ("thres_cosh", -1.0), ("anneal_steps", -1),
                                         ("anneal_steps", 2.5), ("weight_decay", 1e-4), ("clip_grad", -1.0)])
def test_hat_rejects_bad_config_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        get_method("hat", **{field: value})


def test_hat_rejects_unsupported_models_and_scenarios(stream):
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 12 * 12, stream.n_outputs))
    with pytest.raises(ValueError, match="Conv2d"):
        get_method("hat").setup(conv, stream)
    with pytest.raises(ValueError, match="nn.Sequential"):
        get_method("hat").setup(nn.Linear(196, stream.n_outputs), stream)
    no_relu = nn.Sequential(nn.Flatten(), nn.Linear(196, 8), nn.Tanh(), nn.Linear(8, stream.n_outputs))
    with pytest.raises(ValueError, match="Tanh"):
        get_method("hat").setup(no_relu, stream)
    for scenario in ("class", "domain"):
        s = tiny_stream(scenario)
        with pytest.raises(ValueError, match=f"does not support the '{scenario}' scenario"):
            get_method("hat").setup(tiny_mlp(s), s)


class _BodyHead(nn.Module):
    """An MLP split as ``head(body(x))``, the layout of ``cltk.models.MLP``."""

    def __init__(self, stream):
        super().__init__()
        mlp = tiny_mlp(stream)
        self.body, self.head = nn.Sequential(*list(mlp)[:-1]), mlp[-1]

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))


def test_hat_wraps_the_given_layers(stream):
    mlp = tiny_mlp(stream)
    net = get_method("hat").setup(mlp, stream)
    assert isinstance(net, HATNet) and net.linears[0] is mlp[1] and len(net.embeddings) == 2
    assert [e.embedding_dim for e in net.embeddings] == [64, 64]
    bh = _BodyHead(stream)
    net = get_method("hat").setup(bh, stream)
    assert net.linears[0] is bh.body[1] and net.linears[-1] is bh.head
    x, t = stream.tasks[0].test.x[:5], torch.zeros(5, dtype=torch.long)
    a = [mk for mk in net.unit_masks(t, 400.0)]
    with torch.no_grad():
        feats = net.features(x, t)
        torch.testing.assert_close(feats, torch.relu(bh.body[3](torch.relu(bh.body[1](x.flatten(1))) * a[0])) * a[1])
        torch.testing.assert_close(net(x, t), bh.head(feats))


# ------------------------------------------------------------------------------------------------------- PackNet

@pytest.mark.parametrize("opt", [dict(optimizer="adam", lr=1e-3), dict(optimizer="sgd", lr=1e-2, momentum=0.9)],
                         ids=["adam", "sgd-momentum"])
def test_packnet_old_weights_and_task0_outputs_do_not_change(stream, opt):
    m = get_method("packnet", **opt)
    snap = {}

    def record(method, task):
        if task.index == 0:
            model = method.model
            snap["params"] = {n: p.detach().clone() for n, p in model.named_parameters()}
            snap["owner"] = {n: o.clone() for n, o in method.owner.items()}
            snap["logits"] = _task_logits(method, model, stream, 0)
            snap["acc"] = accuracy(method, model, stream, 0, upto=0)
            model.train()
    _spy_after_task(m, record)
    steps = {"n": 0}

    def on_step(method, model, task, step):
        if task.index == 1:
            params = dict(model.named_parameters())
            for n, own in method.owner.items():
                assert torch.all(params[n].grad[own != 0] == 0)
            for n in method.biases:
                assert torch.all(params[n].grad == 0)
            steps["n"] += 1
    model = drive(m, tiny_mlp(stream), stream, iters=60, on_step=on_step)
    assert steps["n"] == 60
    params = dict(model.named_parameters())
    moved = 0
    for n, own0 in snap["owner"].items():
        kept = own0 == 1
        # half of each layer's free weights were pruned (set to 0), the rest belong to task 0
        assert int(kept.sum()) == own0.numel() - round(0.5 * own0.numel())
        assert torch.all(snap["params"][n][~kept] == 0)
        assert torch.equal(params[n][kept], snap["params"][n][kept])
        moved += int((params[n][~kept] != 0).sum())
    assert moved > 0   # task 1 did train the freed weights
    for n in m.biases:
        assert torch.equal(params[n], snap["params"][n])
    assert snap["acc"] > 0.75   # task 0 was learned (chance: 0.5), so unchanged outputs mean something
    assert torch.equal(_task_logits(m, model, stream, 0), snap["logits"])
    assert accuracy(m, model, stream, 0) == snap["acc"]
    # the last task keeps all the remaining weights (no pruning after the stream's last task)
    assert all(torch.all(o > 0) for o in m.owner.values())


def test_packnet_task_weights_use_only_earlier_owners(stream):
    m = get_method("packnet", optimizer="adam", lr=1e-3, prune_last=True, prune_schedule=(0.75, 0.5))
    model = drive(m, tiny_mlp(stream), stream, iters=20)
    for n, own in m.owner.items():
        n_all = own.numel()
        n1 = n_all - round(0.75 * n_all)
        free_after_0 = n_all - n1
        assert int((own == 1).sum()) == n1
        assert int((own == 2).sum()) == free_after_0 - round(0.5 * free_after_0)
    w0 = m.task_weights(model, 0)
    w1 = m.task_weights(model, 1)
    params = dict(model.named_parameters())
    for n, own in m.owner.items():
        assert torch.all(w0[n][own != 1] == 0) and torch.equal(w0[n][own == 1], params[n][own == 1])
        assert torch.all(w1[n][own == 0] == 0) and torch.equal(w1[n][own > 0], params[n][own > 0])
        assert torch.all(params[n][own == 0] == 0)   # pruned weights stay at 0


def test_packnet_retrains_half_the_task_steps_by_default(stream):
    m = get_method("packnet", optimizer="adam", lr=1e-3, prune_last=True)
    calls = []
    original = m.loss

    def counting_loss(model, batch):
        calls.append(m._retraining)
        return original(model, batch)
    m.loss = counting_loss
    drive(m, tiny_mlp(stream), stream, iters=30)
    assert calls.count(1) == 15 and calls.count(2) == 15 and calls.count(None) == 60
    m = get_method("packnet", optimizer="adam", lr=1e-3, retrain_steps=7)
    calls.clear()
    original = m.loss
    m.loss = counting_loss
    drive(m, tiny_mlp(stream), stream, iters=10)
    assert calls.count(1) == 7 and calls.count(2) == 0   # the last task is not pruned, so not re-trained


def test_packnet_state_dict_round_trip(stream):
    m = get_method("packnet", optimizer="adam", lr=1e-3)
    model = drive(m, tiny_mlp(stream), stream, iters=20)
    m2 = get_method("packnet", optimizer="adam", lr=1e-3)
    model2 = m2.setup(tiny_mlp(stream), stream)
    model2.load_state_dict(model.state_dict())
    m2.load_state_dict(copy.deepcopy(m.state_dict()))
    assert all(torch.equal(m.owner[n], m2.owner[n]) for n in m.owner) and m2.tasks_done == 2
    for k in range(2):
        assert torch.equal(_task_logits(m, model, stream, k), _task_logits(m2, model2, stream, k))
    bad = copy.deepcopy(m.state_dict())
    bad["owner"]["1.weight"] = bad["owner"]["1.weight"][:3]
    with pytest.raises(ValueError, match="owner masks"):
        m2.load_state_dict(bad)


@pytest.mark.parametrize("field,value", [("prune_fraction", 0.0), ("prune_fraction", 1.0), ("prune_fraction", -0.2),
                                         ("prune_fraction", 1.5), ("prune_schedule", (0.5, 1.0)),
                                         ("prune_schedule", ()), ("retrain_steps", -1), ("retrain_lr", 0.0),
                                         ("retrain_batch_size", -3), ("weight_decay", 5e-4),
                                         ("prune_last", "yes")])
def test_packnet_rejects_bad_config_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        get_method("packnet", **{field: value})


def test_packnet_wraps_a_model_with_features_so_old_tasks_see_their_weights(stream):
    m = get_method("packnet", optimizer="adam", lr=1e-3, prune_last=True)
    bh = _BodyHead(stream)
    model = drive(m, bh, stream, iters=20)
    assert isinstance(model, PackNetNet) and model.net is bh and model.features_take_task
    assert sorted(m.owner) == ["net.body.1.weight", "net.body.3.weight"] and m.head == ["net.head.weight",
                                                                                        "net.head.bias"]
    x = stream.tasks[0].test.x[:6]
    t = torch.tensor([0, 1, 0, 1, 1, 0])
    with torch.no_grad():
        feats = model.features(x, t)
        for k in range(2):
            w = m.task_weights(model, k)
            # the reference on the same rows: a matmul's rounding may depend on its number of rows (it does with
            # the AVX2 sgemm), so the rows of task k are multiplied as one batch on both sides
            h = torch.relu(nn.functional.linear(x[t == k].flatten(1), w["net.body.1.weight"], bh.body[1].bias))
            h = torch.relu(nn.functional.linear(h, w["net.body.3.weight"], bh.body[3].bias))
            assert torch.equal(feats[t == k], h)
        assert not torch.equal(feats[0], bh.features(x[:1])[0])   # task 0 does not see task 1's weights


def test_packnet_rejects_unsupported_models_and_scenarios(stream):
    bn = nn.Sequential(nn.Flatten(), nn.Linear(196, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, stream.n_outputs))
    with pytest.raises(ValueError, match="BatchNorm1d"):
        get_method("packnet").setup(bn, stream)
    with pytest.raises(ValueError, match="output layer"):
        get_method("packnet").setup(nn.Sequential(nn.Flatten(), nn.Linear(196, 3)), stream)
    for scenario in ("class", "domain"):
        s = tiny_stream(scenario)
        with pytest.raises(ValueError, match=f"does not support the '{scenario}' scenario"):
            get_method("packnet").setup(tiny_mlp(s), s)
