"""HAT: hard attention to the task (Serra, Suris, Miron & Karatzoglou, ICML 2018).

Every hidden unit ``i`` of layer ``l`` gets a per-task attention ``a_{t,l,i} = sigmoid(s * e_{t,l,i})`` from a task
embedding ``e_t``; the unit's ReLU output is multiplied by it. During training ``s`` is annealed linearly from
``1 / s_max`` to ``s_max`` over every epoch (paper eq. 3), so the attention ends (and is evaluated) nearly binary at
``s = s_max``. After task ``t`` the cumulative attention ``a^{<=t} = max(a^{<t}, a_t)`` (at ``s_max``) marks the
units earlier tasks use; while later tasks train, the gradient of the weight joining unit ``j`` of layer ``l-1`` to
unit ``i`` of layer ``l`` is multiplied by ``1 - min(a^{<t}_{l,i}, a^{<t}_{l-1,j})`` (eq. 2; the first layer uses
only its output unit, a bias its own unit). The loss adds ``c * R`` with the normalised attention regulariser
``R = sum a_t (1 - a^{<t}) / sum (1 - a^{<t})`` over every hidden unit (eq. 5; for the first task ``a^{<t} = 0``),
the embedding gradients are compensated for the annealing, ``q' = s_max (cosh(s e) + 1) / (s (cosh(e) + 1)) q``
(eq. 6; ``s e`` clamped to ``thres_cosh``), and after every step the embeddings are clamped to
``[-thres_emb, thres_emb]``.

Masks and binarity. The attention used at evaluation is ``sigmoid(s_max e)`` in float32, as in the paper; it is
not thresholded. With ``s_max = 400`` it is exactly 0.0 or 1.0 in float32 wherever ``|e| >= 0.23``
(``s_max |e| >= 92``), and within 1e-6 of 0 or 1 wherever ``|e| >= 0.035``; :meth:`HAT.unit_masks` returns it
per layer so that this can be checked. A weight is *used by earlier tasks* where its cumulative attention
``min(a^{<t}_i, a^{<t}_j)`` is 1; its gradient is then exactly zero while later tasks train.

Model. HAT wraps a plain MLP: an ``nn.Sequential`` of an optional leading ``nn.Flatten``, hidden ``nn.Linear``
layers each followed by ``nn.ReLU`` (``nn.Dropout`` allowed anywhere) and a final ``nn.Linear`` output layer, or a
module with such an ``nn.Sequential`` ``body`` (without the output layer) and an ``nn.Linear`` ``head`` computing
``head(body(x))`` (``cltk.models.MLP``). The output layer is the multi-head: in task-IL each task's output units
are its own head, so it is not masked, as in the authors' code. :meth:`HAT.setup` returns a :class:`HATNet` that
reuses the given layers (same parameters) and adds one ``nn.Embedding(n_tasks, width)`` per hidden layer,
initialised N(0, 1) like the authors' code. Other models raise ``ValueError``.

Scenarios. Task-IL only: the attention of a sample is chosen by its task id, which domain-IL and class-IL do not
give at test time.

Defaults are the paper's and the authors' code's (github.com/joansj/hat, ``src/approaches/hat.py``): SGD with
lr 0.05, ``s_max = 400`` and ``c = 0.75`` (chosen there by grid search over s_max in 25..800 and c in 0.1..4),
``thres_cosh = 50``, ``thres_emb = 6``, gradient-norm clipping at 10000. The authors also divide the learning
rate by 3 when the validation loss stalls (patience 5, up to 200 epochs of batch 64); that schedule belongs to the
loop and is not part of this method. Many later comparisons (e.g. FACIL, Masana et al. 2022) run HAT with other
optimizers and learning rates; set ``optimizer`` / ``lr``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from cltk.methods.base import Batch, Method, MethodConfig, register
from cltk.streams.base import Stream, Task

__all__ = ["HAT", "HATConfig", "HATNet"]


@dataclass
class HATConfig(MethodConfig):
    """HAT's hyperparameters (paper / authors' code defaults).

    ``s_max``: the final (and evaluation) attention scale; ``c``: weight of the attention regulariser;
    ``thres_cosh``: clamp of ``s e`` inside the compensation's cosh; ``thres_emb``: embeddings are clamped to
    ``[-thres_emb, thres_emb]`` after each step; ``clip_grad``: gradient-norm clip (``0`` disables);
    ``anneal_steps``: number of optimizer steps over which ``s`` goes from ``1 / s_max`` to ``s_max`` before
    starting again, ``0`` meaning one epoch of the task's training data at the batch size of the task's first batch
    (the paper). ``weight_decay`` must be 0: decay would move weights that earlier tasks own.
    """

    optimizer: str = "sgd"
    lr: float = 0.05
    s_max: float = 400.0
    c: float = 0.75
    thres_cosh: float = 50.0
    thres_emb: float = 6.0
    clip_grad: float = 10000.0
    anneal_steps: int = 0

    def validate(self) -> None:
        super().validate()
        self.check_positive("s_max")
        if self.s_max <= 1.0:
            raise ValueError(f"{type(self).__name__}.s_max must be > 1 (s is annealed from 1/s_max up to s_max), "
                             f"got {self.s_max!r}")
        self.check_nonnegative("c")
        self.check_positive("thres_cosh")
        self.check_positive("thres_emb")
        self.check_nonnegative("clip_grad")
        self.check_int("anneal_steps", 0)
        if self.weight_decay != 0:
            raise ValueError(f"{type(self).__name__}.weight_decay must be 0 (decay would change weights that "
                             f"earlier tasks own), got {self.weight_decay!r}")


class HATNet(nn.Module):
    """An MLP with per-task hard attention on its hidden units.

    ``body`` is the wrapped ``nn.Sequential`` including the output layer (its modules and parameters are used as
    they are); ``embeddings[k]`` is the ``nn.Embedding(n_tasks, width_k)`` of the k-th hidden layer.
    ``forward(x, t, s)`` takes ``x`` [B, ...], ``t`` int64 [B] task ids and the scale ``s`` (default ``s_max``);
    it returns the logits [B, n_outputs]. ``features(x, t)`` is the attended last hidden layer at ``s_max``
    [B, width] (``features_take_task`` tells a loop to pass the task ids).
    """

    features_take_task = True

    def __init__(self, body: nn.Sequential, n_tasks: int, s_max: float = 400.0) -> None:
        super().__init__()
        mods = list(body)
        linears = [i for i, m in enumerate(mods) if isinstance(m, nn.Linear)]
        problems = []
        for i, m in enumerate(mods):
            if not isinstance(m, (nn.Linear, nn.ReLU, nn.Dropout, nn.Flatten)):
                problems.append(f"module {i} is a {type(m).__name__}")
            elif isinstance(m, nn.Flatten) and i != 0:
                problems.append(f"module {i} is an nn.Flatten that is not the first module")
        if not linears or linears[-1] != max(i for i, m in enumerate(mods) if not isinstance(m, nn.Dropout)):
            problems.append("the last module (dropout aside) must be the nn.Linear output layer")
        # the unit that each hidden Linear feeds: its ReLU, the next module that is not a dropout
        self._gate_after: dict[int, int] = {}     # index of a ReLU -> index of its hidden layer's embedding
        for k, i in enumerate(linears[:-1]):
            j = i + 1
            while j < len(mods) and isinstance(mods[j], nn.Dropout):
                j += 1
            if j >= len(mods) or not isinstance(mods[j], nn.ReLU):
                problems.append(f"hidden nn.Linear at module {i} must be followed by nn.ReLU")
            else:
                self._gate_after[j] = k
        if len([m for m in mods if isinstance(m, nn.ReLU)]) != len(self._gate_after):
            problems.append("every nn.ReLU must directly follow a hidden nn.Linear")
        if problems:
            raise ValueError("HAT supports an nn.Sequential MLP ([nn.Flatten], then nn.Linear + nn.ReLU hidden "
                             "layers, then an nn.Linear output layer; nn.Dropout allowed): " + "; ".join(problems))
        self.body = body
        self.s_max = float(s_max)
        self._head_index = linears[-1]
        self.linears: list[nn.Linear] = [mods[i] for i in linears]
        self.embeddings = nn.ModuleList(nn.Embedding(n_tasks, lin.out_features) for lin in self.linears[:-1])
        # default nn.Embedding init, N(0, 1), as in the authors' code
        for emb in self.embeddings:
            emb.to(device=self.linears[0].weight.device, dtype=self.linears[0].weight.dtype)

    def unit_masks(self, t: Tensor, s: float) -> list[Tensor]:
        """Attention ``sigmoid(s * e_t)`` of every hidden layer, each [len(t), width] (``t`` int64 [B])."""
        return [torch.sigmoid(s * emb(t)) for emb in self.embeddings]

    def _run(self, x: Tensor, t: Tensor, s: float, stop: int) -> Tensor:
        masks = self.unit_masks(t, s)
        h = x
        for i, m in enumerate(self.body):
            if i == stop:
                break
            h = m(h)
            k = self._gate_after.get(i)
            if k is not None:
                h = h * masks[k]
        return h

    def forward(self, x: Tensor, t: Tensor, s: Optional[float] = None) -> Tensor:
        return self._run(x, t, self.s_max if s is None else s, len(self.body))

    def features(self, x: Tensor, t: Tensor) -> Tensor:
        return self._run(x, t, self.s_max, self._head_index)


def _weight_views(net: HATNet, masks: list[Tensor]) -> dict[Tensor, Tensor]:
    """For each masked parameter, the attention (same shape) of the units it connects: eq. 2's min(a_i, a_j).

    ``masks``: one [width] vector per hidden layer. The output layer is not masked.
    """
    views: dict[Tensor, Tensor] = {}
    for k, lin in enumerate(net.linears[:-1]):
        post = masks[k]
        w = post[:, None].expand_as(lin.weight)
        if k > 0:
            w = torch.minimum(w, masks[k - 1][None, :].expand_as(lin.weight))
        views[lin.weight] = w
        if lin.bias is not None:
            views[lin.bias] = post
    return views


@register
class HAT(Method):
    """Hard attention to the task (task-IL). See the module docstring for the algorithm and its defaults."""

    name = "hat"
    description = "hard attention masks per task on hidden units, gradients of earlier tasks' units blocked"
    paper = "Serra et al. 2018, Overcoming catastrophic forgetting with hard attention to the task (ICML)"
    scenarios = ("task",)
    Config = HATConfig
    config: HATConfig

    def __init__(self, config: Optional[HATConfig] = None, **overrides) -> None:
        super().__init__(config, **overrides)
        self.net: Optional[HATNet] = None
        self.cumulative: Optional[list[Tensor]] = None   # a^{<t} per hidden layer, [width] each
        self.tasks_done = 0
        self.step = 0              # optimizer steps in the current task
        self.steps_per_cycle = 0   # anneal_steps, or one epoch once the first batch of the task is seen
        self.s = 1.0 / self.config.s_max

    # -- lifecycle ---------------------------------------------------------------------------------------
    def setup(self, model: nn.Module, stream: Stream) -> nn.Module:
        if stream.scenario not in self.scenarios:
            raise ValueError(f"method {self.name!r} does not support the {stream.scenario!r} scenario "
                             f"(supported: {', '.join(self.scenarios)}): the attention mask is chosen by the "
                             f"task id, which only task-IL gives at test time")
        n_tasks, s_max = len(stream.tasks), self.config.s_max
        if isinstance(model, HATNet):
            net = model
        elif isinstance(model, nn.Sequential):
            net = HATNet(model, n_tasks, s_max)
        elif isinstance(getattr(model, "body", None), nn.Sequential) and isinstance(getattr(model, "head", None),
                                                                                   nn.Linear):
            net = HATNet(nn.Sequential(*model.body, model.head), n_tasks, s_max)
        else:
            raise ValueError(f"HAT supports an nn.Sequential MLP of nn.Linear + nn.ReLU layers (or a module with "
                             f"such an nn.Sequential body and an nn.Linear head), got a {type(model).__name__}")
        self.net = net
        self.cumulative = [torch.zeros(e.embedding_dim, device=e.weight.device) for e in net.embeddings]
        super().setup(net, stream)
        return net

    def before_task(self, task: Task) -> None:
        super().before_task(task)
        self.step = 0
        self.steps_per_cycle = self.config.anneal_steps
        self.s = 1.0 / self.config.s_max

    def _scale(self) -> float:
        """Eq. 3: s = 1/s_max + (s_max - 1/s_max) (b - 1) / (B - 1) for the b-th of B batches of the cycle."""
        c = self.config
        n = max(self.steps_per_cycle, 1)
        b = self.step % n
        return 1.0 / c.s_max + (c.s_max - 1.0 / c.s_max) * (b / (n - 1) if n > 1 else 1.0)

    def forward(self, model: nn.Module, x: Tensor, t: Tensor) -> Tensor:
        return model(x, t, self.s if model.training else self.config.s_max)

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        if self.steps_per_cycle == 0 and self.task is not None:
            self.steps_per_cycle = max(1, math.ceil(len(self.task.train) / max(1, batch.y.shape[0])))
        self.s = self._scale() if model.training else self.config.s_max
        return super().loss(model, batch)

    def penalty(self, model: nn.Module) -> Optional[Tensor]:
        if self.config.c == 0 or self.task is None:
            return None
        t = torch.tensor([self.task.index], device=model.embeddings[0].weight.device)
        num = model.embeddings[0].weight.new_zeros(())
        den = model.embeddings[0].weight.new_zeros(())
        for a, prev in zip(model.unit_masks(t, self.s), self.cumulative):
            free = 1.0 - prev
            num = num + (a[0] * free).sum()
            den = den + free.sum()
        # den is 0 only if earlier tasks use every unit; then the numerator is 0 too
        return self.config.c * num / den.clamp_min(1e-12)

    @torch.no_grad()
    def after_backward(self, model: nn.Module) -> None:
        c = self.config
        if self.tasks_done > 0:
            for p, used in _weight_views(model, self.cumulative).items():
                if p.grad is not None:
                    p.grad.mul_(1.0 - used)
        s = self.s
        for emb in model.embeddings:
            g = emb.weight.grad
            if g is not None:
                e = emb.weight
                num = torch.cosh(torch.clamp(s * e, -c.thres_cosh, c.thres_cosh)) + 1.0
                den = torch.cosh(e) + 1.0
                g.mul_(c.s_max / s * num / den)
        if c.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], c.clip_grad)

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        for emb in model.embeddings:
            emb.weight.clamp_(-self.config.thres_emb, self.config.thres_emb)
        self.step += 1

    @torch.no_grad()
    def after_task(self, task: Task) -> None:
        net = self._need_net()
        t = torch.tensor([task.index], device=net.embeddings[0].weight.device)
        masks = [m[0] for m in net.unit_masks(t, self.config.s_max)]
        self.cumulative = [torch.maximum(prev, m) for prev, m in zip(self.cumulative, masks)]
        self.tasks_done = task.index + 1

    def eval_logits(self, model: nn.Module, x: Tensor, t: Tensor) -> Tensor:
        return model(x, t, self.config.s_max)

    # -- inspection ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def unit_masks(self, task_index: int) -> list[Tensor]:
        """The evaluation attention ``sigmoid(s_max e_t)`` of task ``task_index``, one [width] per hidden layer."""
        net = self._need_net()
        t = torch.tensor([task_index], device=net.embeddings[0].weight.device)
        return [m[0].clone() for m in net.unit_masks(t, self.config.s_max)]

    @torch.no_grad()
    def used_weights(self) -> dict[Tensor, Tensor]:
        """Per masked parameter, the cumulative attention ``min(a^{<t}_i, a^{<t}_j)`` of the tasks finished so far."""
        return {p: v.clone() for p, v in _weight_views(self._need_net(), self.cumulative).items()}

    # -- state ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"cumulative": [m.clone() for m in self.cumulative] if self.cumulative is not None else None,
                "tasks_done": self.tasks_done, "step": self.step, "steps_per_cycle": self.steps_per_cycle,
                "s": self.s}

    def load_state_dict(self, state: dict) -> None:
        cum = state["cumulative"]
        if cum is not None and self.cumulative is not None:
            if [m.shape for m in cum] != [m.shape for m in self.cumulative]:
                raise ValueError(f"HAT.load_state_dict: cumulative mask shapes {[tuple(m.shape) for m in cum]} "
                                 f"do not match the model's {[tuple(m.shape) for m in self.cumulative]}")
            cum = [m.to(p.device) for m, p in zip(cum, self.cumulative)]
        self.cumulative = None if cum is None else [m.clone() for m in cum]
        self.tasks_done = int(state["tasks_done"])
        self.step = int(state["step"])
        self.steps_per_cycle = int(state["steps_per_cycle"])
        self.s = float(state["s"])

    def _need_net(self) -> HATNet:
        if self.net is None:
            raise RuntimeError("method 'hat': call setup(model, stream) first")
        return self.net
