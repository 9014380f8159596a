"""The task-stream data model shared by the loop, the methods and the benchmarks.

A :class:`Stream` is an ordered list of :class:`Task` s, built for one scenario (van de Ven & Tolias 2019):

* ``"task"``   task-incremental: every task has its own output units (multi-head); the task id is given at test time.
* ``"domain"`` domain-incremental: one shared head whose size is the number of classes per task; labels are
  the within-task class index and no task id is given.
* ``"class"``  class-incremental: one head over every class of the stream; no task id at test time.

Targets stored in each split are already in the stream's output space for its scenario, so a loop only has to
know ``Task.output_units`` (the logits a task trains and, in task-IL, is evaluated on).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

SCENARIOS = ("task", "domain", "class")


@dataclass
class Split:
    """One split of one task. ``x``: float32 [N, C, H, W] in [0, 1]; ``y``: int64 [N] targets in output space."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class Task:
    index: int
    name: str
    classes: tuple[int, ...]        # original labels of the source data set that this task contains
    output_units: tuple[int, ...]   # logit indices this task uses in the stream's output space
    train: Split
    val: Split
    test: Split


@dataclass
class Stream:
    name: str                       # e.g. "split-mnist5k"
    scenario: str                   # one of SCENARIOS
    tasks: list[Task]
    n_outputs: int                  # size of the (single or concatenated multi-) head
    input_shape: tuple[int, ...]    # (C, H, W)
    seed: int
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tasks)

    def units_seen(self, upto: int) -> tuple[int, ...]:
        """Output units of tasks 0..upto (inclusive), in order, without repeats."""
        seen: dict[int, None] = {}
        for t in self.tasks[: upto + 1]:
            for u in t.output_units:
                seen.setdefault(u, None)
        return tuple(seen)
