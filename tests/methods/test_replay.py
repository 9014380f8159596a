"""Replay methods (ER, A-GEM, DER++, iCaRL) and the reservoir buffer: property tests on the tiny real stream."""
import contextlib
import math

import pytest
import torch

from cltk.methods import available_methods, get_method
from cltk.methods._replay_buffer import ReservoirBuffer
from cltk.methods.agem import AGEM, project
from cltk.methods.base import Batch
from cltk.methods.icarl import herding_selection

from .conftest import accuracy, drive, tiny_mlp, tiny_stream


def _ids(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    y = torch.arange(start, stop)
    return y.float()[:, None], y, torch.zeros_like(y)


# ---------------------------------------------------------------------------------------------------- the buffer

def test_registered():
    assert {"er", "agem", "derpp", "icarl"} <= set(available_methods())


@pytest.mark.parametrize("name", ["er", "agem", "derpp"])
def test_buffer_never_exceeds_its_size_on_the_stream(name):
    stream = tiny_stream("class")
    method = get_method(name, buffer_size=50)
    seen = []

    def check(m, model, task, step):
        assert len(m.buffer) <= 50 and m.buffer.x.shape[0] == 50 and m.buffer.y.shape[0] == 50
        seen.append(m.buffer.n_seen)

    drive(method, tiny_mlp(stream), stream, iters=10, batch_size=32, on_step=check)
    assert seen == [32 * (i + 1) for i in range(20)]           # every example of every step was offered
    assert len(method.buffer) == 50
    # both tasks are in the memory (task 1's 320 examples out of 640 offered)
    assert set(method.buffer.t.tolist()) == {0, 1}


def test_reservoir_is_uniform():
    # N = 20 distinct examples offered in batches of 3 (so replacement draws cross batch boundaries and can collide
    # inside a batch) to a buffer of k = 5, over R = 2000 seeded runs. For a uniform reservoir each example is kept
    # with probability p = k / N = 0.25 in every run, so its count c_i ~ Binomial(R, p): mean 500, sd 19.4.
    # Bounds: every |z_i| < 5 (a two-sided miss chance of 6e-7 each); the sum of the N squared z-scores has mean
    # N and sd about sqrt(2 N), and we allow N + 6 sqrt(2 N); the mean count of the k examples of the fill phase
    # and of the last k examples differ by less than 5 sd of that difference. The common off-by-one (replacing
    # with probability k / n instead of k / (n + 1)) keeps fill-phase examples with probability 4/19 and later
    # ones with 5/19, a gap of 105 counts against a bound of 61, and a sum of squared z-scores near 110.
    # Runs are seeded, so the outcome is fixed; the bounds say how unlikely a failure of a correct reservoir is.
    n, k, runs = 20, 5, 2000
    counts = torch.zeros(n)
    for r in range(runs):
        buf = ReservoirBuffer(k, seed=r)
        for s in range(0, n, 3):
            buf.add(*_ids(s, min(s + 3, n)))
        assert len(buf) == k and buf.n_seen == n
        assert len(set(buf.y.tolist())) == k                        # distinct examples stay distinct
        counts[buf.y] += 1
    p = k / n
    sd = math.sqrt(runs * p * (1 - p))
    z = (counts - runs * p) / sd
    assert z.abs().max() < 5, z
    assert (z ** 2).sum() < n + 6 * math.sqrt(2 * n), (z ** 2).sum()
    assert abs(counts[:k].mean() - counts[-k:].mean()) < 5 * sd * math.sqrt(2 / k), counts


def test_buffer_fill_phase_and_size():
    buf = ReservoirBuffer(10, seed=0)
    buf.add(*_ids(0, 4))
    assert len(buf) == 4 and buf.y[:4].tolist() == [0, 1, 2, 3]
    buf.add(*_ids(4, 1000))
    assert len(buf) == 10 and buf.n_seen == 1000 and buf.x.shape[0] == 10
    assert buf.sample(100).y.shape[0] == 10                        # never more than it holds, without replacement
    assert len(set(buf.sample(100).index.tolist())) == 10


def test_balanced_sampling_balances():
    buf = ReservoirBuffer(120, seed=0)
    # imbalanced memory: 90 of class 0, 20 of class 1, 10 of class 2
    y = torch.tensor([0] * 90 + [1] * 20 + [2] * 10)
    buf.add(torch.randn(120, 3), y, torch.zeros_like(y))
    for n in (30, 31, 32, 60):
        got = torch.bincount(buf.sample(n, balanced=True).y, minlength=3)
        assert got.sum() == n and got.max() - got.min() <= 1, (n, got)
    # 20 per class needs draws with replacement for class 2 (10 stored) and none for the others
    s = buf.sample(60, balanced=True)
    for cls in (0, 1):
        idx = s.index[s.y == cls]
        assert idx.unique().numel() == idx.numel()
    assert s.index[s.y == 2].unique().numel() == 10
    # a uniform draw of the same memory is far from balanced (expected 22.5 of class 0 in 30)
    uniform = torch.bincount(buf.sample(30).y, minlength=3)
    assert uniform[0] > 15


def test_balanced_replay_on_the_stream():
    stream = tiny_stream("class")
    method = get_method("er", buffer_size=100, balanced=True)
    drive(method, tiny_mlp(stream), stream, iters=10, batch_size=32)
    got = torch.bincount(method.buffer.sample(64, balanced=True).y, minlength=4)
    assert got.tolist() == [16, 16, 16, 16]


def test_sample_before_task_only_draws_older_tasks():
    buf = ReservoirBuffer(20, seed=0)
    buf.add(torch.randn(10, 2), torch.arange(10), torch.tensor([0] * 5 + [1] * 5))
    assert set(buf.sample(20, before_task=1).t.tolist()) == {0}
    assert buf.sample(20, before_task=0) is None


def test_buffer_bad_arguments():
    with pytest.raises(ValueError, match="size"):
        ReservoirBuffer(0)
    buf = ReservoirBuffer(4, store_logits=True)
    with pytest.raises(ValueError, match="logits"):
        buf.add(*_ids(0, 2))
    with pytest.raises(ValueError, match="same length"):
        ReservoirBuffer(4).add(torch.zeros(3, 1), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long))


# ----------------------------------------------------------------------------------------------------------- ER

def test_er_keeps_task0_in_class_il_where_finetune_forgets():
    stream = tiny_stream("class")
    acc = {}
    for name in ("finetune", "er"):
        method = get_method(name)
        model = drive(method, tiny_mlp(stream), stream, iters=60, batch_size=32)
        acc[name] = accuracy(method, model, stream, 0)
    # seen: finetune 0.00, ER 0.99 on task 0 after task 1 (buffer 200, 60 steps of 32 per task)
    assert acc["er"] >= acc["finetune"] + 0.5, acc


def test_er_replays_with_the_replayed_tasks_mask():
    # in task-IL a replayed task-0 example must use task 0's units: its loss is finite and the step trains them
    stream = tiny_stream("task")
    method = get_method("er", replay_batch_size=16)
    model = drive(method, tiny_mlp(stream), stream, iters=5, batch_size=8)
    x, y, t = method.training_data(stream.tasks[1])
    loss = method.loss(model, Batch(x[:8], y[:8], t[:8]))
    assert torch.isfinite(loss)


# -------------------------------------------------------------------------------------------------------- A-GEM

class _RecordingAGEM(AGEM):
    """A-GEM that keeps, for each step, the gradient before and after projection and the reference gradient."""
    records: list

    def reference_gradient(self, model, params):
        self._ref = super().reference_gradient(model, params)
        return self._ref

    def after_backward(self, model):
        params = [p for p in model.parameters() if p.requires_grad]
        before = torch.cat([p.grad.reshape(-1) for p in params]).clone()
        self._ref = None
        super().after_backward(model)
        after = torch.cat([p.grad.reshape(-1) for p in params])
        self.records.append((self.task.index, before, after, self._ref))


def test_agem_projected_gradient_does_not_oppose_the_reference():
    stream = tiny_stream("class")
    method = _RecordingAGEM()
    method.records = []
    drive(method, tiny_mlp(stream), stream, iters=30, batch_size=32)
    projected = 0
    for task, before, after, ref in method.records:
        if task == 0:
            assert ref is None and torch.equal(before, after)      # no memory of earlier tasks yet
            continue
        assert ref is not None
        scale = float(after.norm() * ref.norm())
        assert float(torch.dot(after, ref)) >= -1e-5 * scale
        if float(torch.dot(before, ref)) < 0:
            projected += 1
            expected = before - torch.dot(before, ref) / torch.dot(ref, ref) * ref
            torch.testing.assert_close(after, expected)
            assert abs(float(torch.dot(after, ref))) <= 1e-5 * scale
        else:
            assert torch.equal(before, after)
    assert projected > 0                                            # the constraint was active at least once


@pytest.mark.parametrize("flushed", [False, True])
def test_agem_projection_survives_a_reference_gradient_whose_square_underflows(flushed):
    # A fitted memory gives g_ref near 1e-20; g_ref . g_ref (~1e-40) is denormal, and 0 with denormals flushed as
    # cltk.run trains: dividing by it turned every weight into NaN on Split Fashion-MNIST.
    from cltk.loop import flush_denormals

    gen = torch.Generator().manual_seed(0)
    g_ref = torch.randn(1000, generator=gen) * 1e-20
    g = 0.5 * torch.randn(1000, generator=gen) - g_ref * 1e20       # opposes the memory gradient
    with flush_denormals() if flushed else contextlib.nullcontext():
        assert float(torch.dot(g, g_ref)) < 0
        out = project(g, g_ref)
    g64, r64 = g.double(), g_ref.double()
    expected = g64 - torch.dot(g64, r64) / torch.dot(r64, r64) * r64
    assert out is not None and torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)
    u = r64 / r64.abs().max()
    assert abs(float(torch.dot(out.double(), u))) <= 1e-5 * float(out.double().norm() * u.norm())


def test_agem_projection_is_the_plain_formula_for_normal_sizes():
    gen = torch.Generator().manual_seed(1)
    g, g_ref = torch.randn(1000, generator=gen), torch.randn(1000, generator=gen)
    g = 0.5 * g - g_ref                                        # opposes g_ref: the constraint is active
    assert float(torch.dot(g, g_ref)) < 0
    assert torch.equal(project(g, g_ref), g - torch.dot(g, g_ref) / torch.dot(g_ref, g_ref) * g_ref)
    assert project(-g, g_ref) is None                          # no conflict: no change


# ------------------------------------------------------------------------------------------------------- DER++

def test_derpp_stores_the_logits_of_the_training_forward_pass():
    stream = tiny_stream("class")
    method = get_method("derpp", buffer_size=64)
    model = method.setup(tiny_mlp(stream), stream)
    method.before_task(stream.tasks[0])
    opt = method.make_optimizer(model.parameters())
    x, y, t = method.training_data(stream.tasks[0])
    with torch.no_grad():
        expected = model(x[:16])
    loss = method.loss(model, Batch(x[:16], y[:16], t[:16]))
    opt.zero_grad()
    loss.backward()
    method.after_backward(model)
    opt.step()
    method.after_step(model)
    torch.testing.assert_close(method.buffer.logits[:16], expected)
    torch.testing.assert_close(method.buffer.x[:16], x[:16])


def test_derpp_terms():
    stream = tiny_stream("class")
    method = get_method("derpp", alpha=0.0, beta=0.0)
    model = drive(method, tiny_mlp(stream), stream, iters=5)
    x, y, t = method.training_data(stream.tasks[1])
    b = Batch(x[:8], y[:8], t[:8])
    # with alpha = beta = 0 the loss is the plain masked cross-entropy
    torch.testing.assert_close(method.loss(model, b), method.task_loss(model(b.x), b.y, b.t))
    # the logit term alone: stored logits that differ from the model's add alpha * their mean squared gap
    method.config.alpha = 1.0
    method.buffer.logits[: len(method.buffer)] += 2.0
    state = method.buffer.generator.get_state()
    mem = method.buffer.sample(method.config.replay_size(8))
    method.buffer.generator.set_state(state)
    expected = method.task_loss(model(b.x), b.y, b.t) + torch.mean((model(mem.x) - mem.logits) ** 2)
    torch.testing.assert_close(method.loss(model, b), expected)


# ------------------------------------------------------------------------------------------------------- iCaRL

def _herding_direct(features: torch.Tensor, m: int) -> list[int]:
    """Algorithm 4 of Rebuffi et al. written out with Python floats, one candidate at a time."""
    f = features.double().tolist()
    d = len(f[0])
    mu = [sum(row[j] for row in f) / len(f) for j in range(d)]
    chosen, acc = [], [0.0] * d
    for k in range(1, min(m, len(f)) + 1):
        best, best_cost = None, float("inf")
        for i, row in enumerate(f):
            if i in chosen:
                continue
            cost = math.sqrt(sum((mu[j] - (row[j] + acc[j]) / k) ** 2 for j in range(d)))
            if cost < best_cost:
                best, best_cost = i, cost
        chosen.append(best)
        acc = [acc[j] + f[best][j] for j in range(d)]
    return chosen


def test_herding_matches_a_direct_implementation():
    g = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(30, 6, generator=g, dtype=torch.float64), dim=1)
    assert herding_selection(feats, 12).tolist() == _herding_direct(feats, 12)
    assert herding_selection(feats, 50).tolist() == _herding_direct(feats, 50)   # m > N: every example once
    assert sorted(herding_selection(feats, 50).tolist()) == list(range(30))


def test_icarl_exemplars_are_the_herding_selection_and_eval_is_nearest_mean():
    stream = tiny_stream("class")
    method = get_method("icarl", memory_size=40)
    model = drive(method, tiny_mlp(stream), stream, iters=20)
    model.eval()
    per_class = 40 // 4
    last = stream.tasks[1]
    for u in last.output_units:                   # selected by the final network, which no step changed since
        xs = last.train.x[last.train.y == u]
        expected = _herding_direct(method.features(model, xs), per_class)
        assert torch.equal(method.exemplars[u], xs[expected])
    for u in stream.tasks[0].output_units:        # cut to the first m of their selection
        assert method.exemplars[u].shape[0] == per_class
    assert sum(e.shape[0] for e in method.exemplars.values()) <= 40
    # nearest mean of exemplars: the argmax of eval_logits is the class whose normalised exemplar mean is closest
    x = torch.cat([t.test.x for t in stream.tasks])
    f = method.features(model, x)
    means = torch.stack([torch.nn.functional.normalize(method.features(model, method.exemplars[u]).mean(0), dim=0)
                         for u in range(4)])
    nearest = torch.cdist(f, means).argmin(1)
    logits = method.eval_logits(model, x, torch.zeros(x.shape[0], dtype=torch.long))
    assert torch.equal(logits.argmax(1), nearest)
    torch.testing.assert_close(logits, -torch.cdist(f, means).pow(2), rtol=1e-4, atol=1e-5)


def test_icarl_trains_on_exemplars_with_distillation():
    stream = tiny_stream("class")
    method = get_method("icarl", memory_size=40)
    model = drive(method, tiny_mlp(stream), stream, iters=20)
    x, y, t = method.training_data(stream.tasks[1])
    assert x.shape[0] == stream.tasks[1].train.x.shape[0] + 20       # + the task-0 exemplars (2 classes x 10)
    assert set(y[t == 0].tolist()) == {0, 1}
    # distillation: on the old units the target is the previous network's sigmoid output, so a network equal to
    # the previous one has the smallest loss there (the BCE of a logit against its own sigmoid is minimal)
    method.before_task(stream.tasks[1])
    b = Batch(x, y, t)
    logits = model(x)
    old = torch.sigmoid(method.old_model(x))
    seen = [0, 1, 2, 3]
    target = torch.nn.functional.one_hot(y, 4).float()
    target[:, :2] = old[:, :2]
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, seen], target[:, seen],
                                                                    reduction="sum") / x.shape[0]
    torch.testing.assert_close(method.loss(model, b), expected)


def test_icarl_class_il_beats_finetune_on_task0():
    stream = tiny_stream("class")
    acc = {}
    for name, kw in (("finetune", {}), ("icarl", {"memory_size": 200})):
        method = get_method(name, **kw)
        model = drive(method, tiny_mlp(stream), stream, iters=60, batch_size=32)
        acc[name] = accuracy(method, model, stream, 0)
    # seen: finetune 0.00, iCaRL 0.99
    assert acc["icarl"] >= acc["finetune"] + 0.5, acc


# ------------------------------------------------------------------------------------------------ configs, state

@pytest.mark.parametrize("name,field,value", [
    ("er", "buffer_size", 0), ("er", "buffer_size", 2.5), ("er", "replay_batch_size", -1), ("er", "seed", -3),
    ("er", "balanced", "yes"), ("agem", "buffer_size", 0), ("derpp", "buffer_size", 0),
    ("derpp", "alpha", -0.1), ("derpp", "beta", float("nan")), ("icarl", "memory_size", 0),
    ("icarl", "feature_layer", 3), ("icarl", "teacher_bn", "eval"),
])
def test_invalid_configs_name_the_field(name, field, value):
    with pytest.raises(ValueError, match=field):
        get_method(name, **{field: value})


def test_icarl_setup_errors():
    stream = tiny_stream("class")
    with pytest.raises(ValueError, match="memory_size"):
        get_method("icarl", memory_size=3).setup(tiny_mlp(stream), stream)    # 4 classes need >= 4 exemplars
    with pytest.raises(ValueError, match="feature_layer"):
        get_method("icarl", feature_layer="nope").setup(tiny_mlp(stream), stream)
    domain = tiny_stream("domain")
    with pytest.raises(ValueError, match="does not support the 'domain' scenario"):
        get_method("icarl").setup(tiny_mlp(domain), domain)


@pytest.mark.parametrize("name", ["er", "agem", "derpp"])
def test_state_dict_round_trip_restores_the_buffer(name):
    stream = tiny_stream("class")
    method = get_method(name, buffer_size=40, seed=5)
    drive(method, tiny_mlp(stream), stream, iters=8)
    state = method.state_dict()
    fresh = get_method(name, buffer_size=40, seed=5)
    fresh.load_state_dict(state)
    a, b = method.buffer, fresh.buffer
    assert a.n_seen == b.n_seen == 16 * 32 and len(b) == 40
    for f in ("x", "y", "t", "logits"):
        va, vb = getattr(a, f), getattr(b, f)
        assert (va is None and vb is None) or torch.equal(va, vb), f
    # the generator state travels too: the next draws and insertions are identical
    sa, sb = a.sample(17), b.sample(17)
    assert torch.equal(sa.index, sb.index)
    x, y, t = _ids(0, 100)
    xs = x.expand(-1, *a.x.shape[1:]) if a.x.dim() == 2 else x[:, :, None, None].expand(-1, *a.x.shape[1:])
    logits = torch.zeros(100, stream.n_outputs) if a.store_logits else None
    a.add(xs, y, t, logits)
    b.add(xs, y, t, logits)
    assert torch.equal(a.y, b.y) and torch.equal(a.x, b.x)
    # and the state is a copy: changing the method afterwards does not change a saved state
    assert not torch.equal(state["buffer"]["y"], a.y)


def test_icarl_state_dict_round_trip():
    stream = tiny_stream("class")
    method = get_method("icarl", memory_size=40)
    model = drive(method, tiny_mlp(stream), stream, iters=10)
    fresh = get_method("icarl", memory_size=40)
    fresh.setup(tiny_mlp(stream), stream)
    fresh.load_state_dict(method.state_dict())
    assert fresh.exemplars.keys() == method.exemplars.keys()
    for u in method.exemplars:
        assert torch.equal(fresh.exemplars[u], method.exemplars[u])
    assert torch.equal(fresh.class_means, method.class_means)
    x = stream.tasks[0].test.x
    torch.testing.assert_close(fresh.old_model(x), method.old_model(x))
    fresh.model.load_state_dict(model.state_dict())
    t = torch.zeros(x.shape[0], dtype=torch.long)
    torch.testing.assert_close(fresh.eval_logits(fresh.model, x, t), method.eval_logits(model, x, t))
