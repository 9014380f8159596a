"""``Method.added_parameters``: the trainable parameters a task adds, counted from the pretrained EfficientNet-Lite0's
structure (real MNIST-5k / Fashion-MNIST tasks), and equal to what the task's optimizer trains."""
import pytest
from torch import nn

from cltk.methods import get_method
from cltk.nn.backbones import build_task_model
from cltk.streams.image_tasks import make_image_task_stream


@pytest.fixture(scope="module")
def stream():
    s = make_image_task_stream(seed=0, image_size=32, train_per_task=20, test_per_task=10)
    s.tasks = s.tasks[:2]
    return s


def _weights(backbone):
    """(out, fan_in, numel) of every conv / linear weight of the backbone but the unused ImageNet classifier."""
    out = []
    for name, m in backbone.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and not name.startswith("classifier"):
            out.append((m.weight.shape[0], m.weight[0].numel(), m.weight.numel()))
    return out


def _head(stream):
    n = len(stream.tasks[0].classes)
    return 1280 * n + n


@pytest.mark.parametrize("res", [(2, 2), (4, 4), (8, 8), (16, 16)])
def test_awm_adds_its_grids_and_a_head(stream, res):
    weights = _weights(build_task_model(stream).backbone)
    assert len(weights) == 49
    grids = sum(min(res[0], o) * min(res[1], f) for o, f, _ in weights)
    method = get_method("awm", resolution=res)
    method.setup(build_task_model(stream), stream)
    assert [method.added_parameters(t) for t in range(2)] == [grids + _head(stream)] * 2


def test_piggyback_linear_probe_separate_and_shared_network_methods(stream):
    backbone = build_task_model(stream).backbone
    masks = sum(n for _, _, n in _weights(backbone))
    features = sum(p.numel() for name, p in backbone.named_parameters() if not name.startswith("classifier"))
    expected = {"piggyback": masks + _head(stream), "linear-probe": _head(stream),
                "separate": features + _head(stream), "finetune": 0, "ewc": 0}
    for name, count in expected.items():
        method = get_method(name)
        method.setup(build_task_model(stream), stream)
        assert method.added_parameters(1) == count, name
    pig = get_method("piggyback")
    pig.setup(build_task_model(stream), stream)
    assert pig.mask_bits(0) == masks


@pytest.mark.parametrize("name", ["awm", "piggyback", "linear-probe"])
def test_the_task_optimizer_trains_exactly_the_added_parameters(stream, name):
    method = get_method(name)
    model = method.setup(build_task_model(stream), stream)
    for task in stream.tasks:
        method.before_task(task)
        opt = method.make_optimizer(model.parameters())
        trained = sum(p.numel() for g in opt.param_groups for p in g["params"])
        assert trained == method.added_parameters(task.index)


def test_a_method_that_does_not_say_returns_none(stream):
    assert get_method("si").added_parameters(0) is None


def test_separate_copies_of_a_multi_head_network_run_with_the_readout_switched_on(stream):
    """MultiHeadNet has no ``features``: the copies offer none, so the loop skips the readout instead of failing."""
    from cltk.loop import run
    r = run(get_method("separate"), build_task_model(stream), stream, iters_per_task=1, batch_size=8,
            readout=True, progress=False)
    assert r.readout == [] and len(r.R) == 2
