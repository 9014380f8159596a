"""lora, o-lora and migu-lora on the real MiniLM-L6 encoder and the real text-3tasks stream (small caps)."""
import math

import pytest
import torch
from torch import nn

from cltk.methods import get_method
from cltk.nn.lora import LoRALinear, apply_lora, lora_layers
from cltk.streams.text_tasks import make_text_stream
from cltk.text.minilm import TextClassifier
from tests.methods.conftest import accuracy, drive, tiny_mlp, tiny_stream


@pytest.fixture(scope="module")
def stream():
    return make_text_stream("text-3tasks", "task", 0, train_per_task=24, test_per_task=12, max_len=32)


def _model(stream):
    return TextClassifier.pretrained(stream.n_outputs, seed=0, dropout=0.0)


def _two_tasks(stream):
    from cltk.streams.base import Stream
    return Stream(name=stream.name, scenario=stream.scenario, tasks=stream.tasks[:2], n_outputs=stream.n_outputs,
                  input_shape=stream.input_shape, seed=stream.seed, meta=stream.meta)


# ------------------------------------------------------------------------------------------------ LoRALinear

def test_lora_linear_is_identity_at_init_and_merges():
    torch.manual_seed(0)
    base = nn.Linear(7, 5)
    x = torch.randn(3, 4, 7)
    ref = base(x)
    layer = LoRALinear(base, r=2, alpha=4.0)
    assert torch.equal(layer(x), ref)
    assert not base.weight.requires_grad and not base.bias.requires_grad
    assert layer.lora_A[0].shape == (2, 7) and layer.lora_B[0].shape == (5, 2)
    assert layer.lora_A[0].abs().max() <= 1 / math.sqrt(7) and layer.lora_A[0].abs().max() > 0
    with torch.no_grad():
        layer.lora_B[0].normal_()
    layer.add_adapter()
    with torch.no_grad():
        layer.lora_B[1].normal_()
    expected = x @ (base.weight + 2.0 * (layer.lora_B[0] @ layer.lora_A[0] + layer.lora_B[1] @ layer.lora_A[1])).T
    torch.testing.assert_close(layer(x), expected + base.bias, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.merged_weight(), base.weight + layer.delta_weight())


def test_apply_lora_errors_name_the_targets():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"targets \['q'\] match no nn.Linear .* named \['0', '2'\]"):
        apply_lora(model, ["q"])
    apply_lora(model, ["0"])
    with pytest.raises(ValueError, match="already has LoRA layers"):
        apply_lora(model, ["2"])


# ------------------------------------------------------------------------------------------------------ lora

def test_lora_is_identity_at_setup_and_trains_only_adapters_and_head(stream):
    model = _model(stream)
    x = stream.tasks[0].test.x
    with torch.no_grad():
        before = model.eval()(x)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    method = get_method("lora")
    model = method.setup(model, stream)
    layers = lora_layers(model)
    assert sorted({n.rsplit(".", 1)[-1] for n in layers}) == ["q", "v"] and len(layers) == 12
    with torch.no_grad():
        assert torch.equal(model.eval()(x), before)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias"} | {f"{n}.lora_{f}.0" for n in layers for f in "AB"}

    method = get_method("lora")
    model = drive(method, _model(stream), stream, iters=3, batch_size=8)   # base_state: the same pretrained model
    layers = lora_layers(model)
    after = model.state_dict()
    for k, v in base_state.items():
        k2 = k if k in after else k.replace(".weight", ".base.weight").replace(".bias", ".base.bias")
        if k.startswith("head."):
            assert not torch.equal(after[k2], v), k
        else:
            assert torch.equal(after[k2], v), k
    assert all(m.lora_B[0].abs().sum() > 0 for m in layers.values())


def test_lora_targets_are_configurable(stream):
    method = get_method("lora", targets="q,k,v,o,ffn_in,ffn_out", r=4)
    model = method.setup(_model(stream), stream)
    assert len(lora_layers(model)) == 36
    with pytest.raises(ValueError, match=r"targets \['query'\] match no nn.Linear"):
        get_method("lora", targets=("query",)).setup(_model(stream), stream)


def test_lora_on_a_plain_mlp_with_a_named_head():
    s = tiny_stream("task")
    method = get_method("lora", targets=("1", "3"), head="5", r=4, lr=1e-2)
    model = drive(method, tiny_mlp(s), s, iters=30)
    assert len(lora_layers(model)) == 2
    assert accuracy(method, model, s, 1) > 0.8


# ---------------------------------------------------------------------------------------------------- o-lora

def test_olora_penalty_zero_on_first_task_then_positive_and_old_adapters_frozen(stream):
    method = get_method("o-lora")
    seen = {0: [], 1: [], 2: []}
    snapshot = {}

    def check(m, model, task, step):
        layers = m.lora_modules
        assert all(layer.n_adapters == task.index + 1 for layer in layers)
        pen = m.penalty(model)
        seen[task.index].append(None if pen is None else pen.item())
        if task.index >= 1 and step == 0:
            snapshot[task.index] = [(layer.lora_A[0].clone(), layer.lora_B[0].clone()) for layer in layers]
        if task.index >= 1:
            for layer, (a0, b0) in zip(layers, snapshot[task.index]):
                assert torch.equal(layer.lora_A[0], a0) and torch.equal(layer.lora_B[0], b0)
                assert not layer.lora_A[0].requires_grad and layer.lora_A[task.index].requires_grad

    drive(method, _model(stream), stream, iters=2, batch_size=8, on_step=check)
    assert seen[0] == [None, None] and method.orthogonality_loss().item() > 0
    assert all(p > 0 for p in seen[1] + seen[2])


def test_olora_orthogonality_loss_formula():
    model = nn.Sequential(nn.Linear(4, 4))
    method = get_method("o-lora", targets=("0",), head="", r=2, lambda_orth=0.5)
    s = tiny_stream("task")
    method.setup(model, s)
    layer = method.lora_modules[0]
    method.before_task(s.tasks[0])
    method.before_task(s.tasks[1])
    with torch.no_grad():
        layer.lora_A[0].copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
        layer.lora_A[1].copy_(torch.tensor([[0, 0, 1.0, 0], [0.5, 0, 0, -2.0]]))
    assert method.orthogonality_loss().item() == 0.5
    assert method.penalty(model).item() == 0.25


def test_olora_state_dict_round_trip(stream):
    s = _two_tasks(stream)
    method = get_method("o-lora", r=4)
    model = drive(method, _model(s), s, iters=2, batch_size=8)
    saved_model, saved_method = model.state_dict(), method.state_dict()
    assert saved_method == {"n_adapters": 2}

    fresh = get_method("o-lora", r=4)
    model2 = fresh.setup(_model(s), s)
    fresh.load_state_dict(saved_method)
    model2.load_state_dict(saved_model)   # strict: the adapters were recreated
    x = s.tasks[1].test.x
    with torch.no_grad():
        assert torch.equal(model.eval()(x), model2.eval()(x))


def test_lora_state_dict_round_trip(stream):
    s = _two_tasks(stream)
    method = get_method("lora")
    model = drive(method, _model(s), s, iters=2, batch_size=8)
    fresh = get_method("lora")
    model2 = fresh.setup(_model(s), s)
    fresh.load_state_dict(method.state_dict())
    model2.load_state_dict(model.state_dict())
    x = s.tasks[0].test.x
    with torch.no_grad():
        assert torch.equal(model.eval()(x), model2.eval()(x))


# ------------------------------------------------------------------------------------------------- migu-lora

def test_migu_lora_masked_b_rows_do_not_move_with_sgd(stream):
    s = _two_tasks(stream)
    method = get_method("migu-lora", optimizer="sgd", lr=0.5)
    before = {}
    counts = {0: 0, 1: 0}

    def check(m, model, task, step):
        layers = m.lora_modules
        if task.index == 0:
            assert all(mk is None for mk in m.last_masks)
        else:
            for i, (layer, keep) in enumerate(zip(layers, m.last_masks)):
                b_old = before[i]
                n = keep.numel()
                assert keep.sum().item() == pytest.approx(0.3 * n, abs=1.0)
                # masked rows: exactly no update; kept rows: updated
                assert torch.equal(layer.lora_B[0][~keep], b_old[~keep])
                assert (layer.lora_B[0][keep] != b_old[keep]).any()
                assert torch.count_nonzero(layer.lora_B[0].grad[~keep]) == 0
        counts[task.index] += 1
        for i, layer in enumerate(m.lora_modules):
            before[i] = layer.lora_B[0].detach().clone()

    # ``before`` holds B after the previous step (the last step of task 0 for the first step of task 1)
    model = drive(method, _model(s), s, iters=3, batch_size=8, on_step=check)
    assert counts == {0: 3, 1: 3}
    assert all(not m._forward_hooks for m in model.modules())   # hooks removed after the last task


def test_migu_lora_magnitude_is_the_adapted_output(stream):
    s = _two_tasks(stream)
    method = get_method("migu-lora", mask_first_task=True)
    model = method.setup(_model(s), s)
    method.before_task(s.tasks[0])
    layer = method.lora_modules[0]
    with torch.no_grad():
        layer.lora_B[0].normal_()
    seen = []
    h = layer.register_forward_hook(lambda mod, args, out: seen.append((args[0].detach(), out.detach().clone())))
    model.train()
    model(s.tasks[0].train.x[:4])
    h.remove()
    inp, out = seen[0]
    torch.testing.assert_close(method.mags[0], out.abs().sum((0, 1)), rtol=1e-5, atol=1e-4)
    with torch.no_grad():
        base_mag = layer.base(inp).abs().sum((0, 1))   # the frozen layer alone: not what MIGU-LoRA measures
    assert (method.mags[0] - base_mag).abs().max() > 1e-2 * base_mag.abs().max()


# ----------------------------------------------------------------------------------------------------- configs

@pytest.mark.parametrize("name,field,value", [
    ("lora", "r", 0), ("lora", "alpha", 0.0), ("lora", "dropout", 1.0), ("lora", "targets", ()),
    ("lora", "targets", ("q", "")), ("lora", "head", None), ("lora", "lr", -1.0),
    ("o-lora", "lambda_orth", -0.1), ("o-lora", "lambda_l2", float("nan")),
    ("migu-lora", "threshold", 1.0), ("migu-lora", "mask_first_task", 1),
])
def test_config_errors_name_the_field(name, field, value):
    with pytest.raises(ValueError, match=field):
        get_method(name, **{field: value})


def test_defaults_follow_the_papers():
    lora, olora, migu = get_method("lora").config, get_method("o-lora").config, get_method("migu-lora").config
    assert (lora.r, lora.alpha, lora.targets, lora.lr) == (8, 8.0, ("q", "v"), 5e-4)
    assert (olora.lambda_orth, olora.lambda_l2, olora.lr) == (0.5, 0.0, 1e-3)
    assert (migu.threshold, migu.mask_first_task) == (0.7, False)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lora", "o-lora", "migu-lora"])
def test_adapters_learn_the_real_tasks(name):
    """50 steps of batch 16 per task on text-3tasks (default caps): every task above its majority-class rate at the
    end, and BBC topic (where the pretrained encoder is strong) above 0.8 (slow)."""
    s = make_text_stream("text-3tasks", "task", 0)
    method = get_method(name)
    model = drive(method, TextClassifier.pretrained(s.n_outputs, seed=0), s, iters=50, batch_size=16)
    majority = [max(task.test.y.bincount().tolist()) / len(task.test) for task in s.tasks]
    assert majority == [0.2, 0.5, 0.4]
    accs = [accuracy(method, model, s, j) for j in range(3)]
    assert all(a > m for a, m in zip(accs, majority)), accs
    assert accs[0] > 0.8, accs
