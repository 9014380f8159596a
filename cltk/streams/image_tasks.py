"""The image task sequence for pretrained-backbone methods (AWM, Piggyback, linear probe): MNIST-5k digits 0-4,
MNIST-5k digits 5-9, Fashion-MNIST classes 0-4, Fashion-MNIST classes 5-9, each its own 5-way task (task-IL: task t
owns units 5t .. 5t+4, targets label - 5 (t mod 2) + 5t). Grayscale is repeated to 3 channels and resized
(bilinear, antialiased) to ``image_size``; ``rotated_angle`` appends the same four tasks rotated by that angle.

Splits follow :func:`cltk.streams.make_stream`: validation carved class-stratified from the training pool by
``default_rng([seed, t, 1])``, caps drawn by ``default_rng([seed, t, 0])`` (train) and ``([seed, t, 2])`` (test).
MNIST-5k has 4000 training and 1000 test images (about 2000 / 500 per 5-class task).
"""
from __future__ import annotations

import numbers
from typing import Optional

import numpy as np

from cltk.data import load
from cltk.streams.base import SCENARIOS, Stream, Task
from cltk.streams.builders import _build_task, _check_int, _rotate

__all__ = ["IMAGE_TASKS", "make_image_task_stream"]

IMAGE_TASKS = "mnist5k-fmnist-halves"
_SOURCES = (("mnist5k", (0, 1, 2, 3, 4)), ("mnist5k", (5, 6, 7, 8, 9)), ("fashion-mnist", (0, 1, 2, 3, 4)),
            ("fashion-mnist", (5, 6, 7, 8, 9)))


def make_image_task_stream(scenario: str = "task", seed: int = 0, *, image_size: int = 32,
                           train_per_task: Optional[int] = 2000, test_per_task: Optional[int] = 500,
                           val_fraction: float = 0.1, rotated_angle: Optional[float] = None) -> Stream:
    """Build the :data:`IMAGE_TASKS` stream (4 tasks, 8 with ``rotated_angle``); images float32 [N, 3, s, s].

    ``scenario``: ``"task"`` or ``"class"`` (20 units, 40 with the rotated copies) or ``"domain"`` (5 units).
    Raises ValueError naming the argument.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"make_image_task_stream: scenario must be one of {', '.join(SCENARIOS)}, got {scenario!r}")
    seed = _check_int("seed", seed, 0)
    image_size = _check_int("image_size", image_size, 1)
    if train_per_task is not None:
        train_per_task = _check_int("train_per_task", train_per_task, 1)
    if test_per_task is not None:
        test_per_task = _check_int("test_per_task", test_per_task, 1)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real) or not 0 <= val_fraction < 1:
        raise ValueError(f"make_image_task_stream: val_fraction must be a number in [0, 1), got {val_fraction!r}")
    if rotated_angle is not None and (isinstance(rotated_angle, bool) or not isinstance(rotated_angle, numbers.Real)):
        raise ValueError(f"make_image_task_stream: rotated_angle must be a number (degrees) or None, "
                         f"got {rotated_angle!r}")
    data = {name: load(name) for name in {n for n, _ in _SOURCES}}
    plan = [(n, cls, 0.0) for n, cls in _SOURCES]
    if rotated_angle is not None:
        plan += [(n, cls, float(rotated_angle)) for n, cls in _SOURCES]
    shape = (3, image_size, image_size)
    tasks: list[Task] = []
    for t, (name, classes, angle) in enumerate(plan):
        ds = data[name]
        base = 0 if scenario == "domain" else 5 * t
        units = list(range(base, base + 5))
        target_of = np.full(ds.num_classes, -1, dtype=np.int64)
        target_of[list(classes)] = units
        label = f"{name} {classes[0]}-{classes[-1]}" + (f" rotated {angle:g} deg" if angle else "")
        tasks.append(_build_task(t, label, ds, list(classes), units, target_of, shape=shape,
                                 transform=_rotate(angle), seed=seed, val_fraction=float(val_fraction),
                                 train_per_task=train_per_task, test_per_task=test_per_task))
    n_outputs = 5 if scenario == "domain" else 5 * len(plan)
    meta = {"family": "image-tasks", "datasets": [n for n, _, _ in plan], "classes": [list(c) for _, c, _ in plan],
            "angles": [a for _, _, a in plan], "image_size": [image_size, image_size],
            "train_per_task": train_per_task, "test_per_task": test_per_task, "val_fraction": float(val_fraction)}
    return Stream(name=IMAGE_TASKS, scenario=scenario, tasks=tasks, n_outputs=n_outputs, input_shape=shape,
                  seed=seed, meta=meta)
