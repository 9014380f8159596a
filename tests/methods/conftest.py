"""Shared fixtures for method tests: a tiny real two-task stream and a minimal driver of the hook protocol.

``drive`` calls the hooks in exactly the order documented in :mod:`cltk.methods.base` (the same order as
:func:`cltk.run`), so a method's property tests do not depend on the full loop.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from cltk.methods.base import Batch, Method
from cltk.streams.base import Stream
from cltk.streams.builders import make_stream


def tiny_stream(scenario: str, n_tasks: int = 2, seed: int = 0) -> Stream:
    """Real MNIST-5k, ``n_tasks`` tasks of 2 classes, 200 training / 100 test images per task, 14x14 pixels."""
    return make_stream("split-mnist5k", scenario, seed, n_tasks=n_tasks, classes_per_task=2, train_per_task=200,
                       test_per_task=100, image_size=14)


def tiny_mlp(stream: Stream, hidden: int = 64) -> nn.Module:
    torch.manual_seed(0)
    c, h, w = stream.input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, stream.n_outputs))


def drive(method: Method, model: nn.Module, stream: Stream, iters: int = 20, batch_size: int = 32,
          on_step=None) -> nn.Module:
    """Train ``model`` on every task of ``stream`` through ``method``'s hooks; returns the (possibly wrapped) model.

    ``on_step(method, model, task, step)`` is called after each optimizer step (for property checks).
    """
    g = torch.Generator().manual_seed(0)
    model = method.setup(model, stream)
    for task in stream.tasks:
        method.before_task(task)
        opt = method.wrap_optimizer(method.make_optimizer(model.parameters()))
        x, y, t = method.training_data(task)
        model.train()
        for step in range(iters):
            idx = torch.randint(0, y.shape[0], (min(batch_size, y.shape[0]),), generator=g)
            loss = method.loss(model, Batch(x[idx], y[idx], t[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            method.after_backward(model)
            opt.step()
            method.after_step(model)
            if on_step is not None:
                on_step(method, model, task, step)
        method.after_task(task)
    return model


@torch.no_grad()
def accuracy(method: Method, model: nn.Module, stream: Stream, task_index: int, upto: int | None = None) -> float:
    """Test accuracy on one task, with the scenario's output mask (``upto``: last task trained)."""
    model.eval()
    task = stream.tasks[task_index]
    t = torch.full_like(task.test.y, task_index)
    logits = method.masked_logits(method.eval_logits(model, task.test.x, t), t,
                                  upto if upto is not None else len(stream.tasks) - 1)
    return (logits.argmax(1) == task.test.y).float().mean().item()


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
