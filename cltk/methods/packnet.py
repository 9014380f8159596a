"""PackNet: adding multiple tasks to a single network by iterative pruning (Mallya & Lazebnik, CVPR 2018).

Every weight of every ``nn.Linear`` / ``nn.Conv{1,2,3}d`` layer except the output layer has an owner: ``0`` (free)
or ``k + 1`` (task ``k``). While task ``t`` trains, only free weights receive gradient (:meth:`after_backward`
zeroes the rest). After the task, :meth:`after_task` prunes, layer by layer, the ``prune_fraction`` of the free
weights with the smallest magnitude (sets them to 0 and leaves them free for later tasks), gives the rest to task
``t``, and re-trains only those for ``retrain_steps`` steps with pruned weights held at 0. At evaluation a sample
of task ``k`` uses only the weights owned by tasks ``0..k`` (and, for the task being trained, the free ones), so
old tasks' outputs are exactly those they had when they were finished. After the stream's last task nothing is
pruned: it keeps every free weight, as in the authors' scripts (``prune_last=True`` prunes it too).

The method does not own the training loop, so the re-training happens inside :meth:`after_task`: minibatches
drawn with replacement from :meth:`training_data` of the task (a ``torch.Generator`` seeded with the task index),
``retrain_batch_size`` at a time (default: the size of the task's first batch), with
``make_optimizer``'s optimizer at ``retrain_lr``. The model is put in train mode for it and its mode is restored.

Biases follow the paper's "nobias" setting: they are shared and trained only with the first task, then frozen
(the paper's biases come from the ImageNet network and are never trained). The output layer (the last
``nn.Linear`` whose ``out_features`` equals the stream's output count) is the multi-head: in task-IL each task
only ever receives gradient in its own output units, so it is neither pruned nor masked. Models with other
parameterised layers (batch norm, embeddings, ...) raise ``ValueError``: the paper freezes batch-norm
parameters but not their running statistics, which change with every task.

A model with a ``features(x)`` method (``cltk.models``) is returned wrapped in a :class:`PackNetNet`, whose
``features(x, t)`` uses each task's weights, so that a feature read-out of an old task sees that task's network.

Scenarios: task-IL only (the weights a sample uses are chosen by its task id).

Defaults from the paper and its code (github.com/arunmallya/packnet, ``src/main.py``, ``src/prune.py``,
``src/scripts/run_sequence.sh``): SGD with momentum 0.9, lr 1e-3 for training and 1e-4 for re-training, 50% of
the free weights pruned per layer (``--prune_perc_per_layer 0.5``; the paper's task sequences also use 75%, see
``prune_schedule``), re-training for half as long as training (10 vs 20 epochs), so ``retrain_steps = 0`` means
half of the task's optimizer steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call

from cltk.methods.base import Batch, Method, MethodConfig, register
from cltk.streams.base import Stream, Task

__all__ = ["PackNet", "PackNetConfig", "PackNetNet"]

_PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class PackNetConfig(MethodConfig):
    """PackNet's hyperparameters (paper / authors' code defaults).

    ``prune_fraction``: fraction in (0, 1) of each layer's free weights pruned after a task;
    ``prune_schedule``: optional per-task fractions (task ``k`` uses ``prune_schedule[k]``, the last entry for
    later tasks), overriding ``prune_fraction``; ``retrain_steps``: re-training steps after pruning (``0``: half
    the task's optimizer steps); ``retrain_lr``: its learning rate; ``retrain_batch_size``: its batch size
    (``0``: the size of the task's first batch); ``prune_last``: also prune (and re-train) after the stream's last
    task, which the authors' scripts skip (``0.75,0.75,-1``) so that it keeps every free weight.
    ``weight_decay`` must be 0: decay would move weights that earlier tasks own.
    """

    optimizer: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    prune_fraction: float = 0.5
    prune_schedule: Optional[tuple[float, ...]] = None
    retrain_steps: int = 0
    retrain_lr: float = 1e-4
    retrain_batch_size: int = 0
    prune_last: bool = False

    def validate(self) -> None:
        super().validate()
        self.check_range("prune_fraction", 0.0, 1.0, lo_open=True, hi_open=True)
        if self.prune_schedule is not None:
            sched = self.prune_schedule
            if (isinstance(sched, (str, bytes)) or not hasattr(sched, "__len__") or len(sched) == 0
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 < v < 1.0
                               for v in sched)):
                raise ValueError(f"{type(self).__name__}.prune_schedule must be a non-empty sequence of fractions "
                                 f"in (0, 1), got {sched!r}")
            self.prune_schedule = tuple(float(v) for v in sched)
        self.check_int("retrain_steps", 0)
        self.check_positive("retrain_lr")
        self.check_int("retrain_batch_size", 0)
        self.check_bool("prune_last")
        if self.weight_decay != 0:
            raise ValueError(f"{type(self).__name__}.weight_decay must be 0 (decay would change weights that "
                             f"earlier tasks own), got {self.weight_decay!r}")

    def fraction(self, task_index: int) -> float:
        if self.prune_schedule is None:
            return self.prune_fraction
        return self.prune_schedule[min(task_index, len(self.prune_schedule) - 1)]


class _FeatureView(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net.features(x)


class PackNetNet(nn.Module):
    """Wraps a model that has ``features(x)`` so that ``features(x, t)`` sees each task's own weights.

    ``forward(x)`` is the wrapped model's (all current weights, for training); ``features(x, t)`` (``t`` int64
    [B]) uses :meth:`PackNet.task_weights`, so a loop's feature read-out of an old task sees what that task sees.
    """

    features_take_task = True

    def __init__(self, net: nn.Module, method: "PackNet") -> None:
        super().__init__()
        self.net = net
        self._method = [method]   # a list keeps the method out of the module tree

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def features(self, x: Tensor, t: Tensor) -> Tensor:
        return self._method[0].task_features(self, x, t)


@register
class PackNet(Method):
    """Iterative magnitude pruning and re-training, one weight subset per task (task-IL)."""

    name = "packnet"
    description = "prune free weights by magnitude after each task, re-train and freeze the kept ones"
    paper = "Mallya & Lazebnik 2018, PackNet: adding multiple tasks to a single network by iterative pruning (CVPR)"
    scenarios = ("task",)
    Config = PackNetConfig
    config: PackNetConfig

    def __init__(self, config: Optional[PackNetConfig] = None, **overrides) -> None:
        super().__init__(config, **overrides)
        self.owner: dict[str, Tensor] = {}        # prunable weight name -> int16 owner (0 free, k + 1 task k)
        self.biases: list[str] = []               # names of the shared biases (frozen after task 0)
        self.head: list[str] = []                 # names of the output layer's parameters
        self.tasks_done = 0
        self.steps = 0                            # optimizer steps of the current task
        self.batch_size = 0                       # size of the current task's first batch
        self._retraining: Optional[int] = None    # owner id being re-trained inside after_task

    # -- lifecycle ---------------------------------------------------------------------------------------
    def setup(self, model: nn.Module, stream: Stream) -> nn.Module:
        if callable(getattr(model, "features", None)) and not isinstance(model, PackNetNet):
            model = PackNetNet(model, self)
        model = super().setup(model, stream)
        heads = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == stream.n_outputs]
        if not heads:
            raise ValueError(f"PackNet needs an nn.Linear output layer with out_features == stream.n_outputs "
                             f"({stream.n_outputs}); none found in {type(model).__name__}")
        head = heads[-1]
        owner, biases, head_params = {}, [], []
        for mname, m in model.named_modules():
            own = list(m.named_parameters(recurse=False))
            if not own:
                continue
            if not isinstance(m, _PRUNABLE):
                raise ValueError(f"PackNet supports nn.Linear / nn.Conv layers and parameter-free modules; "
                                 f"module {mname!r} is a {type(m).__name__} with parameters")
            for pname, p in own:
                full = f"{mname}.{pname}" if mname else pname
                if mname == head:
                    head_params.append(full)
                elif pname == "weight":
                    owner[full] = torch.zeros(p.shape, dtype=torch.int16, device=p.device)
                else:
                    biases.append(full)
        if not owner:
            raise ValueError("PackNet needs at least one nn.Linear / nn.Conv layer besides the output layer")
        self.owner, self.biases, self.head = owner, biases, head_params
        return model

    def before_task(self, task: Task) -> None:
        super().before_task(task)
        self.steps = 0
        self.batch_size = 0

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        if self.batch_size == 0:
            self.batch_size = int(batch.y.shape[0])
        return super().loss(model, batch)

    @torch.no_grad()
    def after_backward(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        trainable = 0 if self._retraining is None else self._retraining
        for name, own in self.owner.items():
            g = params[name].grad
            if g is not None:
                g.masked_fill_(own != trainable, 0.0)
        if self._current_index() > 0:
            for name in self.biases:
                g = params[name].grad
                if g is not None:
                    g.zero_()

    def after_step(self, model: nn.Module) -> None:
        if self._retraining is None:
            self.steps += 1

    def after_task(self, task: Task) -> None:
        model = self.model
        params = dict(model.named_parameters())
        tid = task.index + 1
        if task.index == len(self._need_stream().tasks) - 1 and not self.config.prune_last:
            with torch.no_grad():
                for own in self.owner.values():
                    own[own == 0] = tid
            self.tasks_done = task.index + 1
            return
        frac = self.config.fraction(task.index)
        with torch.no_grad():
            for name, own in self.owner.items():
                w = params[name]
                free = own == 0
                n_free = int(free.sum())
                n_prune = int(round(frac * n_free))
                if n_prune > 0:
                    # the n_prune smallest |w| among the free weights (ties broken by index, deterministically)
                    mags = w.detach().abs().masked_fill(~free, math.inf).flatten()
                    prune_idx = torch.topk(mags, n_prune, largest=False, sorted=False).indices
                    pruned = torch.zeros_like(free).flatten()
                    pruned[prune_idx] = True
                    pruned = pruned.view_as(free)
                else:
                    pruned = torch.zeros_like(free)
                own[free & ~pruned] = tid
                w[pruned] = 0.0
        self._retrain(task, tid)
        self.tasks_done = task.index + 1

    def _retrain(self, task: Task, tid: int) -> None:
        c = self.config
        steps = c.retrain_steps if c.retrain_steps > 0 else self.steps // 2
        if steps == 0:
            return
        model = self.model
        device = next(model.parameters()).device
        x, y, t = self.training_data(task)
        bs = c.retrain_batch_size or self.batch_size or min(128, int(y.shape[0]))
        bs = min(bs, int(y.shape[0]))
        g = torch.Generator().manual_seed(task.index)
        params = dict(model.named_parameters())
        free_masks = [(params[n], own == 0) for n, own in self.owner.items()]
        opt = self.make_optimizer(model.parameters())
        for group in opt.param_groups:
            group["lr"] = c.retrain_lr
        was_training = model.training
        model.train()
        self._retraining = tid
        try:
            for _ in range(steps):
                idx = torch.randint(0, y.shape[0], (bs,), generator=g).to(y.device)
                loss = self.loss(model, Batch(x[idx].to(device), y[idx].to(device), t[idx].to(device)))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                self.after_backward(model)
                opt.step()
                with torch.no_grad():
                    for w, free in free_masks:
                        w.masked_fill_(free, 0.0)
        finally:
            self._retraining = None
            model.train(was_training)

    # -- evaluation ----------------------------------------------------------------------------------------
    def task_weights(self, model: nn.Module, task_index: int) -> dict[str, Tensor]:
        """The prunable weights as task ``task_index`` sees them: owned by tasks ``0..task_index`` (plus the free
        ones while that task is still being trained), others 0. Same shapes as the model's weights."""
        params = dict(model.named_parameters())
        out = {}
        for name, own in self.owner.items():
            keep = (own > 0) & (own <= task_index + 1)
            if task_index >= self.tasks_done:
                keep = keep | (own == 0)
            out[name] = params[name] * keep
        return out

    def eval_logits(self, model: nn.Module, x: Tensor, t: Tensor) -> Tensor:
        tasks = torch.unique(t).tolist()
        if len(tasks) == 1:
            return functional_call(model, self.task_weights(model, int(tasks[0])), (x,))
        out = None
        for k in tasks:
            sel = t == k
            logits = functional_call(model, self.task_weights(model, int(k)), (x[sel],))
            if out is None:
                out = logits.new_zeros((x.shape[0],) + tuple(logits.shape[1:]))
            out[sel] = logits
        return out

    def task_features(self, model: nn.Module, x: Tensor, t: Tensor) -> Tensor:
        """``model.net.features(x)`` with each sample's task weights (``model`` is a :class:`PackNetNet`)."""
        view = _FeatureView(model.net)
        out = None
        for k in torch.unique(t).tolist():
            sel = t == k
            weights = {f"net.{n[len('net.'):]}": w for n, w in self.task_weights(model, int(k)).items()}
            f = functional_call(view, weights, (x[sel],))
            if out is None:
                out = f.new_zeros((x.shape[0],) + tuple(f.shape[1:]))
            out[sel] = f
        return out

    # -- state ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"owner": {n: o.clone() for n, o in self.owner.items()}, "tasks_done": self.tasks_done,
                "steps": self.steps, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        owner = state["owner"]
        if self.owner and (set(owner) != set(self.owner)
                           or any(owner[n].shape != self.owner[n].shape for n in owner)):
            raise ValueError("PackNet.load_state_dict: the owner masks do not match the model's prunable weights")
        self.owner = {n: o.clone().to(self.owner[n].device if n in self.owner else o.device)
                      for n, o in owner.items()}
        self.tasks_done = int(state["tasks_done"])
        self.steps = int(state["steps"])
        self.batch_size = int(state["batch_size"])

    def _current_index(self) -> int:
        if self._retraining is not None:
            return self._retraining - 1
        return self.task.index if self.task is not None else 0
