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
        evaluate every task's test split (or val, with eval_split="val") with method.eval_logits,
            masked by method.masked_logits(logits, t, upto=task.index)   -> row R[task.index]
        linear readout of every task seen so far on the frozen features   -> row readout[task.index]

Determinism: ``seed`` seeds the global torch RNG (for anything a method draws) and a separate
``torch.Generator`` that draws the minibatch indices (``batch_size`` indices uniformly at random, with
replacement, by ``torch.randint``, as in the drive of ``tests/methods/conftest.py``), so the same seed, method,
model initialisation and stream give the same numbers.

Checkpoints (``checkpoint_dir``): one after every task and every ``checkpoint_every`` steps within a task,
written atomically by :mod:`cltk.checkpoint`, holding the :class:`RunState` (next task, step, minibatch generator,
the partial ``R``, ``b``, readout and timings), the model, the (wrapped) optimizer's and the method's
``state_dict``, and the global RNG states (torch CPU and CUDA, python ``random``, numpy). ``resume=True``
continues from the newest one that loads; the result equals the uninterrupted run's (timings aside). On resuming
within a task the loop calls ``before_task``, builds and wraps the task's optimizer and calls ``training_data``
as at the task's start, then loads the optimizer's and the method's state (so ``Method.load_state_dict`` must
restore the state at the step whatever ``before_task`` set), then the RNG states.

Under torch.distributed (see :mod:`cltk.distributed`) each rank trains on its shard of every global minibatch and
the gradients are averaged after ``backward``; BatchNorm running statistics are averaged at the end of each task and
before each checkpoint; rank 0 evaluates and writes checkpoints.
"""
from __future__ import annotations

import contextlib
import functools
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

__all__ = ["run", "RunState", "evaluate_task", "task_features", "flush_denormals", "check_eval_split"]


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
    task_elapsed_s: float = 0.0       # wall time spent on the current task before the latest checkpoint


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

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

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
                  batch_size: int = 1000, split: str = "test") -> float:
    """Accuracy on ``task``'s ``split`` ("test" or "val") with ``method.eval_logits`` masked by
    ``method.masked_logits(.., upto=upto)``."""
    _check_split("evaluate_task: split", split)
    was_training = model.training
    model.eval()
    x, y = getattr(task, split).x, getattr(task, split).y
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


def _readout_row(model: nn.Module, stream: Stream, upto: int, device: torch.device, batch_size: int,
                 split: str = "test") -> list[float]:
    row = []
    for j, task in enumerate(stream.tasks):
        if j > upto:
            row.append(float("nan"))
            continue
        held_out = getattr(task, split)
        ftr = task_features(model, task.train.x, j, device, batch_size)
        fte = task_features(model, held_out.x, j, device, batch_size)
        row.append(metrics.readout_accuracy(ftr, task.train.y, fte, held_out.y))
    return row


EVAL_SPLITS = ("test", "val")


def _check_split(name: str, split: str) -> None:
    if split not in EVAL_SPLITS:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, EVAL_SPLITS))}, got {split!r}")


def check_eval_split(stream: Stream, eval_split: str, who: str = "run") -> None:
    """ValueError (prefixed ``who``) unless ``eval_split`` is one of :data:`EVAL_SPLITS` and, for "val", every task
    of ``stream`` has a non-empty validation split."""
    _check_split(f"{who}: eval_split", eval_split)
    empty = [t.name for t in stream.tasks if int(t.val.y.shape[0]) == 0] if eval_split == "val" else []
    if empty:
        raise ValueError(f"{who}: eval_split='val' but {stream.name} ({stream.scenario}-IL) has tasks with an empty "
                         f"val split: {', '.join(empty)} (build the stream with val_fraction > 0)")


# ----------------------------------------------------------------------------------------------------- checkpoints

CHECKPOINT_FORMAT = 1


def rng_state(device: torch.device) -> dict:
    """Every RNG a run may draw from: torch CPU (and CUDA), python ``random`` and numpy's global generator."""
    import random

    import numpy as np

    name, key, pos, has_gauss, cached = np.random.get_state()
    out = {"torch": torch.get_rng_state(), "python": random.getstate(),
           "numpy": {"name": str(name), "key": torch.from_numpy(np.asarray(key, dtype=np.int64)), "pos": int(pos),
                     "has_gauss": int(has_gauss), "cached": float(cached)}}
    if device.type == "cuda" and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def set_rng_state(state: dict, device: torch.device) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _fingerprint(method: Method, model_name: str, stream: Stream, iters_per_task: int, batch_size: int,
                 seed: int, eval_split: str = "test") -> str:
    """What must match for a checkpoint to continue this run (method, config, stream, schedule, seed, and the split
    its accuracies are measured on)."""
    import json
    config = method.config.fingerprint_fields() if hasattr(method.config, "fingerprint_fields") else vars(method.config)
    doc = {"method": method.name, "config": config, "model": model_name, "stream": stream.name,
           "scenario": stream.scenario, "tasks": [t.name for t in stream.tasks], "iters_per_task": iters_per_task,
           "batch_size": batch_size, "seed": seed}
    if eval_split != "test":       # checkpoints written before eval_split existed keep their fingerprint
        doc["eval_split"] = eval_split
    return json.dumps(doc, sort_keys=True, default=repr)


class _Checkpointer:
    """Writes (rank 0 only) and finds the checkpoints of one run in one folder, keeping the newest ``keep``."""

    def __init__(self, directory: Union[str, os.PathLike], keep: int) -> None:
        from pathlib import Path
        self.dir = Path(directory)
        self.keep = keep

    def files(self) -> list:
        from cltk.checkpoint import _NAME
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.iterdir() if _NAME.match(p.name))

    def clear_temporaries(self) -> None:
        """Remove the temporary files a writer killed mid-write left behind."""
        if self.dir.is_dir():
            for p in self.dir.iterdir():
                if p.name.startswith(".ckpt-") and p.name.endswith(".tmp"):
                    p.unlink(missing_ok=True)

    def clear(self) -> None:
        """Start afresh: remove every checkpoint (a new run must not resume or keep an older run's files)."""
        self.clear_temporaries()
        for p in self.files():
            p.unlink(missing_ok=True)

    def save(self, state: dict, task: int, step: int) -> None:
        from cltk.checkpoint import checkpoint_name, save_checkpoint
        path = save_checkpoint(state, self.dir / checkpoint_name(task, step))
        for old in self.files()[:-self.keep]:
            if old != path:
                old.unlink(missing_ok=True)

    def latest(self) -> Optional[tuple]:
        from cltk.checkpoint import latest_checkpoint
        return latest_checkpoint(self.dir)


# ------------------------------------------------------------------------------------------------------------ run

def _check_int(name: str, v: object, minimum: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"run: {name} must be an integer >= {minimum}, got {v!r}")


def _denormals_flushed() -> bool:
    return (torch.tensor([1e-40]) * 1.0).item() == 0.0


@contextlib.contextmanager
def flush_denormals():
    """Flush denormal floats to zero on this thread (``torch.set_flush_denormal``) inside the block, then restore the
    previous setting. Adam's second moments of weights that stop receiving gradient (for example the input weights of
    pixels a later task never lights) decay into the denormal range, where every x86 operation on them is tens of
    times slower: on the 2x400 MLP this made the optimizer step 8x slower than with them flushed."""
    before = _denormals_flushed()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


def _flushing_denormals(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with flush_denormals():
            return fn(*args, **kwargs)
    return wrapper


@_flushing_denormals
def run(method: Union[Method, str], model: Union[nn.Module, str], stream: Stream, *, iters_per_task: int = 2000,
        batch_size: int = 128, eval_batch_size: int = 1000, seed: int = 0, device: Union[str, torch.device] = "cpu",
        readout: bool = True, progress: bool = True, checkpoint_dir: Optional[Union[str, os.PathLike]] = None,
        checkpoint_every: int = 0, resume: bool = False, keep_checkpoints: int = 2,
        eval_split: str = "test") -> RunResult:
    """Train ``model`` on every task of ``stream`` through ``method``'s hooks, evaluating every task after every task.

    Args:
        method: a :class:`~cltk.methods.Method` (fresh: :meth:`setup` is called here) or a registered name.
        model: a module over ``stream.n_outputs`` logits, or a name of :data:`cltk.models.MODELS` (built here,
            initialised from ``seed``).
        stream: the task stream (see :func:`cltk.streams.make_stream`).
        iters_per_task: optimizer steps per task (2000 as in van de Ven & Tolias 2019).
        batch_size: training minibatch size (capped at the size of the training data); under torch.distributed
            the global batch, split evenly over the ranks (see :mod:`cltk.distributed`).
        eval_batch_size: evaluation batch size (memory only; results do not depend on it).
        seed: seeds the global torch RNG and the minibatch generator.
        device: where the model and each minibatch go; the stream stays on the CPU.
        readout: also fit the linear readout (needs ``model.features``; skipped silently otherwise).
        progress: show a tqdm bar over the training steps (on stderr).
        checkpoint_dir: write checkpoints to this folder: after every task, and every ``checkpoint_every`` steps
            within a task. Without ``resume`` the folder's earlier checkpoints are removed first.
        checkpoint_every: steps between checkpoints within a task (0: only after each task).
        resume: continue from the newest valid checkpoint in ``checkpoint_dir`` (start afresh if there is none).
            The result is identical to an uninterrupted run (timings aside). A checkpoint of another run (other
            method, config, stream, schedule or seed) is refused with ``ValueError``.
        keep_checkpoints: how many of the newest checkpoints to keep (older ones are deleted after each write).
        eval_split: the split that ``R``, ``b`` and the readout are measured on: "test" (default), or "val", the
            validation split held out of each task's training data, for choosing hyperparameters without looking
            at the test data. A stream with a task whose validation split is empty is then refused.

    Returns:
        A :class:`~cltk.results.RunResult` with the accuracy matrix ``R``, the random-init accuracies ``b``, the
        readout matrix, and wall time and peak memory per task. ``result.summary()`` gives ACC, BWT, FWT, ...

    The run flushes denormal floats to zero on the calling thread (:func:`flush_denormals`) and restores the setting
    on return.
    """
    from tqdm.auto import tqdm

    from cltk import distributed as dist

    _check_int("iters_per_task", iters_per_task, 0)
    _check_int("batch_size", batch_size, 1)
    _check_int("eval_batch_size", eval_batch_size, 1)
    _check_int("seed", seed, 0)
    _check_int("checkpoint_every", checkpoint_every, 0)
    _check_int("keep_checkpoints", keep_checkpoints, 1)
    if resume and checkpoint_dir is None:
        raise ValueError("run: resume=True needs a checkpoint_dir")
    if len(stream.tasks) == 0:
        raise ValueError(f"run: stream {stream.name!r} has no tasks")
    check_eval_split(stream, eval_split)
    device = torch.device(device)
    if isinstance(method, str):
        method = get_method(method)
    model_name = model if isinstance(model, str) else type(model).__name__
    if isinstance(model, str):
        from cltk.models import build_model
        model = build_model(model, stream, seed=seed)
    main = dist.is_main()
    ckpt = _Checkpointer(checkpoint_dir, keep_checkpoints) if checkpoint_dir is not None else None
    fingerprint = _fingerprint(method, model_name, stream, iters_per_task, batch_size, seed, eval_split)

    torch.manual_seed(seed)
    state = RunState(generator=torch.Generator().manual_seed(seed).get_state())
    model = method.setup(model.to(device), stream).to(device)
    dist.broadcast_module(model)
    do_readout = readout and _has_features(model)

    def evaluate(fn):        # rank 0 evaluates; every rank gets its numbers
        return dist.broadcast_object(fn() if main else None)

    loaded = None
    if ckpt is not None:
        if main:
            if resume:
                ckpt.clear_temporaries()
                found = ckpt.latest()
                loaded = str(found[0]) if found is not None else None
            else:
                ckpt.clear()
        loaded = dist.broadcast_object(loaded)
    opt = None
    x = y = t = None
    if loaded is not None:
        from cltk.checkpoint import load_checkpoint
        ck = load_checkpoint(loaded)
        if ck.get("fingerprint") != fingerprint:
            raise ValueError(f"run: checkpoint {loaded!r} belongs to another run (method, config, stream, schedule "
                             f"or seed differ); remove it or resume with the same settings")
        model.load_state_dict(ck["model"])
        method.load_state_dict(ck["method"])
        s = ck["state"]
        state = RunState(task=int(s["task"]), step=int(s["step"]), generator=s["generator"], R=s["R"], b=s["b"],
                         readout=s["readout"], task_time_s=s["task_time_s"], task_peak_rss_mb=s["task_peak_rss_mb"],
                         task_peak_cuda_mb=s["task_peak_cuda_mb"], task_elapsed_s=float(s["task_elapsed_s"]))
        if state.step > 0:       # within a task: rebuild its optimizer and data as at its start, then load
            task = stream.tasks[state.task]
            method.before_task(task)
            opt = method.wrap_optimizer(method.make_optimizer(model.parameters()))
            x, y, t = method.training_data(task)
            opt.load_state_dict(ck["optimizer"])
            method.load_state_dict(ck["method"])   # the state at the step, whatever before_task set
        set_rng_state(ck["rng"], device)
        del ck
    else:
        state.b = evaluate(lambda: [evaluate_task(method, model, task, max(task.index - 1, 0), device,
                                                  eval_batch_size, eval_split) for task in stream.tasks])

    def save() -> None:
        if ckpt is None or not main:
            return
        ckpt.save({"format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "state": vars(state).copy(),
                   "model": model.state_dict(), "optimizer": opt.state_dict() if opt is not None else None,
                   "method": method.state_dict(), "rng": rng_state(device)}, state.task, state.step)

    bar = tqdm(total=iters_per_task * len(stream.tasks), initial=state.task * iters_per_task + state.step,
               disable=not (progress and main), leave=False, dynamic_ncols=True,
               desc=f"{method.name} {stream.name} {stream.scenario}-IL seed {seed}")
    try:
        while state.task < len(stream.tasks):
            task = stream.tasks[state.task]
            meter = _TaskMeter(device)
            if opt is None:
                method.before_task(task)
                opt = method.wrap_optimizer(method.make_optimizer(model.parameters()))
                x, y, t = method.training_data(task)
            n = int(y.shape[0])
            if n == 0 and iters_per_task > 0:
                raise ValueError(f"run: task {task.index} ({task.name}) has no training data")
            bs = min(batch_size, n)
            mine = dist.shard(bs) if dist.is_distributed() else slice(None)
            synced = list({id(p): p for p in [*model.parameters(),
                                              *(p for grp in opt.param_groups for p in grp["params"])]}.values())
            g = torch.Generator()
            g.set_state(state.generator)
            model.train()
            while state.step < iters_per_task:
                idx = torch.randint(0, n, (bs,), generator=g)[mine]
                batch = Batch(x[idx].to(device), y[idx].to(device), t[idx].to(device))
                loss = method.loss(model, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                dist.all_reduce_gradients(synced)
                method.after_backward(model)
                opt.step()
                method.after_step(model)
                state.step += 1
                bar.update(1)
                if state.step % 50 == 0:
                    bar.set_postfix(task=task.index, loss=f"{loss.item():.3f}", refresh=False)
                if checkpoint_every and state.step % checkpoint_every == 0 and state.step < iters_per_task:
                    if ckpt is not None:  # the checkpoint holds the averaged statistics every rank resumes from
                        dist.all_reduce_batchnorm_stats(model)
                    state.generator = g.get_state()
                    state.task_elapsed_s += meter.elapsed()
                    meter.t0 = time.perf_counter()
                    save()
            state.generator = g.get_state()
            dist.all_reduce_batchnorm_stats(model)     # each rank's statistics saw its shards only
            method.after_task(task)
            state.R.append(evaluate(lambda: [evaluate_task(method, model, other, task.index, device, eval_batch_size,
                                                           eval_split) for other in stream.tasks]))
            if do_readout:
                state.readout.append(evaluate(lambda: _readout_row(model, stream, task.index, device,
                                                                   eval_batch_size, eval_split)))
            seconds, rss_mb, cuda_mb = meter.stop()
            state.task_time_s.append(state.task_elapsed_s + seconds)
            state.task_peak_rss_mb.append(rss_mb)
            state.task_peak_cuda_mb.append(cuda_mb)
            state.task, state.step, state.task_elapsed_s = state.task + 1, 0, 0.0
            opt = None
            save()
    finally:
        bar.close()
    dist.barrier()

    config = {k: v for k, v in vars(method.config).items()}
    return RunResult(method=method.name, benchmark=stream.name, scenario=stream.scenario, seed=seed,
                     model=model_name, iters_per_task=iters_per_task, batch_size=batch_size, R=state.R, b=state.b,
                     readout=state.readout, task_time_s=state.task_time_s, task_peak_rss_mb=state.task_peak_rss_mb,
                     task_peak_cuda_mb=state.task_peak_cuda_mb, config=config,
                     task_names=[t.name for t in stream.tasks], eval_split=eval_split)
