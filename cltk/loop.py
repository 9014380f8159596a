"""The built-in training loop: :func:`run` drives a method's hooks over a stream and measures it.

Hook order (the contract of :mod:`cltk.methods.base`)::

    model = method.setup(model, stream)
    evaluate the random-init model on every task                 -> b
    for task in stream.tasks:
        method.before_task(task)
        opt = method.wrap_optimizer(method.make_optimizer(model.parameters()))
        for step in range(iters_per_task):                       # minibatches from method.training_data(task)
            loss = method.loss(model, batch); opt.zero_grad(); loss.backward()
            method.after_backward(model); opt.step(); method.after_step(model)
        method.after_task(task)
        evaluate every task's test split with method.eval_logits,
            masked by method.masked_logits(logits, t, upto=task.index)   -> row R[task.index]
        linear readout of every task seen so far on the frozen features   -> row readout[task.index]

Determinism: ``seed`` seeds the global torch RNG (for anything a method draws) and a separate
``torch.Generator`` that draws the minibatch indices (``batch_size`` indices uniformly at random, with
replacement, by ``torch.randint``, as in the drive of ``tests/methods/conftest.py``), so the same seed, method,
model initialisation and stream give the same numbers.

Everything a resumed run would need (next task, step, generator state, the partial ``R``, ``b``, readout and
timings) lives in one :class:`RunState`.
"""
from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from torch import Tensor, nn

from cltk import metrics
from cltk.methods.base import Batch, Method, get_method
from cltk.results import RunResult
from cltk.streams.base import Stream, Task

__all__ = ["run", "RunState", "evaluate_task", "task_features"]


@dataclass
class RunState:
    """The whole progress of one run: what a checkpoint has to hold (besides model, optimizer and method state)."""

    task: int = 0                     # index of the task being (or next to be) trained
    step: int = 0                     # optimizer steps done within that task
    generator: Optional[Tensor] = None   # state of the minibatch generator (torch.Generator.get_state())
    R: list[list[float]] = field(default_factory=list)
    b: list[float] = field(default_factory=list)
    readout: list[list[float]] = field(default_factory=list)
    task_time_s: list[float] = field(default_factory=list)
    task_peak_rss_mb: list[float] = field(default_factory=list)
    task_peak_cuda_mb: list[float] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------- measurement

def _proc_status_kb(key: str) -> Optional[float]:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def _reset_rss_peak() -> bool:
    """Reset the kernel's resident high-water mark (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_peak_kb() -> float:
    hwm = _proc_status_kb("VmHWM")
    return hwm if hwm is not None else float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


class _TaskMeter:
    """Wall time and peak memory of one task: the growth of the resident high-water mark over the resident size at
    the task's start (after a reset of the mark where the kernel allows it, else over the previous mark), and
    ``torch.cuda.max_memory_allocated`` on CUDA."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        if _reset_rss_peak():
            self.base = _proc_status_kb("VmRSS") or _rss_peak_kb()
        else:
            self.base = _rss_peak_kb()
        if self.cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        self.device = device
        self.t0 = time.perf_counter()

    def stop(self) -> tuple[float, float, float]:
        cuda_mb = 0.0
        if self.cuda:
            torch.cuda.synchronize(self.device)
            cuda_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        seconds = time.perf_counter() - self.t0
        rss_mb = max(0.0, _rss_peak_kb() - self.base) / 1024
        return seconds, rss_mb, cuda_mb


# ------------------------------------------------------------------------------------------------------ evaluation

@torch.no_grad()
def evaluate_task(method: Method, model: nn.Module, task: Task, upto: int, device: torch.device,
                  batch_size: int = 1000) -> float:
    """Test accuracy on ``task`` with ``method.eval_logits`` masked by ``method.masked_logits(.., upto=upto)``."""
    was_training = model.training
    model.eval()
    x, y = task.test.x, task.test.y
    correct = 0
    for i in range(0, y.shape[0], batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        tb = torch.full_like(yb, task.index)
        logits = method.masked_logits(method.eval_logits(model, xb, tb), tb, upto)
        correct += int((logits.argmax(1) == yb).sum())
    model.train(was_training)
    return correct / max(1, y.shape[0])


def _has_features(model: nn.Module) -> bool:
    return callable(getattr(model, "features", None))


@torch.no_grad()
def task_features(model: nn.Module, x: Tensor, task_index: int, device: torch.device,
                  batch_size: int = 1000) -> Tensor:
    """``model.features`` of ``x`` in eval mode, float32 on the CPU. Models whose ``features_take_task`` is True
    (one network per task) get the task index too."""
    was_training = model.training
    model.eval()
    takes_task = bool(getattr(model, "features_take_task", False))
    out = []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size].to(device)
        if takes_task:
            f = model.features(xb, torch.full((xb.shape[0],), task_index, dtype=torch.long, device=device))
        else:
            f = model.features(xb)
        out.append(f.flatten(1).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


def _readout_row(model: nn.Module, stream: Stream, upto: int, device: torch.device, batch_size: int) -> list[float]:
    row = []
    for j, task in enumerate(stream.tasks):
        if j > upto:
            row.append(float("nan"))
            continue
        ftr = task_features(model, task.train.x, j, device, batch_size)
        fte = task_features(model, task.test.x, j, device, batch_size)
        row.append(metrics.readout_accuracy(ftr, task.train.y, fte, task.test.y))
    return row


# ------------------------------------------------------------------------------------------------------------ run

def run(method: Union[Method, str], model: Union[nn.Module, str], stream: Stream, *, iters_per_task: int = 2000,
        batch_size: int = 128, eval_batch_size: int = 1000, seed: int = 0, device: Union[str, torch.device] = "cpu",
        readout: bool = True, progress: bool = True) -> RunResult:
    """Train ``model`` on every task of ``stream`` through ``method``'s hooks, evaluating every task after every task.

    Args:
        method: a :class:`~cltk.methods.Method` (fresh: :meth:`setup` is called here) or a registered name.
        model: a module over ``stream.n_outputs`` logits, or a name of :data:`cltk.models.MODELS` (built here,
            initialised from ``seed``).
        stream: the task stream (see :func:`cltk.streams.make_stream`).
        iters_per_task: optimizer steps per task (2000 as in van de Ven & Tolias 2019).
        batch_size: training minibatch size (capped at the size of the training data).
        eval_batch_size: evaluation batch size (memory only; results do not depend on it).
        seed: seeds the global torch RNG and the minibatch generator.
        device: where the model and each minibatch go; the stream stays on the CPU.
        readout: also fit the linear readout (needs ``model.features``; skipped silently otherwise).
        progress: show a tqdm bar over the training steps (on stderr).

    Returns:
        A :class:`~cltk.results.RunResult` with the accuracy matrix ``R``, the random-init accuracies ``b``, the
        readout matrix, and wall time and peak memory per task. ``result.summary()`` gives ACC, BWT, FWT, ...
    """
    from tqdm.auto import tqdm

    if isinstance(iters_per_task, bool) or not isinstance(iters_per_task, int) or iters_per_task < 0:
        raise ValueError(f"run: iters_per_task must be an integer >= 0, got {iters_per_task!r}")
    for name, v in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"run: {name} must be an integer >= 1, got {v!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"run: seed must be an integer >= 0, got {seed!r}")
    if len(stream.tasks) == 0:
        raise ValueError(f"run: stream {stream.name!r} has no tasks")
    device = torch.device(device)
    if isinstance(method, str):
        method = get_method(method)
    model_name = model if isinstance(model, str) else type(model).__name__
    if isinstance(model, str):
        from cltk.models import build_model
        model = build_model(model, stream, seed=seed)

    torch.manual_seed(seed)
    state = RunState(generator=torch.Generator().manual_seed(seed).get_state())
    model = method.setup(model.to(device), stream).to(device)
    state.b = [evaluate_task(method, model, task, max(task.index - 1, 0), device, eval_batch_size)
               for task in stream.tasks]
    do_readout = readout and _has_features(model)

    bar = tqdm(total=iters_per_task * len(stream.tasks), disable=not progress, leave=False, dynamic_ncols=True,
               desc=f"{method.name} {stream.name} {stream.scenario}-IL seed {seed}")
    try:
        while state.task < len(stream.tasks):
            task = stream.tasks[state.task]
            meter = _TaskMeter(device)
            method.before_task(task)
            opt = method.wrap_optimizer(method.make_optimizer(model.parameters()))
            x, y, t = method.training_data(task)
            n = int(y.shape[0])
            if n == 0 and iters_per_task > 0:
                raise ValueError(f"run: task {task.index} ({task.name}) has no training data")
            g = torch.Generator()
            g.set_state(state.generator)
            model.train()
            while state.step < iters_per_task:
                idx = torch.randint(0, n, (min(batch_size, n),), generator=g)
                batch = Batch(x[idx].to(device), y[idx].to(device), t[idx].to(device))
                loss = method.loss(model, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                method.after_backward(model)
                opt.step()
                method.after_step(model)
                state.step += 1
                bar.update(1)
                if state.step % 50 == 0:
                    bar.set_postfix(task=task.index, loss=f"{loss.item():.3f}", refresh=False)
            state.generator = g.get_state()
            method.after_task(task)
            state.R.append([evaluate_task(method, model, other, task.index, device, eval_batch_size)
                            for other in stream.tasks])
            if do_readout:
                state.readout.append(_readout_row(model, stream, task.index, device, eval_batch_size))
            seconds, rss_mb, cuda_mb = meter.stop()
            state.task_time_s.append(seconds)
            state.task_peak_rss_mb.append(rss_mb)
            state.task_peak_cuda_mb.append(cuda_mb)
            state.task, state.step = state.task + 1, 0
    finally:
        bar.close()

    config = {k: v for k, v in vars(method.config).items()}
    return RunResult(method=method.name, benchmark=stream.name, scenario=stream.scenario, seed=seed,
                     model=model_name, iters_per_task=iters_per_task, batch_size=batch_size, R=state.R, b=state.b,
                     readout=state.readout, task_time_s=state.task_time_s, task_peak_rss_mb=state.task_peak_rss_mb,
                     task_peak_cuda_mb=state.task_peak_cuda_mb, config=config,
                     task_names=[t.name for t in stream.tasks])
