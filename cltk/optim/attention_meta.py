"""AttentionMetaOptimizer: the weight update of the controlled parameters comes from a meta-learned transformer.

A ``torch.optim``-style optimizer over the controlled parameters (for example a classifier head), driven by a
checkpoint of :mod:`cltk.meta.attention` (Vettoruzzo et al., CoLLAs 2024). Each :meth:`step` takes the support
set ``(x, y)`` (or a closure returning it): the gradient of the support loss gives the importance scores, the
task encoder's mean feature over ``x`` the task token, and the meta-network's output is added to the weights.
The importance memory (the running maximum of the scores of the finished tasks, which ramps down the change
allowed on weights important before) is optimizer state: :meth:`end_task` folds the last step's scores into it,
and ``state_dict`` / ``load_state_dict`` carry it.

Usage::

    opt = AttentionMetaOptimizer(model.head.parameters(), "meta.pt", model=model)
    for task in tasks:
        for _ in range(5):
            opt.step((x_support, y_support))   # gradients are computed inside, from model
        opt.end_task()
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cltk.meta.attention import importance_scores, load_meta_checkpoint

__all__ = ["AttentionMetaOptimizer"]

Support = Union[tuple[Tensor, Tensor], Callable[[], tuple[Tensor, Tensor]]]


class AttentionMetaOptimizer(torch.optim.Optimizer):
    """Applies the meta-learned attention update to ``params``.

    Args:
        params: the controlled parameters, in the order of the checkpoint's layout (e.g. ``model.head.parameters()``).
        checkpoint: a path written by :func:`cltk.meta.save_meta_checkpoint` or the loaded dict.
        model: the classifier; when given, :meth:`step` computes the support gradient itself (``loss_fn`` of
            ``model(x)`` and ``y``) and the checkpoint's layout is checked by parameter name as well as shape.
            Without it, ``p.grad`` (from the caller's ``backward``) is used.
        loss_fn: ``(logits, y) -> loss``; default cross-entropy.
        support: the default support set (or closure) for ``step()`` called without one (the built-in loop does).
        shots: smallest number of support examples per class (K); default the checkpoint's.
        max_steps: steps applied per task (Q); later calls until :meth:`end_task` do nothing. None: no limit.
    """

    def __init__(self, params: Iterable, checkpoint: Union[str, Path, dict], *, model: Optional[nn.Module] = None,
                 loss_fn: Optional[Callable[[Tensor, Tensor], Tensor]] = None, support: Optional[Support] = None,
                 shots: Optional[int] = None, max_steps: Optional[int] = None) -> None:
        params = list(params)
        super().__init__(params, {})
        flat = [p for grp in self.param_groups for p in grp["params"]]
        given = [("", tuple(p.shape)) for p in flat]
        if model is not None:
            names = {id(p): n for n, p in model.named_parameters()}
            missing = [i for i, p in enumerate(flat) if id(p) not in names]
            if missing:
                raise ValueError(f"AttentionMetaOptimizer: params[{missing[0]}] is not a parameter of model")
            given = [(names[id(p)], tuple(p.shape)) for p in flat]
        net, encoder, layout, _, info = load_meta_checkpoint(checkpoint)
        ok = len(layout) == len(given) and all(gs == ls and (not gn or gn == ln)
                                               for (gn, gs), (ln, ls) in zip(given, layout))
        if not ok:
            raise ValueError(f"checkpoint: it was trained for the controlled-layer layout {layout}, the params "
                             f"given have the layout {given}")
        for name, v in (("shots", shots), ("max_steps", max_steps)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"AttentionMetaOptimizer: {name} must be an integer >= 1 or None, got {v!r}")
        self.net, self.encoder, self.layout = net.eval(), encoder, layout
        self.net.requires_grad_(False)
        self.model, self.loss_fn, self.default_support = model, loss_fn or F.cross_entropy, support
        self.shots = int(shots if shots is not None else info.get("shots", 1))
        self.max_steps = max_steps
        n = sum(math.prod(s) for _, s in layout)
        self.meta_state: dict = {"memory": None, "last_score": None, "task_steps": 0, "steps": 0, "tasks": 0,
                                 "n": n}

    # ------------------------------------------------------------------------------------------------ helpers
    def _params(self) -> list[Tensor]:
        return [p for grp in self.param_groups for p in grp["params"]]

    def _check_support(self, support: object) -> tuple[Tensor, Tensor]:
        if not (isinstance(support, (tuple, list)) and len(support) == 2
                and all(isinstance(t, Tensor) for t in support)):
            raise ValueError(f"AttentionMetaOptimizer.step: support must be (x, y) tensors or a closure returning "
                             f"them, got {type(support).__name__}")
        x, y = support
        if y.dim() != 1 or x.shape[0] != y.shape[0] or y.numel() == 0:
            raise ValueError(f"AttentionMetaOptimizer.step: support must be x [B, ...] and y [B] with B >= 1, got x "
                             f"{list(x.shape)} and y {list(y.shape)}")
        classes, counts = torch.unique(y, return_counts=True)
        few = counts < self.shots
        if bool(few.any()):
            c = int(classes[few][0])
            raise ValueError(f"AttentionMetaOptimizer.step: support has {int(counts[few][0])} example(s) of class "
                             f"{c}, expected at least shots={self.shots} per class")
        return x, y

    # ------------------------------------------------------------------------------------------------- steps
    @torch.no_grad()
    def step(self, support: Optional[Support] = None) -> Optional[Tensor]:   # type: ignore[override]
        """One meta-optimizer update. ``support``: (x [B, C, H, W], y [B]) or a closure returning it (default: the
        ``support`` given at construction). Returns the support loss (when computed here) or None; does nothing
        once ``max_steps`` steps of the current task are done."""
        if support is None:
            support = self.default_support
        if support is None:
            raise ValueError("AttentionMetaOptimizer.step: support is required (pass (x, y) or a closure, or give "
                             "support= at construction)")
        if callable(support):
            with torch.enable_grad():
                support = support()
        x, y = self._check_support(support)
        st = self.meta_state
        if self.max_steps is not None and st["task_steps"] >= self.max_steps:
            return None
        params = self._params()
        loss = None
        if self.model is not None:
            with torch.enable_grad():
                loss = self.loss_fn(self.model(x), y)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
            loss = loss.detach()
        else:
            if any(p.grad is None for p in params):
                raise ValueError("AttentionMetaOptimizer.step: every param needs .grad (call backward first) when "
                                 "no model is given")
            grads = [p.grad for p in params]
        dev = params[0].device
        net, enc = self.net.to(dev), self.encoder.to(dev)
        w = torch.cat([p.detach().reshape(-1).float() for p in params])
        g = torch.cat([q.detach().reshape(-1).float() for q in grads])
        score = importance_scores(w, g, net.config.keep)
        task = enc.task_representation(x.to(dev).float())
        memory = st["memory"].to(dev) if st["memory"] is not None else None
        delta = net(w, score, task, memory, grad=g if net.config.use_grad else None)
        i = 0
        for p in params:
            k = p.numel()
            p.add_(delta[i:i + k].view_as(p).to(p.dtype))
            i += k
        st["last_score"] = score.cpu()
        st["task_steps"] += 1
        st["steps"] += 1
        return loss

    def end_task(self) -> None:
        """Fold the last step's importance scores into the memory and start counting steps for the next task."""
        st = self.meta_state
        if st["last_score"] is not None:
            st["memory"] = st["last_score"] if st["memory"] is None else torch.maximum(st["memory"], st["last_score"])
        st["last_score"], st["task_steps"] = None, 0
        st["tasks"] += 1

    @property
    def memory(self) -> Optional[Tensor]:
        """Float [n] importance on the finished tasks (None before the first :meth:`end_task` after a step)."""
        return self.meta_state["memory"]

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none=set_to_none)

    # ------------------------------------------------------------------------------------------- state dicts
    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["attention_meta"] = {k: (v.clone() if isinstance(v, Tensor) else v) for k, v in self.meta_state.items()}
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        meta = state_dict.pop("attention_meta", None)
        if meta is None:
            raise ValueError("AttentionMetaOptimizer.load_state_dict: state_dict has no 'attention_meta' entry")
        if int(meta["n"]) != self.meta_state["n"]:
            raise ValueError(f"AttentionMetaOptimizer.load_state_dict: state is for {meta['n']} controlled weights, "
                             f"this optimizer has {self.meta_state['n']}")
        super().load_state_dict(state_dict)
        self.meta_state = {k: (v.clone() if isinstance(v, Tensor) else v) for k, v in meta.items()}
