"""Models for the continual-learning harness. Each exposes ``features(x)`` and a linear ``head``.

``model(x) == model.head(model.features(x))``; the head's output size is ``stream.n_outputs`` (the whole output space
of the scenario; the loop masks it). ``features`` is what the representational-forgetting readout
(:func:`cltk.metrics.readout_accuracy`) is trained on.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from cltk.streams.base import Stream

__all__ = ["MLP", "ConvNet", "MODELS", "build_model"]


class MLP(nn.Module):
    """Fully connected network, van de Ven & Tolias 2019 ("Three scenarios"): 2 hidden layers of 400 ReLU units.

    Args:
        input_shape: (C, H, W) of one image; it is flattened.
        n_outputs: size of the head.
        hidden: widths of the hidden layers.
    """

    def __init__(self, input_shape: Sequence[int], n_outputs: int, hidden: Sequence[int] = (400, 400)) -> None:
        super().__init__()
        if not hidden or any(int(h) < 1 for h in hidden):
            raise ValueError(f"MLP: hidden must be a non-empty list of positive widths, got {list(hidden)!r}")
        layers: list[nn.Module] = [nn.Flatten()]
        width = 1
        for s in input_shape:
            width *= int(s)
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        self.body = nn.Sequential(*layers)
        self.feature_dim = width
        self.head = nn.Linear(width, int(n_outputs))

    def features(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, hidden[-1]]."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class ConvNet(nn.Module):
    """A small convolutional network: two 3x3 conv layers (``channels``) each with ReLU and 2x2 max-pooling,
    then a fully connected layer of ``hidden`` ReLU units, then the head."""

    def __init__(self, input_shape: Sequence[int], n_outputs: int, channels: Sequence[int] = (32, 64),
                 hidden: int = 256) -> None:
        super().__init__()
        c, h, w = (int(s) for s in input_shape)
        layers: list[nn.Module] = []
        for out in channels:
            layers += [nn.Conv2d(c, int(out), 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c, h, w = int(out), h // 2, w // 2
        if h < 1 or w < 1:
            raise ValueError(f"ConvNet: input {tuple(input_shape)} is too small for {len(channels)} pooling layers")
        layers += [nn.Flatten(), nn.Linear(c * h * w, int(hidden)), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.feature_dim = int(hidden)
        self.head = nn.Linear(int(hidden), int(n_outputs))

    def features(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, hidden]."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _task_model(backbone: str) -> Callable[..., nn.Module]:
    def build(stream: Stream, seed: int = 0, **kwargs: Any) -> nn.Module:
        from cltk.nn.backbones import build_task_model
        return build_task_model(stream, backbone, seed=seed, **kwargs)
    build.takes_stream = True   # type: ignore[attr-defined]
    return build


def _minilm(stream: Stream, seed: int = 0, dropout: Optional[float] = None) -> nn.Module:
    from cltk.text.minilm import TextClassifier
    return TextClassifier.pretrained(stream.n_outputs, seed=seed, dropout=dropout)


_minilm.takes_stream = True   # type: ignore[attr-defined]


MODELS: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "mlp": (MLP, "fully connected, 2 hidden layers of 400 ReLU units (van de Ven & Tolias 2019)"),
    "convnet": (ConvNet, "2 conv layers (32, 64) with max-pooling, 256 hidden units"),
    "efficientnet-lite0": (_task_model("efficientnet_lite0"),
                           "EfficientNet-Lite0 with its ImageNet weights and one head per task (3-channel images)"),
    "mobilenet-v2": (_task_model("mobilenet_v2"),
                     "MobileNetV2 with one head per task; weights from weights_path=... (none ship offline)"),
    "minilm": (_minilm, "pretrained MiniLM-L6 sentence encoder (22M) + a linear head, for the text benchmarks"),
}


def build_model(name: str, stream: Stream, seed: Optional[int] = None, **kwargs: Any) -> nn.Module:
    """Build model ``name`` (a key of :data:`MODELS`) for ``stream``'s input shape and output space.

    ``seed`` (if given) seeds the initialisation with a local generator state, leaving the global RNG untouched.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(MODELS)}")
    cls = MODELS[name][0]
    if getattr(cls, "takes_stream", False):
        return cls(stream, seed=0 if seed is None else seed, **kwargs)
    if seed is None:
        return cls(stream.input_shape, stream.n_outputs, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(stream.input_shape, stream.n_outputs, **kwargs)
