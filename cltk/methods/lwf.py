"""Learning without forgetting (Li & Hoiem 2017): distil a frozen copy of the previous model on the new data.

At the end of every task a frozen copy of the model is kept. While the next tasks train, each minibatch's loss is

    task cross-entropy + alpha * sum_g CE(softmax(old_g / T), softmax(new_g / T))

over groups ``g`` of output units: in task-IL every earlier task's own head (one group each, as Li & Hoiem's
multi-head set-up); in class-IL the units of every class seen before the current task (one group); in domain-IL
the shared head. The distillation term is absent while the first task trains.

Defaults: temperature T = 2 and alpha (Li & Hoiem's lambda_o) = 1, as in the paper. van de Ven & Tolias 2019 also
use T = 2 but multiply the distillation loss by T^2 (Hinton et al. 2015); ``alpha=4`` reproduces that scaling.

BatchNorm in the frozen copy (``teacher_bn``): ``"running"`` (default) evaluates it in inference mode, with the
running statistics it had when it was made; ``"batch"`` normalises each minibatch with its own statistics, as the
training model does, and leaves the copy's running statistics untouched. On a network with BatchNorm and a shift of
input distribution between tasks the two differ: the training model is pulled towards outputs computed under other
normalisation than its own (docs/methods_regularize.md has a measured case). Li & Hoiem's networks had no BatchNorm.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor, nn

from cltk.methods._task_bn import TEACHER_BN, TaskBNConfig, TaskBNStats, frozen_copy
from cltk.methods.base import FINGERPRINT_OMIT_DEFAULT, Batch, Method, register
from cltk.streams.base import Task

__all__ = ["LwFConfig", "LwF", "soft_cross_entropy"]


@dataclass
class LwFConfig(TaskBNConfig):
    """``temperature`` (> 0): softening of both distributions; ``alpha`` (>= 0): weight of the distillation;
    ``teacher_bn``: ``"running"`` or ``"batch"``, how the frozen copy's BatchNorm layers normalise (module
    docstring); ``bn_stats="task"``: each task evaluated with its own BatchNorm statistics (task-IL;
    :mod:`cltk.methods._task_bn`)."""

    temperature: float = 2.0
    alpha: float = 1.0
    teacher_bn: str = field(default="running", metadata={FINGERPRINT_OMIT_DEFAULT: True})

    def validate(self) -> None:
        super().validate()
        self.check_positive("temperature")
        self.check_nonnegative("alpha")
        self.check_choice("teacher_bn", TEACHER_BN)


def soft_cross_entropy(logits: Tensor, target_logits: Tensor, temperature: float) -> Tensor:
    """Mean over the batch of ``-sum_j softmax(target/T)_j log softmax(logits/T)_j``; both [B, K]."""
    target = torch.softmax(target_logits / temperature, dim=1)
    return -(target * torch.log_softmax(logits / temperature, dim=1)).sum(1).mean()


@register
class LwF(TaskBNStats, Method):
    name = "lwf"
    description = "learning without forgetting: distil the previous model's outputs on the new data"
    paper = "Li & Hoiem 2017, TPAMI, arXiv:1606.09282"
    Config = LwFConfig

    def __init__(self, config: Optional[LwFConfig] = None, **overrides) -> None:
        super().__init__(config, **overrides)
        self.old_model: Optional[nn.Module] = None
        self.old_task: int = -1          # last task the old model was trained on

    def distill_groups(self) -> list[list[int]]:
        """Output units distilled, one list per softmax group (empty before the first task ends)."""
        if self.old_model is None:
            return []
        stream = self._need_stream()
        if stream.scenario == "task":
            return [list(t.output_units) for t in stream.tasks[: self.old_task + 1]]
        if stream.scenario == "class":
            return [list(stream.units_seen(self.old_task))]
        return [list(range(stream.n_outputs))]

    def distillation_loss(self, model: nn.Module, batch: Batch, logits: Optional[Tensor] = None) -> Optional[Tensor]:
        """The distillation term (without ``alpha``) for one minibatch; ``None`` while there is no old model."""
        groups = self.distill_groups()
        if not groups:
            return None
        if logits is None:
            logits = self.forward(model, batch.x, batch.t)
        with torch.no_grad():
            old = self.forward(self.old_model, batch.x, batch.t)
        total = logits.new_zeros(())
        for units in groups:
            idx = torch.tensor(units, device=logits.device)
            total = total + soft_cross_entropy(logits[:, idx], old[:, idx], self.config.temperature)
        return total

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        logits = self.forward(model, batch.x, batch.t)
        loss = self.task_loss(logits, batch.y, batch.t)
        distill = self.distillation_loss(model, batch, logits)
        return loss if distill is None else loss + self.config.alpha * distill

    def _frozen_copy(self) -> nn.Module:
        return frozen_copy(self.model, self.config.teacher_bn)

    def after_task(self, task: Task) -> None:
        super().after_task(task)   # TaskBNStats: this task's BatchNorm statistics
        self.old_model = self._frozen_copy()
        self.old_task = task.index

    def state_dict(self) -> dict:
        old = None if self.old_model is None else {k: v.detach().clone() for k, v in self.old_model.state_dict().items()}
        return {**super().state_dict(), "old_model": old, "old_task": self.old_task}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if state["old_model"] is None:
            self.old_model, self.old_task = None, -1
            return
        if self.model is None:
            raise RuntimeError("lwf.load_state_dict: call setup(model, stream) first (the old model copies it)")
        self.old_model = self._frozen_copy()
        self.old_model.load_state_dict(state["old_model"])
        self.old_task = int(state["old_task"])
