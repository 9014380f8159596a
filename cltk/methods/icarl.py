"""iCaRL (Rebuffi et al. 2017, "iCaRL: Incremental Classifier and Representation Learning").

* Memory: at most ``memory_size`` exemplars in all, ``m = memory_size // classes seen`` per class. After a task,
  the exemplar lists of old classes are cut to their first ``m`` entries and each new class gets ``m`` exemplars
  chosen by herding (the paper's Algorithm 4) on L2-normalised features::

      mu = mean_x phi(x);   p_k = argmin_x || mu - (phi(x) + sum_{j<k} phi(p_j)) / k ||   (x not chosen before)

* Training (Algorithm 3): the task's data plus every exemplar, with a sigmoid binary cross-entropy over the units
  seen so far; the targets are the labels' one-hot vectors on the new task's units and the previous network's
  sigmoid outputs on the old units (distillation).
* Evaluation (Algorithm 1): nearest mean of exemplars. :meth:`ICaRL.eval_logits` returns ``-||phi(x) - mu_c||^2``
  for every class ``c`` with exemplars (re-normalised class means of normalised features, recomputed after each
  task with the current network) and ``-inf`` for the other units; the argmax is the nearest mean.

The previous network (the distillation targets) is a frozen copy; ``teacher_bn`` chooses how its BatchNorm layers
normalise, as LwF's: ``"running"`` (default, inference mode) or ``"batch"`` (each minibatch with its own statistics,
as the training model; :func:`cltk.methods._task_bn.frozen_copy`).

The feature ``phi(x)`` is the input of the classifier layer: the module named ``feature_layer``, by default the
last ``nn.Linear`` of the model. Class-IL, and task-IL (trained the same way, evaluated on the task's own units);
domain-IL is not supported, since its tasks share output units and so classes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cltk.methods._task_bn import TEACHER_BN, frozen_copy
from cltk.methods.base import FINGERPRINT_OMIT_DEFAULT, Batch, Method, MethodConfig, register
from cltk.streams.base import Stream, Task

__all__ = ["ICaRL", "ICaRLConfig", "herding_selection"]

_FEATURE_CHUNK = 1024


def herding_selection(features: Tensor, m: int) -> Tensor:
    """Indices (int64 [min(m, N)]) of the herding selection from ``features`` [N, D], in selection order.

    ``features`` should already be L2-normalised (as iCaRL does); no index is chosen twice.
    """
    n = features.shape[0]
    k_max = min(m, n)
    mu = features.mean(0)
    running = torch.zeros_like(mu)
    taken = torch.zeros(n, dtype=torch.bool, device=features.device)
    chosen = []
    for k in range(1, k_max + 1):
        cost = (mu - (features + running) / k).norm(dim=1)
        cost[taken] = float("inf")
        i = int(cost.argmin())
        chosen.append(i)
        taken[i] = True
        running = running + features[i]
    return torch.tensor(chosen, dtype=torch.int64)


@dataclass
class ICaRLConfig(MethodConfig):
    """iCaRL. ``memory_size`` K = 2000 as in the paper (CIFAR-100, 100 classes); Buzzega et al. 2020 compare
    at 200/500/5120 on split-MNIST. ``feature_layer``: name (as in ``model.named_modules()``) of the classifier
    layer whose input is the feature vector; empty: the last ``nn.Linear``. The paper trains with SGD, lr 2.0,
    batch 128, weight decay 1e-5 for 70 epochs; here the optimizer fields are shared with the other methods.
    ``teacher_bn``: ``"running"`` or ``"batch"``, how the previous network's BatchNorm layers normalise (module
    docstring)."""

    memory_size: int = 2000
    feature_layer: str = ""
    teacher_bn: str = field(default="running", metadata={FINGERPRINT_OMIT_DEFAULT: True})

    def validate(self) -> None:
        super().validate()
        self.check_int("memory_size", 1)
        self.check_choice("teacher_bn", TEACHER_BN)
        if not isinstance(self.feature_layer, str):
            raise ValueError(f"ICaRLConfig.feature_layer must be a module name (str), got {self.feature_layer!r}")


@register
class ICaRL(Method):
    name = "icarl"
    description = "iCaRL: herding exemplars, sigmoid distillation, nearest-mean-of-exemplars classifier"
    paper = "Rebuffi et al. 2017, iCaRL: Incremental Classifier and Representation Learning (CVPR)"
    scenarios = ("class", "task")
    Config = ICaRLConfig

    def __init__(self, config: Optional[ICaRLConfig] = None, **overrides) -> None:
        super().__init__(config, **overrides)
        self.exemplars: dict[int, Tensor] = {}        # output unit -> exemplar inputs [m, ...], herding order
        self.exemplar_task: dict[int, int] = {}       # output unit -> task index
        self.class_means: Optional[Tensor] = None     # [n_outputs, D] unit-norm rows (zeros where no exemplars)
        self.has_mean: Optional[Tensor] = None        # bool [n_outputs]
        self.old_model: Optional[nn.Module] = None
        self._head: Optional[nn.Module] = None

    # -------------------------------------------------------------------------------------------------- setup
    def setup(self, model: nn.Module, stream: Stream) -> nn.Module:
        model = super().setup(model, stream)
        c = self.config
        if c.memory_size < stream.n_outputs:
            raise ValueError(f"ICaRLConfig.memory_size must be >= the number of classes ({stream.n_outputs}) so "
                             f"that every class keeps an exemplar, got {c.memory_size}")
        modules = dict(model.named_modules())
        if c.feature_layer:
            if c.feature_layer not in modules:
                raise ValueError(f"ICaRLConfig.feature_layer {c.feature_layer!r} is not a module of the model")
            self._head = modules[c.feature_layer]
        else:
            linears = [m for m in modules.values() if isinstance(m, nn.Linear)]
            if not linears:
                raise ValueError("ICaRLConfig.feature_layer: the model has no nn.Linear; name the classifier layer")
            self._head = linears[-1]
        return model

    @torch.no_grad()
    def features(self, model: nn.Module, x: Tensor) -> Tensor:
        """L2-normalised features [N, D]: the input of the classifier layer."""
        captured: list[Tensor] = []
        param = next(model.parameters(), None)
        dev = x.device if param is None else param.device   # exemplars and task data stay where the stream has them
        hook = self._head.register_forward_pre_hook(lambda mod, inp: captured.append(inp[0].detach()))
        try:
            for i in range(0, x.shape[0], _FEATURE_CHUNK):
                model(x[i:i + _FEATURE_CHUNK].to(dev))
        finally:
            hook.remove()
        if not captured:
            return torch.zeros(0, 0)
        return F.normalize(torch.cat([f.flatten(1) for f in captured]).float(), dim=1)

    # ------------------------------------------------------------------------------------------------ training
    def training_data(self, task: Task) -> tuple[Tensor, Tensor, Tensor]:
        x, y, t = super().training_data(task)
        old = [u for u in self.exemplars if u not in task.output_units]
        if not old:
            return x, y, t
        ex = torch.cat([self.exemplars[u] for u in old]).to(x.device, x.dtype)
        ey = torch.cat([torch.full((self.exemplars[u].shape[0],), u, dtype=torch.int64) for u in old]).to(y.device)
        et = torch.cat([torch.full((self.exemplars[u].shape[0],), self.exemplar_task[u], dtype=torch.int64)
                        for u in old]).to(t.device)
        return torch.cat([x, ex]), torch.cat([y, ey]), torch.cat([t, et])

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        stream = self._need_stream()
        current = self.task.index if self.task is not None else 0
        logits = self.forward(model, batch.x, batch.t)
        seen = list(stream.units_seen(current))
        target = F.one_hot(batch.y, stream.n_outputs).to(logits.dtype)
        if self.old_model is not None and current > 0:
            old_units = list(stream.units_seen(current - 1))
            with torch.no_grad():
                target[:, old_units] = torch.sigmoid(self.old_model(batch.x)[:, old_units].to(logits.dtype))
        # the paper's loss: a sum over the classes seen, averaged over the minibatch
        loss = F.binary_cross_entropy_with_logits(logits[:, seen], target[:, seen], reduction="sum")
        loss = loss / max(int(batch.y.shape[0]), 1)
        pen = self.penalty(model)
        return loss if pen is None else loss + pen

    # ------------------------------------------------------------------------------------------- after a task
    def after_task(self, task: Task) -> None:
        model, stream = self.model, self._need_stream()
        was_training = model.training
        model.eval()
        try:
            per_class = self.config.memory_size // len(stream.units_seen(task.index))
            for u in self.exemplars:                                        # Algorithm 5: keep the first m
                self.exemplars[u] = self.exemplars[u][:per_class]
            for u in task.output_units:                                     # Algorithm 4: herding
                xs = task.train.x[task.train.y == u]
                if xs.shape[0] == 0:
                    continue
                idx = herding_selection(self.features(model, xs), per_class)
                self.exemplars[u] = xs[idx.to(xs.device)].clone()
                self.exemplar_task[u] = task.index
            self._update_class_means(model)
        finally:
            model.train(was_training)
        self.old_model = frozen_copy(model, self.config.teacher_bn)

    def _update_class_means(self, model: nn.Module) -> None:
        n = self._need_stream().n_outputs
        means, has = None, torch.zeros(n, dtype=torch.bool)
        for u, xs in self.exemplars.items():
            f = self.features(model, xs)
            if means is None:
                means = torch.zeros(n, f.shape[1], dtype=f.dtype, device=f.device)
            means[u] = F.normalize(f.mean(0), dim=0)
            has[u] = True
        self.class_means, self.has_mean = means, has

    # ---------------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def eval_logits(self, model: nn.Module, x: Tensor, t: Tensor) -> Tensor:
        """Nearest mean of exemplars: ``-||phi(x) - mu_c||^2`` per class with exemplars, ``-inf`` elsewhere
        ([B, n_outputs]). Before the first task ends (no means yet) the network's own logits."""
        if self.class_means is None:
            return self.forward(model, x, t)
        f = self.features(model, x).to(self.class_means.device)
        dist = torch.cdist(f, self.class_means).pow(2)
        out = torch.full_like(dist, float("-inf"))
        has = self.has_mean.to(dist.device)
        out[:, has] = -dist[:, has]
        return out.to(x.device)

    # -------------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"exemplars": {u: x.clone() for u, x in self.exemplars.items()},
                "exemplar_task": dict(self.exemplar_task),
                "class_means": None if self.class_means is None else self.class_means.clone(),
                "has_mean": None if self.has_mean is None else self.has_mean.clone(),
                "old_model": None if self.old_model is None else
                {k: v.clone() for k, v in self.old_model.state_dict().items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore; call :meth:`setup` first (the previous network is rebuilt as a copy of the model)."""
        self.exemplars = {int(u): x.clone() for u, x in state["exemplars"].items()}
        self.exemplar_task = {int(u): int(t) for u, t in state["exemplar_task"].items()}
        self.class_means = None if state["class_means"] is None else state["class_means"].clone()
        self.has_mean = None if state["has_mean"] is None else state["has_mean"].clone()
        if state["old_model"] is None:
            self.old_model = None
        else:
            if self.model is None:
                raise RuntimeError("ICaRL.load_state_dict: call setup(model, stream) first")
            self.old_model = frozen_copy(self.model, self.config.teacher_bn)
            self.old_model.load_state_dict(state["old_model"])
