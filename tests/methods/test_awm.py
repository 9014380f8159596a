"""Property tests of AWM, Piggyback and the linear probe on real MNIST-5k / Fashion-MNIST images with the pretrained
EfficientNet-Lite0: identity at init, exact zero forgetting, which tensors get gradients, binary per-task masks,
config validation, state-dict round trip, regular and depthwise convolutions."""
import pytest
import torch
from torch import nn

from cltk.methods import get_method
from cltk.methods.awm import AWM, AWMConfig, AWMConv2d
from cltk.methods.piggyback import MaskedConv2d, PiggybackConfig
from cltk.nn.backbones import MultiHeadNet, TaskBatchNorm2d, build_task_model, is_depthwise
from cltk.streams.image_tasks import make_image_task_stream
from tests.methods.conftest import drive

ITERS = 3


@pytest.fixture(scope="module")
def stream():
    """Three real tasks (MNIST 0-4, MNIST 5-9, Fashion-MNIST 0-4), 32x32 RGB, 60 training / 40 test images each."""
    s = make_image_task_stream(seed=0, image_size=32, train_per_task=60, test_per_task=40)
    s.tasks = s.tasks[:3]
    return s


@pytest.fixture(scope="module")
def backbone_outputs(stream):
    """Eval-mode outputs of the unmodified pretrained model (same head seed) on every task's test images."""
    model = build_task_model(stream).eval()
    with torch.no_grad():
        return [model(task.test.x, task.index) for task in stream.tasks]


def _eval(model, task):
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(task.test.x, torch.full_like(task.test.y, task.index))
    model.train(was)
    return out


@pytest.mark.parametrize("name,config", [
    ("awm", {}), ("awm", {"fused": False}), ("awm", {"bn_affine": "task", "resolution": (8, 2)}),
    ("piggyback", {}), ("linear-probe", {}),
], ids=["awm", "awm-unfused", "awm-bn-affine", "piggyback", "linear-probe"])
def test_identity_at_init(stream, backbone_outputs, name, config):
    method = get_method(name, **config)
    model = method.setup(build_task_model(stream), stream).eval()
    for task, ref in zip(stream.tasks, backbone_outputs):
        with torch.no_grad():
            assert torch.equal(method.eval_logits(model, task.test.x, torch.full_like(task.test.y, task.index)), ref)


@pytest.mark.parametrize("name,config", [
    ("awm", {}), ("awm", {"bn_stats": "task", "bn_affine": "task", "exclude_first": True}),
    ("piggyback", {"lr": 1e-2}), ("piggyback", {"lr": 1e-2, "bn_stats": "task", "bn_momentum": 0.1}),
    ("linear-probe", {}),
], ids=["awm", "awm-bn-task", "piggyback", "piggyback-bn-task", "linear-probe"])
def test_zero_forgetting_is_exact(stream, name, config):
    """Each task's eval-mode outputs on its real test images are bit-identical after later tasks are learned."""
    method = get_method(name, **config)
    snaps = {}
    after_task = method.after_task

    def snapshot_after_task(task):   # what the loop would evaluate right after the task
        after_task(task)
        snaps[task.index] = [_eval(method.model, stream.tasks[i]) for i in range(task.index + 1)]

    method.after_task = snapshot_after_task
    model = drive(method, build_task_model(stream), stream, iters=ITERS, batch_size=16)
    final = [_eval(model, t) for t in stream.tasks]
    for i in range(3):
        for later in range(i + 1, 3):
            assert torch.equal(snaps[later][i], snaps[i][i]), (i, later)
        assert torch.equal(final[i], snaps[i][i])
    # the tasks did train: each task's outputs moved away from the untrained model's
    fresh = method.setup(build_task_model(stream), stream) if name == "linear-probe" else None
    if fresh is not None:
        assert not torch.equal(_eval(fresh, stream.tasks[1]), final[1])
    if name == "awm":
        assert all(torch.count_nonzero(m.deltas[t]) > 0 for m in method.layers for t in range(3))


@pytest.mark.parametrize("config", [{}, {"bn_affine": "task"}], ids=["bn-frozen-affine", "bn-affine-per-task"])
def test_awm_only_current_modulations_and_head_get_gradients(stream, config):
    arrived = []     # names of the parameters a backward pass delivered a gradient to

    class RecordingAWM(AWM):
        def setup(self, model, stream):
            model = super().setup(model, stream)
            for n, p in model.named_parameters():
                if p.requires_grad:
                    p.register_post_accumulate_grad_hook(lambda p, n=n: arrived.append(n))
            return model

    method = RecordingAWM(**config)
    seen = []

    def on_step(method, model, task, step):
        names = {id(p): n for n, p in model.named_parameters()}
        own = {names[id(p)] for p in method.task_parameters(task.index)}
        assert set(arrived) == own and len(arrived) == len(own), sorted(set(arrived) ^ own)[:5]
        assert all(torch.count_nonzero(m.deltas[task.index].grad) > 0 for m in method.layers)
        arrived.clear()
        seen.append(task.index)

    model = drive(method, build_task_model(stream), stream, iters=2, batch_size=16, on_step=on_step)
    assert seen == [0, 0, 1, 1, 2, 2]
    # the pretrained weights are buffers: nothing of the backbone but grids (and per-task BN affines) is a parameter
    names = [n for n, _ in model.backbone.named_parameters() if not n.startswith("classifier.")]
    allowed = (".deltas.", ".weights.", ".biases.") if config else (".deltas.",)
    assert names and all(any(a in n for a in allowed) for n in names)
    assert not any(p.requires_grad for p in model.backbone.classifier.parameters())


def test_awm_covers_regular_and_depthwise_convs_and_clamps_the_grid(stream):
    method = AWM(resolution=(64, 64))
    model = method.setup(build_task_model(stream), stream)
    convs = [m for m in method.layers if isinstance(m, AWMConv2d)]
    dw = [m for m in convs if m.groups > 1]
    regular = [m for m in convs if m.groups == 1]
    assert len(method.layers) == 49 and len(dw) == 16 and len(regular) == 33
    assert method.layer_names[0] == "stem_conv"
    for m in convs:   # grid capped at the (out, in*kh*kw) view of each weight
        out, fan_in = m.weight.shape[0], m.weight[0].numel()
        assert m.deltas[0].shape == (min(64, out), min(64, fan_in))
    assert model.backbone.blocks[1].dw_conv.deltas[0].shape == (64, 9)
    assert model.backbone.stem_conv.deltas[0].shape == (32, 27)
    assert sum(isinstance(m, TaskBatchNorm2d) for m in model.backbone.modules()) == 49
    # a depthwise grid changes that layer's output once it is non-zero
    layer = model.backbone.blocks[1].dw_conv
    x = torch.randn(2, layer.weight.shape[0], 8, 8)
    base = layer(x)
    with torch.no_grad():
        layer.deltas[0].add_(0.5)
    assert not torch.equal(layer(x), base)

    no_dw = AWM(exclude_depthwise=True, exclude_first=True)
    m2 = no_dw.setup(build_task_model(stream), stream)
    assert len(no_dw.layers) == 49 - 16 - 1 and "stem_conv" not in no_dw.layer_names
    assert isinstance(m2.backbone.blocks[1].dw_conv, nn.Conv2d) and is_depthwise(m2.backbone.blocks[1].dw_conv)
    assert not m2.backbone.stem_conv.weight.requires_grad


@pytest.mark.parametrize("name", ["awm", "piggyback"])
def test_identity_at_init_on_mobilenet_v2(stream, name):
    torch.manual_seed(0)      # no MobileNetV2 weights offline: the same random initialisation for both
    reference = build_task_model(stream, backbone="mobilenet_v2").eval()
    method = get_method(name)
    torch.manual_seed(0)
    model = method.setup(build_task_model(stream, backbone="mobilenet_v2"), stream).eval()
    x = stream.tasks[1].test.x
    with torch.no_grad():
        assert torch.equal(method.eval_logits(model, x, torch.full((x.shape[0],), 1)), reference(x, 1))
    dw = [n for n in method.layer_names if model.backbone.get_submodule(n).groups > 1]
    assert len(method.layer_names) == 52 and len(dw) == 17      # 52 convs of which 17 depthwise


def test_awm_fused_and_per_layer_paths_agree_bit_for_bit(stream):
    outs = {}
    for fused in (True, False):
        torch.manual_seed(0)
        method = AWM(fused=fused)
        model = drive(method, build_task_model(stream), stream, iters=2, batch_size=16)
        outs[fused] = [_eval(model, t) for t in stream.tasks]
    for a, b in zip(outs[True], outs[False]):
        assert torch.equal(a, b)


def test_piggyback_masks_are_binary_and_per_task(stream):
    method = get_method("piggyback", lr=1e-2)
    snaps = {}

    def on_step(method, model, task, step):
        if step == ITERS - 1:
            snaps[task.index] = [m.masks[task.index].detach().clone() for m in method.layers]

    drive(method, build_task_model(stream), stream, iters=ITERS, batch_size=16, on_step=on_step)
    assert all(isinstance(m, MaskedConv2d) for m in method.layers) and len(method.layers) == 49
    for t in range(3):
        assert all(torch.equal(m.masks[t], s) for m, s in zip(method.layers, snaps[t]))  # untouched later
        for m in method.layers:
            b = m.binary_mask(t)
            assert torch.equal(b, b.round()) and set(b.unique().tolist()) <= {0.0, 1.0}
        assert 0.0 < method.mask_density(t) < 1.0     # some entries switched off, some kept
    b0 = torch.cat([m.binary_mask(0).flatten() for m in method.layers])
    b1 = torch.cat([m.binary_mask(1).flatten() for m in method.layers])
    assert not torch.equal(b0, b1)
    # straight-through: the real-valued mask gets the gradient of the binarised one
    m = method.layers[3]
    m.task = 2
    m.masks[2].grad = None
    mask = m.binary_mask()
    mask.sum().backward()
    assert torch.equal(m.masks[2].grad, torch.ones_like(m.masks[2]))


def test_awm_task_statistics_are_recalibrated_at_the_end_of_the_task(stream):
    method = AWM(bn_stats="task", bn_recalibrate=2)
    pretrained = build_task_model(stream).backbone.head_bn.running_mean.clone()
    stored = {}
    after_task = method.after_task

    def spy(task):
        bn = method.model.backbone.head_bn
        before = bn.running_mean.clone()
        after_task(task)
        stored[task.index] = (before, bn.running_mean.clone(), bn.num_batches_tracked.clone())

    method.after_task = spy
    drive(method, build_task_model(stream), stream, iters=2, batch_size=16)
    for t in range(3):
        before, after, count = stored[t]
        n = len(stream.tasks[t].train)
        assert count[t] == min(2, -(-n // 64))                  # recomputed from (at most) 2 minibatches of 64
        assert not torch.equal(after[t], before[t]) and not torch.equal(after[t], pretrained)
        others = [u for u in range(3) if u != t]
        assert torch.equal(after[others], before[others])        # no other task's statistics moved


@pytest.mark.parametrize("name,config", [("awm", {"bn_affine": "task", "bn_stats": "task"}),
                                         ("piggyback", {"lr": 1e-2, "bn_stats": "task"})], ids=["awm", "piggyback"])
def test_state_dict_round_trip(stream, tmp_path, name, config):
    method = get_method(name, **config)
    model = drive(method, build_task_model(stream), stream, iters=2, batch_size=16)
    torch.save({"model": model.state_dict(), "method": method.state_dict()}, tmp_path / "awm.pt")
    saved = torch.load(tmp_path / "awm.pt", weights_only=True)
    method2 = get_method(name, **config)
    model2 = method2.setup(build_task_model(stream, seed=5), stream)
    model2.load_state_dict(saved["model"], strict=True)
    method2.load_state_dict(saved["method"])
    assert method2.task is stream.tasks[2]
    for t in stream.tasks:
        assert torch.equal(_eval(model2, t), _eval(model, t))
    with pytest.raises(ValueError, match="saved (modulated|masked) layers differ"):
        other = get_method(name, exclude_first=True)
        other.setup(build_task_model(stream), stream)
        other.load_state_dict(saved["method"])


@pytest.mark.parametrize("field,value", [
    ("resolution", (0, 4)), ("resolution", (4,)), ("resolution", (4, -1)), ("resolution", "4x4"),
    ("resolution", (True, 4)), ("resolution", (4.0, 4)), ("bn_stats", "batch"), ("bn_affine", "shared"),
    ("head_lr", 0.0), ("lr", -1.0), ("fused", 1), ("exclude_depthwise", "yes"), ("bn_momentum", 0.0),
    ("bn_momentum", 2.0), ("bn_recalibrate", -1), ("bn_recalibrate", 1.5),
])
def test_awm_config_validation(field, value):
    with pytest.raises(ValueError, match=rf"AWMConfig\.{field} must"):
        AWMConfig(**{field: value})


@pytest.mark.parametrize("field,value", [
    ("mask_init", 1e-3), ("threshold", -1.0), ("bn_stats", "x"), ("head_lr", -1e-3), ("exclude_first", None),
    ("bn_momentum", -0.1),
])
def test_piggyback_config_validation(field, value):
    with pytest.raises(ValueError, match=rf"PiggybackConfig\.{field} must"):
        PiggybackConfig(**{field: value})


def test_methods_refuse_other_models_and_scenarios(stream):
    with pytest.raises(TypeError, match="needs a cltk.nn.backbones.MultiHeadNet"):
        AWM().setup(nn.Linear(3, 3), stream)
    cls_stream = make_image_task_stream("class", seed=0, image_size=32, train_per_task=10, test_per_task=10)
    for name in ("awm", "piggyback", "linear-probe"):
        with pytest.raises(ValueError, match="does not support the 'class' scenario"):
            get_method(name).setup(build_task_model(cls_stream), cls_stream)
    assert isinstance(build_task_model(stream), MultiHeadNet)


def test_finetune_runs_on_the_task_model(stream):
    """Methods that train the whole network (fine-tuning, EWC) use the same model through ``model(x)``."""
    method = get_method("finetune")
    model = build_task_model(stream)
    before = model.backbone.stem_conv.weight.detach().clone()
    model = drive(method, model, stream, iters=1, batch_size=8)
    assert not torch.equal(model.backbone.stem_conv.weight, before)
    assert all(torch.isfinite(_eval(model, t)).all() for t in stream.tasks)
