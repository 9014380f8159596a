"""The method contract: a continual-learning method is a small object with a fixed set of hooks.

A method never owns the training loop. :func:`cltk.run` (or a user's own loop) drives it like this::

    model = method.setup(model, stream)              # once; may wrap or replace the model
    for task in stream.tasks:
        method.before_task(task)
        opt = method.wrap_optimizer(method.make_optimizer(model.parameters()))   # per task
        for x, y, t in batches(method.training_data(task)):
            loss = method.loss(model, Batch(x, y, t))         # task loss + method.penalty(model)
            opt.zero_grad(); loss.backward()
            method.after_backward(model)
            opt.step()
            method.after_step(model)
        method.after_task(task)
        logits = method.eval_logits(model, x_test, t_test)    # evaluation of every task

``t`` is the per-sample task index (int64 [B]). The scenario decides which logits a sample may use
(van de Ven & Tolias 2019): task-IL uses only its own task's output units, class-IL the units of every task
seen so far, domain-IL the one shared head. :meth:`Method.active_mask` encodes that rule once for everyone.

Methods register themselves with :func:`register`; :func:`get_method` builds one by name, and
:func:`available_methods` lists them (every module of ``cltk.methods`` is imported on first use, so a new
method needs no edit anywhere else).
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cltk._config import ConfigChecks
from cltk.streams.base import SCENARIOS, Stream, Task

__all__ = ["Batch", "MethodConfig", "Method", "build_optimizer", "register", "get_method", "available_methods", "method_class"]


# dataclasses.field metadata key: a config field added after checkpoints were written without it is left out of the
# checkpoint fingerprint (cltk.loop) while it has its default value, so that those checkpoints still resume.
FINGERPRINT_OMIT_DEFAULT = "cltk_fingerprint_omit_default"


class Batch(NamedTuple):
    x: Tensor   # inputs [B, ...]
    y: Tensor   # int64 [B] targets in the stream's output space
    t: Tensor   # int64 [B] task index of each sample


@dataclass
class MethodConfig(ConfigChecks):
    """Fields every method shares: the optimizer a task is trained with.

    ``optimizer`` is ``"adam"`` or ``"sgd"``; ``lr`` its learning rate (so plain SGD with a 10x smaller rate is
    ``MethodConfig(optimizer="sgd", lr=...)``). Subclasses add their own fields and extend :meth:`validate`,
    which runs on construction and raises ``ValueError`` naming the field (helpers: :class:`cltk._config.ConfigChecks`).
    """

    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.0
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    def fingerprint_fields(self) -> dict[str, Any]:
        """The fields a checkpoint's fingerprint records: all, except those marked ``FINGERPRINT_OMIT_DEFAULT`` while
        they hold their default."""
        out = dict(vars(self))
        for f in dataclasses.fields(self):
            if f.metadata.get(FINGERPRINT_OMIT_DEFAULT) and getattr(self, f.name) == f.default:
                del out[f.name]
        return out

    def validate(self) -> None:
        self.check_choice("optimizer", ("adam", "sgd"))
        self.check_positive("lr")
        self.check_nonnegative("momentum")
        self.check_nonnegative("weight_decay")


def build_optimizer(config: MethodConfig, params: Union[list[Tensor], list[dict]]) -> torch.optim.Optimizer:
    """``config.optimizer`` (Adam or SGD at ``config.lr``, ``momentum``, ``weight_decay``) over ``params`` (tensors or
    param-group dicts), with torch's fused single-pass step where every parameter is a plain floating-point CPU or
    CUDA tensor (the default per-parameter loop costs several passes over each parameter and its state)."""
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(tensors) and all(type(p) in (Tensor, nn.Parameter) and p.is_floating_point()
                                  and p.device.type in ("cpu", "cuda") for p in tensors)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused or None)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                           fused=fused or None)


class Method:
    """Base class: plain fine-tuning behaviour for every hook. Subclasses override what they change.

    Class attributes: ``name`` (registry key), ``description`` (one line for ``cltk list``), ``paper``,
    ``scenarios`` (the scenarios it supports; :meth:`setup` raises ``ValueError`` for others) and ``Config``
    (its dataclass).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    scenarios: ClassVar[tuple[str, ...]] = SCENARIOS
    Config: ClassVar[type] = MethodConfig

    def __init__(self, config: Optional[MethodConfig] = None, **overrides: Any) -> None:
        if config is None:
            config = self.Config(**overrides)
        else:
            if not isinstance(config, self.Config):
                raise TypeError(f"{type(self).__name__}: config must be a {self.Config.__name__}, "
                                f"got {type(config).__name__}")
            if overrides:
                config = dataclasses.replace(config, **overrides)   # re-validates in __post_init__
        self.config = config
        self.model: Optional[nn.Module] = None
        self.stream: Optional[Stream] = None
        self.task: Optional[Task] = None          # the task being trained (None before the first)

    # -- lifecycle hooks -------------------------------------------------------------------------------
    def setup(self, model: nn.Module, stream: Stream) -> nn.Module:
        """Called once before the first task. Returns the model to train (the same one unless overridden)."""
        if stream.scenario not in self.scenarios:
            raise ValueError(f"method {self.name!r} does not support the {stream.scenario!r} scenario "
                             f"(supported: {', '.join(self.scenarios)})")
        self.model, self.stream = model, stream
        return model

    def before_task(self, task: Task) -> None:
        self.task = task

    def training_data(self, task: Task) -> tuple[Tensor, Tensor, Tensor]:
        """(x, y, t) the loop draws this task's minibatches from. Joint training returns every task so far."""
        s = task.train
        return s.x, s.y, torch.full_like(s.y, task.index)

    def make_optimizer(self, params: Iterable[Tensor]) -> torch.optim.Optimizer:
        return build_optimizer(self.config, [p for p in params if p.requires_grad])

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        return optimizer

    def forward(self, model: nn.Module, x: Tensor, t: Tensor) -> Tensor:
        """Logits over the stream's full output space, [B, stream.n_outputs]."""
        return model(x)

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        """The training loss of one minibatch: cross-entropy over the active units plus :meth:`penalty`."""
        loss = self.task_loss(self.forward(model, batch.x, batch.t), batch.y, batch.t)
        pen = self.penalty(model)
        return loss if pen is None else loss + pen

    def penalty(self, model: nn.Module) -> Optional[Tensor]:
        return None

    def after_backward(self, model: nn.Module) -> None:
        pass

    def after_step(self, model: nn.Module) -> None:
        pass

    def after_task(self, task: Task) -> None:
        pass

    def eval_logits(self, model: nn.Module, x: Tensor, t: Tensor) -> Tensor:
        """Logits used for evaluation (masked by the loop with :meth:`active_mask`)."""
        return self.forward(model, x, t)

    def added_parameters(self, task: int) -> Optional[int]:
        """How many trainable parameters task ``task`` adds to the model (after :meth:`setup`); None: not stated.

        Methods that change a shared network without adding to it (fine-tuning, penalties) return 0."""
        return None

    def state_dict(self) -> dict:
        """Everything the method needs to resume (tensors and plain Python values only)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    # -- shared helpers -------------------------------------------------------------------------------
    def active_mask(self, t: Tensor, upto: Optional[int] = None) -> Tensor:
        """Bool [B, n_outputs]: the logits sample b may use. ``upto``: last task seen (default: current task).

        task-IL: the units of the sample's own task; class-IL: the units of tasks 0..upto; domain-IL: all.
        """
        stream = self._need_stream()
        n = stream.n_outputs
        if stream.scenario == "task":
            table = torch.zeros(len(stream.tasks), n, dtype=torch.bool)
            for task in stream.tasks:
                table[task.index, list(task.output_units)] = True
            return table.to(t.device)[t]
        mask = torch.zeros(n, dtype=torch.bool, device=t.device)
        if stream.scenario == "class":
            last = self.task.index if upto is None and self.task is not None else (upto or 0)
            mask[list(stream.units_seen(last))] = True
        else:
            mask[:] = True
        return mask.expand(t.shape[0], n)

    def masked_logits(self, logits: Tensor, t: Tensor, upto: Optional[int] = None) -> Tensor:
        return logits.masked_fill(~self.active_mask(t, upto), float("-inf"))

    def task_loss(self, logits: Tensor, y: Tensor, t: Tensor) -> Tensor:
        return F.cross_entropy(self.masked_logits(logits, t), y)

    def _need_stream(self) -> Stream:
        if self.stream is None:
            raise RuntimeError(f"method {self.name!r}: call setup(model, stream) first")
        return self.stream


# -- registry --------------------------------------------------------------------------------------------
_REGISTRY: dict[str, type[Method]] = {}
_DISCOVERED = False


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` available by ``cls.name`` to :func:`get_method` and the CLI."""
    if not cls.name:
        raise ValueError(f"{cls.__name__}.name must be a non-empty string")
    if not (dataclasses.is_dataclass(cls.Config) and issubclass(cls.Config, MethodConfig)):
        raise TypeError(f"{cls.__name__}.Config must be a dataclass deriving from MethodConfig")
    other = _REGISTRY.get(cls.name)
    if other is not None and other is not cls and other.__qualname__ != cls.__qualname__:
        raise ValueError(f"method name {cls.name!r} is registered twice ({other.__qualname__}, {cls.__qualname__})")
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    import cltk.methods as pkg
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_") and info.name != "base":
            importlib.import_module(f"cltk.methods.{info.name}")
    _DISCOVERED = True


def available_methods() -> dict[str, type[Method]]:
    """Every registered method, by name, sorted."""
    _discover()
    return dict(sorted(_REGISTRY.items()))


def method_class(name: str) -> type[Method]:
    methods = available_methods()
    if name not in methods:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(methods)}")
    return methods[name]


def get_method(name: str, **config: Any) -> Method:
    """Build a registered method by name; keyword arguments go to its config dataclass."""
    cls = method_class(name)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise ValueError(f"method {name!r} has no config field(s) {', '.join(unknown)}; "
                         f"fields: {', '.join(sorted(fields))}")
    return cls(**config)
