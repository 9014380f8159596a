"""Fine-tuning: train each task in turn with a plain optimizer and nothing else (the lower bound, "None")."""
from __future__ import annotations

from dataclasses import dataclass

from cltk.methods._task_bn import TaskBNConfig, TaskBNStats
from cltk.methods.base import Method, register


@dataclass
class FinetuneConfig(TaskBNConfig):
    """Adam, lr 1e-3 by default (van de Ven & Tolias 2019); ``optimizer="sgd"`` with a smaller ``lr`` gives
    the SGD / SGDx0.1 baselines. ``bn_stats="task"``: each task evaluated with its own BatchNorm statistics
    (task-IL; :mod:`cltk.methods._task_bn`)."""


@register
class Finetune(TaskBNStats, Method):
    name = "finetune"
    description = "plain fine-tuning task after task (the forgetting lower bound)"
    paper = "-"
    Config = FinetuneConfig

    def added_parameters(self, task: int) -> int:
        """0: a task adds nothing, but every weight of the one network moves."""
        return 0
