"""Regularisation baselines (EWC, online EWC, SI, MAS, LwF): property tests on a tiny real two-task MNIST stream."""
import io
import os
import tempfile

import pytest
import torch
import torch.nn.functional as F

from cltk.methods import Batch, get_method
from cltk.methods._penalty import (MAX_CHUNK, PER_SAMPLE_GRAD_BYTES, _moment_loop, auto_chunk_size,
                                   merge_quadratic_terms, per_sample_grad_moment, quadratic_penalty,
                                   quadratic_penalty_ref, trainable_parameters)
from cltk.methods.ewc import estimate_fisher
from cltk.testing.tolerances import tol
from tests.methods.conftest import accuracy, drive, tiny_mlp, tiny_stream

QUADRATIC = {"ewc": {"lambda_": 1e8}, "online-ewc": {"lambda_": 1e8}, "si": {"c": 1.0}, "mas": {"lambda_": 1.0}}
ALL = dict(QUADRATIC, lwf={})


@pytest.fixture(scope="module")
def streams():
    return {s: tiny_stream(s) for s in ("task", "class", "domain")}


# ---- the penalty: 0 on the first task, > 0 after ---------------------------------------------------------------
@pytest.mark.parametrize("scenario", ["task", "class", "domain"])
@pytest.mark.parametrize("name", sorted(QUADRATIC))
def test_penalty_is_zero_on_first_task_and_positive_after(streams, name, scenario):
    stream = streams[scenario]
    m = get_method(name, **QUADRATIC[name])
    seen = {0: [], 1: []}

    def on_step(method, model, task, step):
        pen = method.penalty(model)
        seen[task.index].append(None if pen is None else pen.item())

    drive(m, tiny_mlp(stream), stream, iters=15, on_step=on_step)
    assert seen[0] == [None] * 15                      # no term before the first task ends: exactly no penalty
    assert all(v is not None and v > 0 for v in seen[1]), seen[1]


@pytest.mark.parametrize("name", sorted(QUADRATIC))
def test_penalty_in_loss_is_method_penalty(streams, name):
    stream = streams["task"]
    m = get_method(name, **QUADRATIC[name])
    model = drive(m, tiny_mlp(stream), stream, iters=10)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)                                   # move off the anchor
    task = stream.tasks[1]
    batch = Batch(task.train.x[:16], task.train.y[:16], torch.full((16,), 1))
    ce = m.task_loss(m.forward(model, batch.x, batch.t), batch.y, batch.t)
    torch.testing.assert_close(m.loss(model, batch), ce + m.penalty(model))


# ---- importances: shapes, non-negative, not all zero -----------------------------------------------------------
@pytest.mark.parametrize("name,kw", [("ewc", {"fisher": "true"}), ("ewc", {"fisher": "empirical"}),
                                     ("ewc", {"fisher": "predicted", "fisher_samples": 50}),
                                     ("online-ewc", {}), ("si", {}), ("mas", {}), ("mas", {"samples": 30})],
                         ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={x}" for k, x in v.items()))
def test_importance_is_nonnegative_with_parameter_shapes(streams, name, kw):
    stream = streams["class"]
    m = get_method(name, **kw)
    model = drive(m, tiny_mlp(stream), stream, iters=15)
    params = trainable_parameters(model)
    assert len(m.importances) == (2 if name == "ewc" else 1) == len(m.anchors)
    for w, a in zip(m.importances, m.anchors):
        assert [t.shape for t in w] == [p.shape for p in params] == [t.shape for t in a]
        assert all(torch.isfinite(t).all() and (t >= 0).all() for t in w)
        assert sum(t.sum().item() for t in w) > 0


def test_fisher_vmap_matches_per_sample_loop(streams):
    stream = streams["class"]
    m = get_method("ewc", fisher="empirical")
    model = drive(m, tiny_mlp(stream), stream, iters=15)
    task = stream.tasks[1]
    x, y = task.train.x[:40], task.train.y[:40]
    mask = m.active_mask(torch.full_like(y, 1), upto=1)

    def nll(logits, msk, label):
        return F.cross_entropy(logits.masked_fill(~msk, float("-inf")), label)

    fast = per_sample_grad_moment(model, nll, (x, mask, y), power=2, chunk_size=16)
    slow = [torch.zeros_like(p) for p in trainable_parameters(model)]
    _moment_loop(model, nll, (x, mask, y), 2, slow)
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b / 40, **tol(torch.float32))
    # and the empirical Fisher of the method is this same quantity over the whole training split
    full = estimate_fisher(m, model, task, "empirical")
    ref = [torch.zeros_like(p) for p in trainable_parameters(model)]
    mask = m.active_mask(torch.full_like(task.train.y, 1), upto=1)
    _moment_loop(model, nll, (task.train.x, mask, task.train.y), 2, ref)
    for a, b in zip(full, ref):
        torch.testing.assert_close(a, b / len(task.train), **tol(torch.float32))


def test_models_vmap_cannot_trace_fall_back_to_the_loop_with_a_warning():
    class Branchy(torch.nn.Module):      # data-dependent control flow: vmap cannot trace it
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)

        def forward(self, x):
            out = self.lin(x)
            return out if bool(out.sum() > 0) else -out

    torch.manual_seed(0)
    model, x, y = Branchy(), torch.randn(5, 4), torch.tensor([0, 2, 1, 1, 0])
    with pytest.warns(RuntimeWarning, match=r"vmap cannot trace Branchy \(RuntimeError: .*\); computing the 5 "
                                            r"per-sample gradients one backward pass at a time"):
        got = per_sample_grad_moment(model, F.cross_entropy, (x, y), power=2)
    ref = [torch.zeros_like(p) for p in model.parameters()]
    _moment_loop(model, F.cross_entropy, (x, y), 2, ref)
    assert sum(float(t.sum()) for t in ref) > 0
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b / 5, **tol(torch.float32))


def test_per_sample_grad_moment_takes_power_1_or_2():
    with pytest.raises(ValueError, match="per_sample_grad_moment: power must be 1 or 2, got 3"):
        per_sample_grad_moment(torch.nn.Linear(2, 2), F.cross_entropy, (torch.zeros(1, 2), torch.zeros(1).long()), 3)


def test_auto_chunk_size_bounds_one_pass_of_per_sample_gradients():
    def params(*numels):
        return [torch.empty(n, device="meta") for n in numels]

    assert auto_chunk_size(params(478_410)) == MAX_CHUNK == 256         # the 2x400 MLP: 1.9 MB per sample
    assert auto_chunk_size(params(4_000_000, 677_628)) == 28            # EfficientNet-Lite0 + heads: 18.7 MB
    assert auto_chunk_size(params(PER_SAMPLE_GRAD_BYTES // 4 // 3 + 1)) == 2
    assert auto_chunk_size(params(PER_SAMPLE_GRAD_BYTES // 4 + 1)) == 1  # never less than one sample
    assert auto_chunk_size([torch.empty(1000, dtype=torch.float64, device="meta")]) == MAX_CHUNK
    assert auto_chunk_size(params(PER_SAMPLE_GRAD_BYTES // 8 // 100)) == 200
    assert auto_chunk_size([torch.empty(PER_SAMPLE_GRAD_BYTES // 8 // 100, dtype=torch.float64,
                                        device="meta")]) == 100


@pytest.mark.parametrize("power", [2, 1])
def test_linear_stack_moments_equal_the_per_sample_gradients(streams, power):
    """The (delta^2)^T (x^2) path for plain linear stacks (|delta|^T |x| for MAS's absolute values) gives vmap's
    per-sample result, with a frozen layer and chunks; models it cannot treat exactly (a layer called twice, a
    convolution) are left to vmap."""
    from cltk.methods._penalty import _moment_linear, _moment_vmap
    from cltk.models import MLP

    stream = streams["task"]
    model = MLP(stream.input_shape, stream.n_outputs, hidden=(32, 16))
    m = get_method("ewc")
    drive(m, model, stream, iters=10)
    model.body[1].bias.requires_grad_(False)
    task = stream.tasks[1]
    x, y = task.train.x[:50], task.train.y[:50]
    mask = m.active_mask(torch.full_like(y, 1), upto=1)

    def nll(logits, msk, label):
        return F.cross_entropy(logits.masked_fill(~msk, float("-inf")), label)

    def squared_norm(logits, msk):      # MAS's
        return (logits * msk).pow(2).sum()

    loss, inputs = (nll, (x, mask, y)) if power == 2 else (squared_norm, (x, mask))
    model.eval()
    fast = [torch.zeros_like(p) for p in trainable_parameters(model)]
    assert _moment_linear(model, loss, inputs, power, 16, fast)
    ref = [torch.zeros_like(p) for p in trainable_parameters(model)]
    _moment_vmap(model, loss, inputs, power, 16, ref)
    assert len(fast) == 5 and sum(float(t.sum()) for t in ref) > 0
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, **tol(torch.float32))

    lin = torch.nn.Linear(4, 4)
    twice = torch.nn.Sequential(lin, torch.nn.ReLU(), lin)
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(8, 2))
    for net, xs in ((twice, torch.randn(6, 4)), (conv, torch.randn(6, 1, 4, 4))):
        out = [torch.zeros_like(p) for p in net.parameters()]
        assert not _moment_linear(net, lambda o, lab: F.cross_entropy(o[:, :2], lab), (xs, torch.zeros(6).long()),
                                  power, 4, out)
        assert all(not t.any() for t in out)


def test_true_fisher_samples_labels_from_the_model(streams):
    """On a model that is uncertain between its units, sampled labels differ from the true ones and from argmax."""
    stream = streams["task"]
    m = get_method("ewc")
    model = tiny_mlp(stream)
    m.setup(model, stream)
    m.before_task(stream.tasks[0])
    kinds = {k: estimate_fisher(m, model, stream.tasks[0], k) for k in ("true", "empirical", "predicted")}
    for a in ("true", "empirical", "predicted"):
        for b in ("true", "empirical", "predicted"):
            if a < b:
                assert not all(torch.equal(u, v) for u, v in zip(kinds[a], kinds[b])), (a, b)
    again = estimate_fisher(m, model, stream.tasks[0], "true")
    assert all(torch.equal(u, v) for u, v in zip(kinds["true"], again))   # seeded: reproducible


# ---- the foreach penalty against a per-parameter autograd loop --------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("n_terms", [1, 3])
def test_penalty_value_and_gradient_match_reference(streams, dtype, n_terms):
    model = tiny_mlp(streams["task"]).to(dtype)
    params = trainable_parameters(model)
    g = torch.Generator().manual_seed(1)
    terms = [(float(c), [torch.rand(p.shape, generator=g, dtype=dtype) for p in params],
              [p.detach() + torch.randn(p.shape, generator=g, dtype=dtype) * 0.1 for p in params])
             for c in (0.5, 3.0, 1e4)[:n_terms]]
    fast = quadratic_penalty(params, terms)
    ref = quadratic_penalty_ref(params, terms)
    torch.testing.assert_close(fast, ref, **tol(dtype))
    g_fast = torch.autograd.grad(fast * 1.7, params)
    g_ref = torch.autograd.grad(ref * 1.7, params)
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, **tol(dtype))


@pytest.mark.parametrize("name", sorted(QUADRATIC))
def test_method_penalty_gradient_matches_reference(streams, name):
    stream = streams["class"]
    m = get_method(name, **QUADRATIC[name])
    model = drive(m, tiny_mlp(stream), stream, iters=10)
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) * 0.05)
    params = trainable_parameters(model)
    fast, ref = m.penalty(model), quadratic_penalty_ref(params, m.penalty_terms())
    torch.testing.assert_close(fast, ref, **tol(torch.float32))
    for a, b in zip(torch.autograd.grad(fast, params), torch.autograd.grad(ref, params)):
        torch.testing.assert_close(a, b, **tol(torch.float32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_merged_terms_match_the_sum_of_terms(streams, dtype):
    """EWC's k terms merged into one term and a constant: same value and gradient as the k terms evaluated in
    float64, including elements whose importance is 0 in every term and parameters close to the merged anchor."""
    params = [p.detach().to(dtype).requires_grad_() for p in trainable_parameters(tiny_mlp(streams["task"]))]
    g = torch.Generator().manual_seed(3)
    terms = []
    for c in (0.5, 3.0, 1e4):
        w = [torch.rand(p.shape, generator=g, dtype=dtype) for p in params]
        w[0][0] = 0.0                                        # zero importance in every term: W == 0 there
        terms.append((c, w, [p.detach() + torch.randn(p.shape, generator=g, dtype=dtype) * 0.1 for p in params]))
    merged, const = merge_quadratic_terms(terms)
    with torch.no_grad():                                    # some parameters at the merged anchor itself
        params[1].copy_(merged[2][1])
    fast = quadratic_penalty(params, [merged]) + const
    p64 = [p.detach().double().requires_grad_() for p in params]
    exact = quadratic_penalty_ref(p64, [(c, [x.double() for x in w], [x.double() for x in a]) for c, w, a in terms])
    torch.testing.assert_close(fast.double(), exact, **tol(dtype))
    for a, b in zip(torch.autograd.grad(fast, params), torch.autograd.grad(exact, p64)):
        torch.testing.assert_close(a.double(), b, **tol(dtype))
    assert float(merged[1][0][0].abs().max()) == 0.0


def test_ewc_merged_penalty_follows_new_terms_and_zero_strength(streams):
    """The merged term is formed again when a term is added or the strength changes; strength 0 gives no penalty."""
    model = tiny_mlp(streams["task"])
    params = trainable_parameters(model)
    m = get_method("ewc", lambda_=3.0)
    g = torch.Generator().manual_seed(5)
    for k in range(4):
        m.importances.append([torch.rand(p.shape, generator=g) for p in params])
        m.anchors.append([p.detach() + torch.randn(p.shape, generator=g) * 0.1 for p in params])
        if k == 0:
            continue
        torch.testing.assert_close(m.penalty(model), quadratic_penalty_ref(params, m.penalty_terms()),
                                   **tol(torch.float32))
    m.config.lambda_ = 7.0
    torch.testing.assert_close(m.penalty(model), quadratic_penalty_ref(params, m.penalty_terms()), **tol(torch.float32))
    m.config.lambda_ = 0.0
    assert m.penalty(model) is None


def test_penalty_is_none_without_terms_or_with_zero_strength(streams):
    params = trainable_parameters(tiny_mlp(streams["task"]))
    assert quadratic_penalty(params, []) is None
    assert quadratic_penalty(params, [(0.0, [torch.ones_like(p) for p in params], [p + 1 for p in params])]) is None


# ---- what the methods store ------------------------------------------------------------------------------------
def test_online_ewc_decays_the_running_fisher(streams):
    stream = streams["task"]
    m = get_method("online-ewc", gamma=0.6, fisher="empirical")
    first = {}

    def on_step(method, model, task, step):
        if task.index == 1 and step == 0:
            first["F"] = [t.clone() for t in method.importances[0]]

    model = drive(m, tiny_mlp(stream), stream, iters=15, on_step=on_step)
    f1 = estimate_fisher(m, model, stream.tasks[1], "empirical")   # the model is unchanged since after_task
    for run, a, b in zip(m.importances[0], first["F"], f1):
        torch.testing.assert_close(run, 0.6 * a + b, **tol(torch.float32))
    assert m.term_coefficients() == [0.5 * 1e8 * 0.6]
    for a, p in zip(m.anchors[0], trainable_parameters(model)):
        assert torch.equal(a, p.detach())


def test_ewc_keeps_one_term_per_task_with_its_anchor(streams):
    stream = streams["task"]
    m = get_method("ewc")
    anchors = []
    model = drive(m, tiny_mlp(stream), stream, iters=10,
                  on_step=lambda mm, md, task, step: anchors.append([t.clone() for t in mm.anchors[0]])
                  if task.index == 1 and step == 0 else None)
    assert len(m.importances) == 2 and m.term_coefficients() == [0.5e7, 0.5e7]
    assert all(torch.equal(a, b) for a, b in zip(m.anchors[0], anchors[0]))
    assert all(torch.equal(a, p.detach()) for a, p in zip(m.anchors[1], trainable_parameters(model)))


def test_si_path_integral_uses_the_task_loss_gradient(streams):
    stream = streams["task"]
    m = get_method("si", c=5.0)
    model = drive(m, tiny_mlp(stream), stream, iters=10)
    task = stream.tasks[1]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02)
    m.before_task(task)
    batch = Batch(task.train.x[:32], task.train.y[:32], torch.full((32,), 1))
    params = trainable_parameters(model)
    ce = m.task_loss(m.forward(model, batch.x, batch.t), batch.y, batch.t)
    expected = torch.autograd.grad(ce, params)
    model.zero_grad()
    m.loss(model, batch).backward()
    assert m.penalty(model).item() > 0
    m.after_backward(model)
    for a, b in zip(m._grad, expected):
        torch.testing.assert_close(a, b, **tol(torch.float32))
    # one SGD-like step: the path integral gains -g * delta exactly
    before = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in params:
            p.sub_(0.1 * p.grad)
    m.after_step(model)
    for w, g, b, p in zip(m.path, expected, before, params):
        torch.testing.assert_close(w, -g * (p.detach() - b), **tol(torch.float32))


def test_mas_importance_is_output_norm_sensitivity(streams):
    stream = streams["task"]
    m = get_method("mas")
    model = drive(m, tiny_mlp(stream), stream, iters=10)
    task = stream.tasks[1]
    omega = m.importance(task)
    params = trainable_parameters(model)
    ref = [torch.zeros_like(p) for p in params]
    units = list(task.output_units)
    for i in range(len(task.train)):
        out = model(task.train.x[i:i + 1])[:, units]
        for r, g in zip(ref, torch.autograd.grad(out.pow(2).sum(), params)):
            r += g.abs()
    for a, b in zip(omega, ref):
        torch.testing.assert_close(a, b / len(task.train), **tol(torch.float32))


# ---- forgetting: a strong penalty keeps task 0 in task-IL -------------------------------------------------------
def test_regularisers_protect_the_first_task_in_task_il():
    """8 hidden units, Adam lr 1e-2, 200 steps a task: fine-tuning forgets task 0 (0.75 on this stream), each
    method keeps it (seen: ewc, online-ewc, mas, lwf 1.00; si 0.98)."""
    stream = tiny_stream("task")
    acc = {}
    for name in ["finetune", *sorted(ALL)]:
        m = get_method(name, lr=1e-2, **ALL.get(name, {}))
        model = drive(m, tiny_mlp(stream, hidden=8), stream, iters=200)
        acc[name] = accuracy(m, model, stream, 0)
    assert acc["finetune"] < 0.9, acc
    for name in ALL:
        assert acc[name] >= acc["finetune"] + 0.1, acc


# ---- LwF ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scenario", ["task", "class", "domain"])
def test_lwf_distillation_is_absent_on_first_task_and_positive_after(streams, scenario):
    stream = streams[scenario]
    m = get_method("lwf")
    seen = {0: [], 1: []}

    def on_step(method, model, task, step):
        idx = torch.arange(16)
        x = task.train.x[idx]
        d = method.distillation_loss(model, Batch(x, task.train.y[idx], torch.full((16,), task.index)))
        seen[task.index].append(None if d is None else d.item())
        groups[task.index] = method.distill_groups()

    groups = {}
    drive(m, tiny_mlp(stream), stream, iters=10, on_step=on_step)
    assert seen[0] == [None] * 10
    assert all(v is not None and v > 0 for v in seen[1])
    # while task 1 trains: task 0's head (task-IL), the units seen before (class-IL), the shared head (domain-IL)
    assert groups == {0: [], 1: [[0, 1]]}
    assert m.old_task == 1 and m.distill_groups() == {"task": [[0, 1], [2, 3]], "class": [[0, 1, 2, 3]],
                                                      "domain": [[0, 1]]}[scenario]


def test_lwf_distils_old_heads_only():
    stream = tiny_stream("task", n_tasks=3)
    m = get_method("lwf", temperature=3.0, alpha=0.5)
    model = drive(m, tiny_mlp(stream), stream, iters=5)
    m.old_task = 1                                         # as while task 2 trains
    m.old_model = m._frozen_copy()
    assert m.distill_groups() == [[0, 1], [2, 3]]
    task = stream.tasks[2]
    batch = Batch(task.train.x[:8], task.train.y[:8], torch.full((8,), 2))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.1)
        logits, old = model(batch.x), m.old_model(batch.x)
    ref = sum(-(torch.softmax(old[:, u] / 3, 1) * torch.log_softmax(logits[:, u] / 3, 1)).sum(1).mean()
              for u in ([0, 1], [2, 3]))
    torch.testing.assert_close(m.distillation_loss(model, batch), ref, **tol(torch.float32))
    ce = m.task_loss(logits, batch.y, batch.t)
    torch.testing.assert_close(m.loss(model, batch), ce + 0.5 * ref, **tol(torch.float32))
    cls = tiny_stream("class", n_tasks=3)
    mc = get_method("lwf")
    drive(mc, tiny_mlp(cls), cls, iters=2)
    mc.old_task = 1
    assert mc.distill_groups() == [[0, 1, 2, 3]]           # class-IL: one softmax over the units seen before


# ---- configs ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,field,value", [
    ("ewc", "lambda_", -1.0), ("ewc", "lambda_", float("inf")), ("ewc", "fisher", "exact"),
    ("ewc", "fisher_samples", 0), ("ewc", "fisher_samples", 2.5), ("ewc", "fisher_chunk", 0),
    ("online-ewc", "lambda_", -5.0), ("online-ewc", "gamma", 0.0), ("online-ewc", "gamma", 1.5),
    ("online-ewc", "gamma", -0.1), ("si", "c", -0.1), ("si", "xi", 0.0), ("si", "xi", -1e-3),
    ("mas", "lambda_", -1.0), ("mas", "samples", 0), ("mas", "chunk", -1),
    ("lwf", "temperature", 0.0), ("lwf", "temperature", -2.0), ("lwf", "alpha", -1.0), ("lwf", "teacher_bn", "eval"),
    ("si", "lr", 0.0),
])
def test_configs_reject_invalid_values_naming_the_field(name, field, value):
    with pytest.raises(ValueError, match=field):
        get_method(name, **{field: value})


def test_config_defaults_and_boundaries():
    assert get_method("online-ewc", gamma=1.0).config.gamma == 1.0
    assert get_method("ewc", lambda_=0.0).config.lambda_ == 0.0
    assert get_method("lwf").config.temperature == 2.0
    ewc, on, si, mas = (get_method(n).config for n in ("ewc", "online-ewc", "si", "mas"))
    assert (ewc.lambda_, ewc.fisher, on.lambda_, on.gamma) == (1e7, "true", 1e8, 0.8)
    assert (si.c, si.xi, mas.lambda_) == (1.0, 1e-3, 1.0)
    assert ewc.fisher_chunk is None and on.fisher_chunk is None and mas.chunk is None   # auto_chunk_size
    assert get_method("ewc", fisher_chunk=1).config.fisher_chunk == get_method("mas", chunk=1).config.chunk == 1


# ---- state_dict round trip -------------------------------------------------------------------------------------
def _only_tensors_and_plain(v) -> bool:
    if isinstance(v, dict):
        return all(isinstance(k, str) and _only_tensors_and_plain(x) for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return all(_only_tensors_and_plain(x) for x in v)
    return v is None or isinstance(v, (torch.Tensor, int, float, str, bool))


@pytest.mark.parametrize("name", sorted(ALL))
def test_state_dict_round_trip(streams, name):
    stream = streams["class"]
    m = get_method(name, **ALL[name])
    model = drive(m, tiny_mlp(stream), stream, iters=10)
    state = m.state_dict()
    assert _only_tensors_and_plain(state)
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)

    other_model = tiny_mlp(stream)
    other_model.load_state_dict(model.state_dict())
    other = get_method(name, **ALL[name])
    other.setup(other_model, stream)
    other.load_state_dict(state)
    other.before_task(stream.tasks[1])
    m.before_task(stream.tasks[1])
    with torch.no_grad():
        for a, b in zip(model.parameters(), other_model.parameters()):
            a.add_(0.03)
            b.add_(0.03)
    task = stream.tasks[1]
    batch = Batch(task.train.x[:16], task.train.y[:16], torch.full((16,), 1))
    assert torch.equal(m.loss(model, batch), other.loss(other_model, batch))
    assert m.loss(model, batch) > m.task_loss(m.forward(model, batch.x, batch.t), batch.y, batch.t)
    if name != "lwf":
        for wa, wb in zip(m.importances, other.importances):
            assert all(torch.equal(a, b) for a, b in zip(wa, wb))


def test_load_state_dict_rejects_mismatched_shapes(streams):
    stream = streams["task"]
    m = get_method("ewc")
    drive(m, tiny_mlp(stream), stream, iters=5)
    other = get_method("ewc")
    other.setup(tiny_mlp(stream, hidden=32), stream)
    with pytest.raises(ValueError, match=r"state\['importances'\]\[0\]\[0\]: expected shape"):
        other.load_state_dict(m.state_dict())


# ---- torch.distributed: ranks estimate on their shares, one all-reduce averages ---------------------------------
def _dist_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    from cltk.distributed import destroy

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    ok = False
    try:
        stream = tiny_stream("class")
        model = tiny_mlp(stream)
        ewc, mas = get_method("ewc", fisher="empirical"), get_method("mas")
        ewc.setup(model, stream)
        mas.setup(model, stream)
        fisher = estimate_fisher(ewc, model, stream.tasks[0], "empirical")
        omega = mas.importance(stream.tasks[0])
        torch.save({"fisher": fisher, "omega": omega}, os.path.join(out_dir, f"rank{rank}.pt"))
        ok = True
    finally:   # the ranks leave together: one leaving while the other still saves can abort in gloo's teardown
        destroy(wait_for_all=ok)


def test_distributed_fisher_and_mas_average_the_ranks():
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_dist_worker, args=(2, os.path.join(d, "init"), d), nprocs=2, join=True)
        ranks = [torch.load(os.path.join(d, f"rank{r}.pt"), weights_only=True) for r in range(2)]
    stream = tiny_stream("class")
    model = tiny_mlp(stream)
    ewc, mas = get_method("ewc"), get_method("mas")
    ewc.setup(model, stream)
    mas.setup(model, stream)
    assert len(stream.tasks[0].train) % 2 == 0        # equal shares: the mean of the ranks' means is the mean
    single = {"fisher": estimate_fisher(ewc, model, stream.tasks[0], "empirical"),
              "omega": mas.importance(stream.tasks[0])}
    for key in ("fisher", "omega"):
        for a, b, s in zip(ranks[0][key], ranks[1][key], single[key]):
            assert torch.equal(a, b)                   # every rank holds the same average
            torch.testing.assert_close(a, s, **tol(torch.float32))
