"""Attention meta-optimizer: the network, importance scores, protection, checkpoints, the optimizer protocol and the
method, on real MNIST-5k images."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cltk.meta import attention as am
from cltk.methods import get_method
from cltk.optim import AttentionMetaOptimizer
from tests.methods.conftest import drive, tiny_mlp, tiny_stream


@pytest.fixture(scope="module")
def stream():
    return tiny_stream("class")


def _net(n: int, task_dim: int = 16, **kw) -> am.AttentionMetaNet:
    torch.manual_seed(0)
    net = am.AttentionMetaNet(am.MetaNetConfig(n_tokens=n, task_dim=task_dim, d_model=8, heads=2, layers=1, ff=16,
                                               **kw))
    nn.init.normal_(net.out.weight, std=3.0)   # non-zero updates (the trained-from-zero init gives none)
    nn.init.normal_(net.out.bias, std=1.0)
    return net


def _support(stream, task=0, per_class=5):
    t = stream.tasks[task]
    idx = torch.cat([torch.nonzero(t.train.y == c).squeeze(1)[:per_class] for c in torch.unique(t.train.y)])
    return t.train.x[idx], t.train.y[idx]


def _head_grad(model, x, y):
    w = torch.cat([p.reshape(-1) for p in model[5].parameters()])
    loss = F.cross_entropy(model(x), y)
    g = torch.cat([q.reshape(-1) for q in torch.autograd.grad(loss, list(model[5].parameters()))])
    return w.detach(), g


def _checkpoint(model, path=None, task_dim=16, **kw):
    layout = am.controlled_layout(model, ["head"])
    net = _net(am.layout_numel(layout), task_dim, **kw)
    torch.manual_seed(1)
    enc = am.TaskEncoder(1, task_dim)
    if path is not None:
        am.save_meta_checkpoint(path, net, enc, layout, info={"shots": 5})
        return path
    return am.meta_checkpoint_state(net, enc, layout, info={"shots": 5})


# ------------------------------------------------------------------------------------------------ the network

def test_shapes_and_update_is_zero_at_init(stream):
    model = tiny_mlp(stream)
    x, y = _support(stream)
    w, g = _head_grad(model, x, y)
    net = am.AttentionMetaNet(am.MetaNetConfig(n_tokens=w.numel(), task_dim=16, d_model=8, heads=2, layers=2))
    z = am.TaskEncoder(1, 16).task_representation(x)
    assert z.shape == (16,)
    s = am.importance_scores(w, g, 0.4)
    delta = net(w, s, z)
    assert delta.shape == w.shape and torch.count_nonzero(delta) == 0
    net2 = _net(w.numel())
    d2 = net2(w, s, z)
    assert d2.shape == w.shape and torch.count_nonzero(d2) > 0
    with pytest.raises(ValueError, match="n_tokens"):
        net2(w[:-1], s[:-1], z)


def test_chunked_attention_equals_one_sdpa_call():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 1000, 8) for _ in range(3))
    ref = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(am.chunked_attention(q, k, v, 128), ref, rtol=1e-5, atol=1e-6)


def test_importance_zeroes_everything_below_the_top_fraction(stream):
    model = tiny_mlp(stream)
    w, g = _head_grad(model, *_support(stream))
    s = am.importance_scores(w, g, 0.4)
    raw = (w * g).abs()
    norm = (raw - raw.min()) / (raw.max() - raw.min())
    q = torch.quantile(norm, 0.6)
    assert torch.equal(s == 0, (norm < q) | (norm == 0))
    torch.testing.assert_close(s[norm >= q], norm[norm >= q])
    kept = int((s > 0).sum())
    assert abs(kept - 0.4 * w.numel()) <= 0.01 * w.numel() + 1   # the head of a 2-class task: few ties
    assert float(s.max()) == pytest.approx(1.0) and float(s.min()) == 0.0


def test_update_is_bounded_by_the_clamp(stream):
    model = tiny_mlp(stream)
    x, y = _support(stream)
    w, g = _head_grad(model, x, y)
    net = _net(w.numel(), clamp=0.01)
    delta = net(w, am.importance_scores(w, g, 0.4), torch.randn(16)).detach()
    assert float(delta.abs().max()) <= 0.01 + 1e-7
    assert float(delta.abs().max()) > 0.005      # the bound is reached, not trivially satisfied by tiny outputs


def test_protection_ramps_down_the_change_on_weights_important_before(stream):
    model = tiny_mlp(stream)
    w, g = _head_grad(model, *_support(stream))
    s = am.importance_scores(w, g, 0.4)
    z = torch.randn(16)
    net = _net(w.numel(), clamp=0.05, protect=1.0)
    memory = torch.zeros_like(w)
    memory[: w.numel() // 2] = 1.0                  # first half fully important on an earlier task
    memory[w.numel() // 2:: 2] = 0.5
    with torch.no_grad():
        free = net(w, s, z)
        guarded = net(w, s, z, memory)
    half = w.numel() // 2
    assert torch.count_nonzero(guarded[:half]) == 0 and torch.count_nonzero(free[:half]) > 0
    torch.testing.assert_close(guarded[half::2], 0.5 * free[half::2])
    torch.testing.assert_close(guarded[half + 1::2], free[half + 1::2])
    weak = _net(w.numel(), clamp=0.05, protect=0.5)
    weak_sum = float(weak(w, s, z, memory)[:half].detach().abs().sum())
    assert weak_sum == pytest.approx(0.5 * float(free[:half].abs().sum()), rel=1e-5)


def test_large_token_counts_never_form_an_n_by_n_score_matrix(monkeypatch):
    n, chunk = 6000, 512
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, *a, **kw):
        seen.append((q.shape[-2], k.shape[-2]))
        return real(q, k, v, *a, **kw)

    monkeypatch.setattr(am.F, "scaled_dot_product_attention", spy)
    net = am.AttentionMetaNet(am.MetaNetConfig(n_tokens=n, task_dim=4, d_model=8, heads=2, layers=2, chunk=chunk))
    with torch.no_grad():
        out = net(torch.randn(n), torch.rand(n), torch.randn(4))
    assert out.shape == (n,)
    assert len(seen) == 2 * -(-(n + 1) // chunk)
    assert all(qn <= chunk and kn == n + 1 for qn, kn in seen)


# ------------------------------------------------------------------------------------------------ checkpoints

def test_checkpoint_roundtrip(tmp_path, stream):
    model = tiny_mlp(stream)
    path = _checkpoint(model, tmp_path / "meta.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["meta.pt"]   # nothing temporary left behind
    raw = torch.load(path, weights_only=True)
    assert raw["layout"] == [["5.weight", [2 * 2, 64]], ["5.bias", [4]]]
    net, enc, layout, _, info = am.load_meta_checkpoint(path, am.controlled_layout(model, ["head"]))
    ref = _net(am.layout_numel(layout))
    x, y = _support(stream)
    w, g = _head_grad(model, x, y)
    s = am.importance_scores(w, g, 0.4)
    torch.manual_seed(1)
    z = am.TaskEncoder(1, 16).task_representation(x)
    torch.testing.assert_close(enc.task_representation(x), z, rtol=0, atol=0)
    torch.testing.assert_close(net(w, s, z), ref(w, s, z), rtol=0, atol=0)
    assert info["shots"] == 5


def test_checkpoint_for_another_layout_is_refused(tmp_path, stream):
    model = tiny_mlp(stream)
    path = _checkpoint(model, tmp_path / "meta.pt")
    wider = tiny_mlp(stream, hidden=32)
    with pytest.raises(ValueError, match="checkpoint: it was trained for the controlled-layer layout"):
        AttentionMetaOptimizer(list(wider[5].parameters()), path, model=wider)
    with pytest.raises(ValueError, match="layout"):
        am.load_meta_checkpoint(path, am.controlled_layout(wider, ["head"]))


def test_unknown_controlled_layer_is_refused(stream):
    model = tiny_mlp(stream)
    with pytest.raises(ValueError, match="layers: unknown controlled layer 'fc9'"):
        am.controlled_layout(model, ["fc9"])
    with pytest.raises(ValueError, match="layers: 'first-conv' needs an nn.Conv2d"):
        am.controlled_layout(model, ["first-conv"])
    with pytest.raises(ValueError, match="AttentionMetaConfig.layers"):
        get_method("attention-meta", layers=" , ")


def test_first_conv_is_supported():
    from cltk.models import ConvNet
    net = ConvNet((1, 14, 14), 4, channels=(4, 8), hidden=16)
    assert am.controlled_layout(net, ["first-conv", "head"]) == [
        ("body.0.weight", (4, 1, 3, 3)), ("body.0.bias", (4,)), ("head.weight", (4, 16)), ("head.bias", (4,))]


# ------------------------------------------------------------------------------------------------ the optimizer

def test_optimizer_protocol_and_state_dict_roundtrip(stream):
    model = tiny_mlp(stream)
    ckpt = _checkpoint(model)
    x, y = _support(stream)

    def make(m):
        return AttentionMetaOptimizer(list(m[5].parameters()), ckpt, model=m)

    a = make(model)
    assert len(a.param_groups) == 1 and len(a.param_groups[0]["params"]) == 2
    before = model[5].weight.detach().clone()
    loss = a.step((x, y))
    assert loss is not None and loss.dim() == 0
    assert not torch.equal(model[5].weight, before)
    a.step(lambda: (x, y))                           # a closure giving the support works too
    a.end_task()
    assert a.memory is not None and a.memory.shape == (4 * 64 + 4,)
    sd = a.state_dict()
    twin_model = tiny_mlp(stream)
    twin_model.load_state_dict(model.state_dict())
    b = make(twin_model)
    b.load_state_dict(sd)
    x1, y1 = _support(stream, task=1)
    for _ in range(3):
        a.step((x1, y1))
        b.step((x1, y1))
    torch.testing.assert_close(model[5].weight, twin_model[5].weight, rtol=0, atol=0)
    assert a.meta_state["steps"] == b.meta_state["steps"] == 5
    a.zero_grad()
    assert all(p.grad is None for p in model[5].parameters())


def test_optimizer_uses_p_grad_without_a_model(stream):
    model = tiny_mlp(stream)
    ckpt = _checkpoint(model)
    x, y = _support(stream)
    opt = AttentionMetaOptimizer(list(model[5].parameters()), ckpt)
    with pytest.raises(ValueError, match="needs .grad"):
        opt.step((x, y))
    F.cross_entropy(model(x), y).backward()
    before = model[5].bias.detach().clone()
    assert opt.step((x, y)) is None
    assert not torch.equal(model[5].bias, before)


def test_max_steps_stops_updates_until_the_next_task(stream):
    model = tiny_mlp(stream)
    opt = AttentionMetaOptimizer(list(model[5].parameters()), _checkpoint(model), model=model, max_steps=2)
    x, y = _support(stream)
    opt.step((x, y)); opt.step((x, y))
    w = model[5].weight.detach().clone()
    opt.step((x, y))
    assert torch.equal(model[5].weight, w)
    opt.end_task()
    opt.step((x, y))
    assert not torch.equal(model[5].weight, w)


def test_support_with_fewer_than_k_examples_of_a_class_is_refused(stream):
    model = tiny_mlp(stream)
    opt = AttentionMetaOptimizer(list(model[5].parameters()), _checkpoint(model), model=model, shots=5)
    x, y = _support(stream)
    keep = torch.cat([torch.nonzero(y == y[0]).squeeze(1), torch.nonzero(y != y[0]).squeeze(1)[:3]])
    with pytest.raises(ValueError, match=r"support has 3 example\(s\) of class \d, expected at least shots=5"):
        opt.step((x[keep], y[keep]))
    with pytest.raises(ValueError, match="shots must be an integer"):
        AttentionMetaOptimizer(list(model[5].parameters()), _checkpoint(model), shots=0)
    with pytest.raises(ValueError, match="support is required"):
        opt.step()


# ------------------------------------------------------------------------------------------------ the method

def test_config_errors_name_the_field():
    for field, bad in (("keep", 0.0), ("shots", 0), ("protect", 1.5), ("clamp", -1.0), ("inner_steps", 0),
                       ("d_model", 33), ("use_grad", 1)):
        with pytest.raises(ValueError, match=f"AttentionMetaConfig.{field}"):
            get_method("attention-meta", **{field: bad})


def test_method_updates_only_the_head_for_q_steps_and_protects_after_a_task(tmp_path, stream):
    torch.manual_seed(0)
    model = tiny_mlp(stream)
    ckpt = tmp_path / "meta.pt"
    method = get_method("attention-meta", checkpoint=str(ckpt), meta_episodes=2, encoder_steps=5, meta_pool=60,
                        inner_steps=3, d_model=8, n_layers=1)
    snapshots = []

    def on_step(m, net, task, step):
        snapshots.append((task.index, step, [p.detach().clone() for p in net.parameters()]))

    body_after_setup = []
    real_setup = method.setup

    def setup(net, s):
        out = real_setup(net, s)
        body_after_setup.extend(p.detach().clone() for p in out[:5].parameters())
        return out

    method.setup = setup
    drive(method, model, stream, iters=5, batch_size=16, on_step=on_step)
    assert ckpt.is_file() and method.history and len(method.history) == 2
    for p, q in zip(model[:5].parameters(), body_after_setup):
        assert torch.equal(p, q)                     # the body is frozen on the stream
    for t in range(2):
        steps = [s for s in snapshots if s[0] == t]
        heads = [s[2][-2] for s in steps]
        assert torch.equal(heads[2], heads[3]) and torch.equal(heads[3], heads[4])   # only Q = 3 steps act
        assert not torch.equal(heads[0], heads[2])
    assert method.memory is not None and float(method.memory.max()) == pytest.approx(1.0)
    # a second run loads the saved checkpoint instead of meta-training
    again = get_method("attention-meta", checkpoint=str(ckpt), meta_episodes=2, encoder_steps=5, inner_steps=3,
                       d_model=8, n_layers=1)
    again.setup(tiny_mlp(stream), stream)
    assert again.history == []
    assert again.state_dict()["memory"] is None


# ------------------------------------------------------------------------------------------------ streams

@pytest.mark.parametrize("bench_name,scenario,encoder_data", [
    ("split-mnist5k", "class", "fashion-mnist"),
    ("rotated-mnist5k", "domain", "fashion-mnist"),
    ("split-fashion-mnist", "class", "mnist5k"),
])
def test_meta_training_tasks_rebuild_the_stream_from_other_training_images(bench_name, scenario, encoder_data):
    from cltk.methods.attention_meta import meta_training_tasks
    from cltk.streams.builders import make_stream

    split = bench_name.startswith("split")
    kw = dict(classes_per_task=2) if split else {}
    s = make_stream(bench_name, scenario, 0, n_tasks=3, train_per_task=10 if split else 50, val_fraction=0.0,
                    test_per_task=20, **kw)                  # 5 images per class
    assert all(int(torch.bincount(t.train.y).max()) == 5 for t in s.tasks)
    tasks = meta_training_tasks(s, pool=40, seed=1000)
    assert len(tasks) == 3
    for (x, y, units), task in zip(tasks, s.tasks):
        assert x.shape[1:] == task.train.x.shape[1:] and 30 <= y.shape[0] <= 40
        assert units == task.output_units and set(y.tolist()) == set(task.train.y.tolist())
        # other images than the stream's support set
        assert not any(torch.equal(a, b) for a in x for b in task.train.x)
    assert am.other_dataset(bench_name) == encoder_data


def test_preset_compares_on_the_same_5_shot_stream():
    from cltk.methods import method_class
    from cltk.presets import get_preset
    from cltk.streams.builders import make_stream

    p = get_preset("attention-meta")
    assert p.methods[0] == "attention-meta" and {"finetune", "ewc", "si", "lwf", "er", "joint"} <= set(p.methods)
    for m in p.methods:
        method_class(m)
    s = make_stream(p.benchmark, p.scenarios[0], 0, **p.stream_kwargs)
    assert len(s.tasks) == 5 and all(torch.bincount(t.train.y)[list(t.output_units)].tolist() == [5, 5]
                                     for t in s.tasks)


def test_optimizer_controls_the_first_conv_and_the_head(stream):
    from cltk.models import ConvNet
    torch.manual_seed(0)
    net = ConvNet(stream.input_shape, stream.n_outputs, channels=(4, 8), hidden=16)
    layout = am.controlled_layout(net, ["first-conv", "head"])
    state = am.meta_checkpoint_state(_net(am.layout_numel(layout)), am.TaskEncoder(1, 16), layout,
                                     info={"shots": 5})
    params = [dict(net.named_parameters())[n] for n, _ in layout]
    other = [p.detach().clone() for n, p in net.named_parameters() if n not in {m for m, _ in layout}]
    before = [p.detach().clone() for p in params]
    AttentionMetaOptimizer(params, state, model=net).step(_support(stream))
    assert all(not torch.equal(p, b) for p, b in zip(params, before))
    assert all(torch.equal(p, b) for p, b in zip((p for n, p in net.named_parameters()
                                                  if n not in {m for m, _ in layout}), other))


def test_shuffled_units_give_each_episode_its_own_label_permutation(stream, monkeypatch):
    """With shuffle_units the targets and the masks of an episode move to the same random units."""
    model = tiny_mlp(stream)
    layout = am.controlled_layout(model, ["head"])
    net = am.AttentionMetaNet(am.MetaNetConfig(n_tokens=am.layout_numel(layout), task_dim=16, d_model=8, layers=1))
    tasks = [(t.train.x, t.train.y, t.output_units) for t in stream.tasks]
    seen = []
    real = am.inner_step

    def spy(net_, model_, layout_, w, x, y, mask, task, memory):
        seen.append((set(y.tolist()), set(torch.nonzero(mask).squeeze(1).tolist())))
        return real(net_, model_, layout_, w, x, y, mask, task, memory)

    monkeypatch.setattr(am, "inner_step", spy)
    for shuffle in (False, True):
        seen.clear()
        am.meta_train(net, model, layout, am.TaskEncoder(1, 16), tasks, "task", stream.n_outputs, episodes=6,
                      inner_steps=1, shots=5, query=5, shuffle_units=shuffle, seed=3)
        assert all(labels <= units for labels, units in seen)          # targets always inside the mask
        label_sets = {frozenset(labels) for labels, _ in seen}
        if shuffle:
            assert len(label_sets) > 2
        else:
            assert label_sets == {frozenset(t.output_units) for t in stream.tasks}


@pytest.mark.parametrize("name", ["maml-rep", "oml"])
def test_maml_style_baselines_run_on_the_preset_stream(name):
    """The preset's MAML-style baselines (a few meta-steps here) learn each 5-shot task in class-IL with their
    meta-learned representation frozen on the stream."""
    from cltk.loop import run
    from cltk.models import build_model
    from cltk.presets import get_preset
    from cltk.streams.builders import make_stream

    p = get_preset("attention-meta")
    assert {"maml-rep", "oml"} <= set(p.methods)
    s = make_stream(p.benchmark, "class", 0, **p.stream_kwargs)
    method = get_method(name, meta_steps=5, meta_per_class=20)
    net = build_model(p.model, s, seed=0)
    r = run(method, net, s, iters_per_task=p.iters, batch_size=p.batch_size, seed=0, readout=False, progress=False)
    frozen = [n for n, q in net.named_parameters() if not q.requires_grad]
    assert frozen, "the representation must be frozen on the stream"
    diag = [r.R[i][i] for i in range(len(s.tasks))]
    assert sum(diag) / len(diag) > 0.7, diag          # chance on a 2-digit task is 0.5
    assert r.R[-1][0] < r.R[0][0]                     # class-IL without replay forgets the first task
