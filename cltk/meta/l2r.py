"""Learning to Remember from a Multi-Task Teacher (Xiong, Ren & Urtasun 2019): a meta-learned, per-layer update rule.

A student network learns a new task B with the update ``w <- w - alpha * (delta ⊙ g)``, where ``g`` is the
gradient of B's loss and the gate ``delta = f(w, g, h_pre, h_post; theta)`` comes from one meta-learner per student
layer (conv, GroupNorm); the classification layer uses plain SGD. The meta-learner is trained (Algorithm 1) so that
the student's representation follows that of a multi-task teacher trained on A ∪ B, which does not forget A.

Meta-learner (:class:`L2RMetaLearner`): per layer a 3-layer stacked LSTM, a tanh output layer that starts at
weight 0 / bias 1, and a learnable scale (:func:`cltk.ops.meta_lstm_init`), so every gate starts at
``scale * tanh(1)``. The stack is exactly ``nn.LSTM(F, H, num_layers=3)`` (no ReLU between layers: the fused kernel
:func:`cltk.ops.meta_lstm` uses the LSTM's own nonlinearities, and this keeps it equal to nn.LSTM). Two variants:

* ``"synapse"`` (default): one row per synapse, features ``(w, g, h_i, h'_j)``: ``h_i`` the mean pre-synaptic
  activation of input channel ``i`` (the layer's input), ``h'_j`` the mean output of channel ``j`` (the layer's
  output), means over batch and space, on the batch that gave ``g``. A GroupNorm channel ``j`` has ``h_i = h_j``
  of its input. One gate per synapse, from the fused kernel's head.
* ``"neuron"`` (the paper's): one row per output channel ``j``; input = its incoming weights and gradients
  (``C_in*kh*kw`` each; ``gamma_j, beta_j`` and their gradients for GroupNorm), the pre-activations (all ``C_in``
  channel means for a conv, channel ``j``'s for GroupNorm) and its post-activation (1); the LSTM stack runs in the
  fused kernel and a multi-output head (``Linear(H, C_in*kh*kw)``, weight 0 / bias 1, tanh, learnable scale) in
  PyTorch gives the row's gates. Hidden 64 for convs, 32 for GroupNorm (the paper's sizes).

Feature normalisation: every feature is divided by the root mean square of its tensor (``w / rms(w)``,
``g / rms(g)``, ``h / rms(h)``, each over the layer tensor it comes from; the rms is a constant for the backward).
Gradients are 1e-4..1e-2 and differ by orders of magnitude between layers; per-tensor scaling gives the LSTM inputs
of order one while keeping each synapse's relative size. The gate multiplies the raw ``g``.

Meta-training (:func:`meta_train`, Algorithm 1): teacher and student start from the same checkpoint pretrained on
A. Each inner step the teacher takes a plain SGD step on a batch of A ∪ B, the student takes the gated step on a
batch of B only, and the meta-loss is ``huber_scale * Huber(f_student(x), f_teacher(x))`` on the penultimate
features of a batch of A ∪ B. The student's weights are a differentiable function of ``theta`` across a window of
``T`` inner steps (truncated BPTT; at the window's end the student and the LSTM states are detached). First order:
the student's gradient ``g`` is computed on the detached weights and treated as a constant, and so are the
activation features; ``w`` enters the features differentiably. Curriculum: the truncation length grows from
``trunc_start`` by one every ``trunc_every`` meta-steps up to ``trunc_max``, and the loss threshold from
``threshold_start`` by the factor ``threshold_growth`` every ``threshold_every`` meta-steps up to
``threshold_max``; when a window's mean meta-loss exceeds the threshold, or the inner loop reaches ``inner_steps``,
student and teacher are reset to the A checkpoint (a new episode).

The student (:func:`student_init`, :func:`student_forward`) is a small ResNet-style CNN with GroupNorm on 14x14
grayscale images (about 19k parameters, 48-d penultimate features), written functionally so the gated updates stay
differentiable.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cltk._config import ConfigChecks
from cltk.ops.metalstm import meta_lstm, meta_lstm_init

__all__ = ["L2RConfig", "L2RMetaLearner", "STUDENT_LAYERS", "META_LAYERS", "student_init", "student_forward",
           "student_features", "layer_shapes", "clone_params", "meta_learner_update", "pretrain", "gated_step", "sgd_step", "meta_train", "meta_test", "Stage", "Episode",
           "save_l2r_checkpoint", "load_l2r_checkpoint", "L2R_FORMAT"]

L2R_FORMAT = 1

# (layer name, kind, parameter names); the meta-learned layers are every conv and GroupNorm; "head" is plain SGD.
STUDENT_LAYERS: list[tuple[str, str, tuple[str, ...]]] = [
    ("c1", "conv", ("c1.w",)), ("n1", "gn", ("n1.g", "n1.b")),
    ("c2", "conv", ("c2.w",)), ("n2", "gn", ("n2.g", "n2.b")),
    ("c3", "conv", ("c3.w",)), ("n3", "gn", ("n3.g", "n3.b")),
    ("c4", "conv", ("c4.w",)), ("n4", "gn", ("n4.g", "n4.b")),
    ("head", "linear", ("head.w", "head.b")),
]
META_LAYERS = [s for s in STUDENT_LAYERS if s[1] != "linear"]


# --------------------------------------------------------------------------------------------------- config

@dataclass
class L2RConfig(ConfigChecks):
    """Meta-learner and meta-training settings ("paper": Xiong et al. 2019; "cltk": chosen for a CPU-minute run).

    * ``variant`` ``"synapse"`` (cltk, fused kernel) or ``"neuron"`` (paper); ``hidden`` 16 for the synapse
      variant (cltk); the neuron variant uses ``hidden_conv`` 64 and ``hidden_norm`` 32 (paper); ``lstm_layers`` 3
      (paper); ``init_scale`` 1.0: the initial learnable scale, so every gate starts at tanh(1) = 0.76.
    * ``lr`` 0.05: the student's step size alpha, also the plain-SGD rate of the head, the teacher and the SGD
      baseline (cltk).
    * ``batch_size`` 32 (cltk) for student, teacher and meta-loss batches.
    * ``meta_steps`` 300 meta-updates (truncation windows), ``meta_lr`` 1e-3 Adam (cltk), ``grad_clip`` 1.0.
    * ``huber_scale`` 100, ``huber_delta`` 1.0: the meta-loss ``huber_scale * Huber(f_s, f_t)`` (cltk: features are
      of order 0.1-1 and start equal, so the unscaled loss is ~1e-4).
    * curriculum: ``trunc_start`` 2, ``trunc_max`` 10, ``trunc_every`` 30; ``threshold_start`` 1.0,
      ``threshold_growth`` 1.5, ``threshold_every`` 50, ``threshold_max`` 8.0; ``inner_steps`` 500 (the meta-test
      length) before an episode restarts regardless (cltk).
    * ``seed`` 0: the meta-learner's initialisation and the episode sampling.
    """

    variant: str = "synapse"
    hidden: int = 16
    hidden_conv: int = 64
    hidden_norm: int = 32
    lstm_layers: int = 3
    init_scale: float = 1.0
    lr: float = 0.05
    batch_size: int = 32
    meta_steps: int = 300
    meta_lr: float = 1e-3
    grad_clip: float = 1.0
    huber_scale: float = 100.0
    huber_delta: float = 1.0
    trunc_start: int = 2
    trunc_max: int = 10
    trunc_every: int = 30
    threshold_start: float = 1.0
    threshold_growth: float = 1.5
    threshold_every: int = 50
    threshold_max: float = 8.0
    inner_steps: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        self.check_choice("variant", ("synapse", "neuron"))
        for n in ("hidden", "hidden_conv", "hidden_norm", "lstm_layers", "batch_size", "trunc_start", "trunc_max",
                  "trunc_every", "threshold_every", "inner_steps"):
            self.check_int(n, 1)
        self.check_int("meta_steps", 0)
        self.check_int("seed", 0)
        for n in ("init_scale", "lr", "meta_lr", "grad_clip", "huber_scale", "huber_delta", "threshold_start",
                  "threshold_max"):
            self.check_positive(n)
        if self._value("threshold_growth") < 1.0:
            raise ValueError(f"L2RConfig.threshold_growth must be >= 1, got {self.threshold_growth!r}")
        if self.trunc_max < self.trunc_start:
            raise ValueError(f"L2RConfig.trunc_max must be >= trunc_start = {self.trunc_start}, got {self.trunc_max}")

    def truncation(self, meta_step: int) -> int:
        return min(self.trunc_max, self.trunc_start + meta_step // self.trunc_every)

    def threshold(self, meta_step: int) -> float:
        return min(self.threshold_max,
                   self.threshold_start * self.threshold_growth ** (meta_step // self.threshold_every))


# --------------------------------------------------------------------------------------------------- student

def student_init(n_classes: int = 10, widths: Sequence[int] = (12, 24, 48), groups: int = 4,
                 generator: Optional[torch.Generator] = None) -> dict[str, Tensor]:
    """Fresh student parameters (Kaiming-normal convs without bias, GroupNorm gamma 1 / beta 0, a linear head).

    Layout: c1 conv 1->w0 (14x14), c2 conv w0->w1 stride 2 (7x7), c3 conv w1->w1 in a residual block, c4 conv
    w1->w2 stride 2 (4x4), each followed by GroupNorm(groups) and ReLU; global average pooling gives the
    w2-d penultimate features; head Linear(w2, n_classes).
    """
    w0, w1, w2 = (int(w) for w in widths)
    for w in (w0, w1, w2):
        if w % groups:
            raise ValueError(f"student_init: every width must be divisible by groups={groups}, got widths {widths}")

    def conv(cout, cin):
        return torch.randn(cout, cin, 3, 3, generator=generator) * math.sqrt(2.0 / (cin * 9))

    p = {"c1.w": conv(w0, 1), "c2.w": conv(w1, w0), "c3.w": conv(w1, w1), "c4.w": conv(w2, w1)}
    for name, c in (("n1", w0), ("n2", w1), ("n3", w1), ("n4", w2)):
        p[f"{name}.g"] = torch.ones(c)
        p[f"{name}.b"] = torch.zeros(c)
    k = 1.0 / math.sqrt(w2)
    p["head.w"] = (torch.rand(n_classes, w2, generator=generator) * 2 - 1) * k
    p["head.b"] = (torch.rand(n_classes, generator=generator) * 2 - 1) * k
    p["_groups"] = torch.tensor(groups)
    return p


def _mean_c(t: Tensor) -> Tensor:
    return t.detach().mean(dim=(0, 2, 3))


def student_forward(p: dict[str, Tensor], x: Tensor, record: Optional[dict] = None,
                    masks: Optional[Sequence[Tensor]] = None) -> tuple[Tensor, Tensor]:
    """``(features [B, w2], logits [B, n_classes])`` of images ``x`` [B, 1, 14, 14]. With ``record`` (a dict),
    ``record[layer] = (pre [C_in], post [C_out])``: detached channel means of each meta layer's input and output.
    ``masks``: four per-channel multipliers of the blocks' outputs (HAT's unit masks)."""
    groups = int(p["_groups"])
    m = [None] * 4 if masks is None else [mk[None, :, None, None] for mk in masks]

    def mask(h, k):
        return h if m[k] is None else h * m[k]

    def layer(h, cname, nname, stride):
        z = F.conv2d(h, p[f"{cname}.w"], stride=stride, padding=1)
        n = F.group_norm(z, groups, p[f"{nname}.g"], p[f"{nname}.b"])
        if record is not None:
            record[cname] = (_mean_c(h), _mean_c(z))
            record[nname] = (_mean_c(z), _mean_c(n))
        return n

    h1 = mask(F.relu(layer(x, "c1", "n1", 1)), 0)
    h2 = mask(F.relu(layer(h1, "c2", "n2", 2)), 1)
    h3 = mask(F.relu(h2 + layer(h2, "c3", "n3", 1)), 2)
    h4 = mask(F.relu(layer(h3, "c4", "n4", 2)), 3)
    feats = h4.mean(dim=(2, 3))
    return feats, feats @ p["head.w"].T + p["head.b"]


@torch.no_grad()
def student_features(p: dict[str, Tensor], x: Tensor, batch: int = 1000,
                     masks: Optional[Sequence[Tensor]] = None) -> Tensor:
    return torch.cat([student_forward(p, x[i:i + batch], masks=masks)[0] for i in range(0, len(x), batch)])


def _params(p: dict[str, Tensor]) -> list[str]:
    return [n for n in p if not n.startswith("_")]


def clone_params(p: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in p.items()}


def pretrain(p: dict[str, Tensor], x: Tensor, y: Tensor, steps: int, lr: float = 0.05, momentum: float = 0.9,
             batch_size: int = 64, generator: Optional[torch.Generator] = None,
             trainable: Optional[Sequence[str]] = None) -> dict[str, Tensor]:
    """Train the student on (x, y) with SGD + momentum (the Task-A checkpoint); returns new parameters.
    ``trainable``: the parameter names that learn (default all)."""
    p = clone_params(p)
    names = list(trainable) if trainable is not None else _params(p)
    for n in names:
        p[n].requires_grad_()
    opt = torch.optim.SGD([p[n] for n in names], lr=lr, momentum=momentum)
    for _ in range(steps):
        idx = torch.randint(0, len(y), (batch_size,), generator=generator)
        loss = F.cross_entropy(student_forward(p, x[idx])[1], y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return clone_params(p)


def _grads(p: dict[str, Tensor], x: Tensor, y: Tensor, extra: Optional[Callable] = None
           ) -> tuple[dict[str, Tensor], dict, Tensor]:
    """First-order gradient of the cross-entropy (plus ``extra(params, logits)``) at the detached weights."""
    d = {k: (v.detach().requires_grad_() if not k.startswith("_") else v) for k, v in p.items()}
    rec: dict = {}
    with torch.enable_grad():
        _, logits = student_forward(d, x, rec)
        loss = F.cross_entropy(logits, y)
        if extra is not None:
            loss = loss + extra(d, logits)
        names = _params(d)
        g = torch.autograd.grad(loss, [d[n] for n in names])
    return dict(zip(names, g)), rec, loss.detach()


def sgd_step(p: dict[str, Tensor], x: Tensor, y: Tensor, lr: float, extra: Optional[Callable] = None,
             trainable: Optional[Sequence[str]] = None) -> dict[str, Tensor]:
    """One plain SGD step (teacher and baselines); ``extra(params, logits)`` adds a penalty to the loss;
    ``trainable``: the parameter names that learn (default all)."""
    g, _, _ = _grads(p, x, y, extra)
    keep = set(g) if trainable is None else set(trainable)
    return {k: (v.detach() - lr * g[k] if k in keep else v) for k, v in p.items()}


# ---------------------------------------------------------------------------------------------- meta-learner

def _rms(t: Tensor) -> Tensor:
    return t.detach().pow(2).mean().sqrt().clamp_min(1e-12)


class L2RMetaLearner(nn.Module):
    """One meta-LSTM per meta layer of the student (see the module docstring for both variants).

    ``shapes``: ``{layer: [param shape, ...]}`` of the student's meta layers (:func:`layer_shapes`).
    """

    def __init__(self, shapes: dict[str, list[tuple[int, ...]]], config: Optional[L2RConfig] = None) -> None:
        super().__init__()
        self.config = c = config or L2RConfig()
        self.shapes = {k: [tuple(s) for s in v] for k, v in shapes.items()}
        g = torch.Generator().manual_seed(c.seed)
        self.lstm = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        self.scales = nn.ParameterDict()
        for name, kind, _ in META_LAYERS:
            if name not in self.shapes:
                raise ValueError(f"L2RMetaLearner: shapes has no layer {name!r} (has {sorted(self.shapes)})")
            sh = self.shapes[name]
            if c.variant == "synapse":
                F_in, H = 4, c.hidden
            else:
                cin_k = math.prod(sh[0][1:]) if kind == "conv" else len(sh)
                cin = sh[0][1] if kind == "conv" else 1
                F_in, H = 2 * cin_k + cin + 1, (c.hidden_conv if kind == "conv" else c.hidden_norm)
            w = meta_lstm_init(F_in, H, c.lstm_layers, scale=c.init_scale, generator=g)
            if c.variant == "synapse":
                self.lstm[name] = nn.ParameterList([nn.Parameter(t.detach()) for t in w])
            else:
                self.lstm[name] = nn.ParameterList([nn.Parameter(t.detach()) for t in w[:4]])
                n_out = math.prod(sh[0][1:]) if kind == "conv" else len(sh)
                head = nn.Linear(H, n_out)
                nn.init.zeros_(head.weight)
                nn.init.ones_(head.bias)
                self.heads[name] = head
                self.scales[name] = nn.Parameter(torch.tensor(float(c.init_scale)))

    def signature(self) -> list[str]:
        return [f"{self.config.variant}:{k}:{v}" for k, v in self.shapes.items()]

    def rows(self, name: str) -> int:
        sh = self.shapes[name]
        return sum(math.prod(s) for s in sh) if self.config.variant == "synapse" else sh[0][0]

    def init_state(self) -> dict[str, tuple[Tensor, Tensor]]:
        state = {}
        for name, kind, _ in META_LAYERS:
            lst = self.lstm[name]
            H = lst[2].shape[2]
            z = torch.zeros(self.config.lstm_layers, H, self.rows(name))
            state[name] = (z, z.clone())
        return state

    def _features(self, name: str, kind: str, ws: list[Tensor], gs: list[Tensor], pre: Tensor, post: Tensor
                  ) -> Tensor:
        pre_n, post_n = pre / _rms(pre), post / _rms(post)
        if self.config.variant == "synapse":
            cols = []
            for w, g in zip(ws, gs):
                if kind == "conv":
                    hi = pre_n[None, :, None, None].expand(w.shape)
                    hj = post_n[:, None, None, None].expand(w.shape)
                else:
                    hi, hj = pre_n, post_n
                cols.append(torch.stack([(w / _rms(w)).reshape(-1), (g / _rms(g)).reshape(-1),
                                         hi.reshape(-1), hj.reshape(-1)], dim=1))
            return torch.cat(cols)
        cout = ws[0].shape[0]
        wf = torch.cat([(w / _rms(w)).reshape(cout, -1) for w in ws], dim=1)
        gf = torch.cat([(g / _rms(g)).reshape(cout, -1) for g in gs], dim=1)
        pf = pre_n.expand(cout, -1) if kind == "conv" else pre_n[:, None]
        return torch.cat([wf, gf, pf, post_n[:, None]], dim=1)

    def gates(self, name: str, kind: str, ws: list[Tensor], gs: list[Tensor], pre: Tensor, post: Tensor,
              state: tuple[Tensor, Tensor]) -> tuple[list[Tensor], tuple[Tensor, Tensor]]:
        """Gates ``delta`` (shaped like ``ws``) of one layer and its new LSTM state."""
        x = self._features(name, kind, ws, gs, pre, post)
        lst = list(self.lstm[name])
        h, c = state
        if self.config.variant == "synapse":
            out, h1, c1 = meta_lstm(x, h, c, *lst)
            deltas, o = [], 0
            for w in ws:
                deltas.append(out[o:o + w.numel()].reshape(w.shape))
                o += w.numel()
            return deltas, (h1, c1)
        H = lst[2].shape[2]
        zero = x.new_zeros(())
        _, h1, c1 = meta_lstm(x, h, c, *lst, x.new_zeros(H), zero, x.new_ones(()))
        gate = self.scales[name] * torch.tanh(self.heads[name](h1[-1].T))       # [C_out, C_in*kh*kw]
        cout = ws[0].shape[0]
        deltas, o = [], 0
        for w in ws:
            k = w.numel() // cout
            deltas.append(gate[:, o:o + k].reshape(w.shape))
            o += k
        return deltas, (h1, c1)


def layer_shapes(p: dict[str, Tensor]) -> dict[str, list[tuple[int, ...]]]:
    return {name: [tuple(p[n].shape) for n in pn] for name, _, pn in META_LAYERS}


def gated_step(learner: L2RMetaLearner, p: dict[str, Tensor], state: dict, x: Tensor, y: Tensor, lr: float,
               gate_log: Optional[list] = None) -> tuple[dict[str, Tensor], dict, Tensor]:
    """The student's step on a batch of B: ``w <- w - lr * delta ⊙ g`` on meta layers, plain SGD on the head.

    Differentiable w.r.t. the meta-learner and ``p`` (``g`` is a constant, first order). Returns
    ``(new params, new state, loss before the step)``; ``gate_log`` receives the detached gates.
    """
    g, rec, loss = _grads(p, x, y)
    new = dict(p)
    new_state = {}
    for name, kind, pnames in META_LAYERS:
        ws = [p[n] for n in pnames]
        gs = [g[n] for n in pnames]
        deltas, new_state[name] = learner.gates(name, kind, ws, gs, rec[name][0], rec[name][1], state[name])
        for n, d in zip(pnames, deltas):
            new[n] = p[n] - lr * d * g[n]
            if gate_log is not None:
                gate_log.append(d.detach().reshape(-1))
    for n in STUDENT_LAYERS[-1][2]:
        new[n] = p[n] - lr * g[n]
    return new, new_state, loss


# ------------------------------------------------------------------------------------------------ episodes

@dataclass
class Stage:
    """One new task of an episode: the student's data ``(bx, by)`` and the teacher's ``(abx, aby)`` (A ∪ B so
    far), for ``steps`` inner steps (the last stage runs until the episode restarts)."""

    bx: Tensor
    by: Tensor
    abx: Tensor
    aby: Tensor
    steps: int


@dataclass
class Episode:
    checkpoint: dict
    stages: list[Stage]


def _batch(x: Tensor, y: Tensor, n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    idx = torch.randint(0, len(y), (n,), generator=g)
    return x[idx], y[idx]


def meta_train(learner: L2RMetaLearner, sample_episode: Callable[[torch.Generator], Episode],
               log: Optional[Callable[[dict], None]] = None) -> dict:
    """Algorithm 1 (see the module docstring). ``sample_episode(generator)`` gives a new episode (an A checkpoint
    and its B stages) at every restart. Returns the history: per meta-step loss, truncation, threshold, restarts."""
    c = learner.config
    opt = torch.optim.Adam(learner.parameters(), lr=c.meta_lr)
    gen = torch.Generator().manual_seed(c.seed + 1)
    hist = {"loss": [], "truncation": [], "threshold": [], "restarts": 0, "inner_steps": 0}

    def restart():
        ep = sample_episode(gen)
        return ep, clone_params(ep.checkpoint), clone_params(ep.checkpoint), learner.init_state(), 0

    ep, student, teacher, state, t_in = restart()
    for step in range(c.meta_steps):
        T, thr = c.truncation(step), c.threshold(step)
        total = 0.0
        for _ in range(T):
            k, acc = 0, 0
            for k, st in enumerate(ep.stages):
                acc += st.steps
                if t_in < acc:
                    break
            st = ep.stages[k]
            teacher = sgd_step(teacher, *_batch(st.abx, st.aby, c.batch_size, gen), c.lr)
            student, state, _ = gated_step(learner, student, state, *_batch(st.bx, st.by, c.batch_size, gen), c.lr)
            mx, _ = _batch(st.abx, st.aby, c.batch_size, gen)
            with torch.no_grad():
                ft = student_forward(teacher, mx)[0]
            fs = student_forward(student, mx)[0]
            total = total + c.huber_scale * F.huber_loss(fs, ft, delta=c.huber_delta)
            t_in += 1
        loss = total / T
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(learner.parameters(), c.grad_clip)
        opt.step()
        student = clone_params(student)
        state = {k: (h.detach(), cc.detach()) for k, (h, cc) in state.items()}
        lv = float(loss.detach())
        hist["loss"].append(lv)
        hist["truncation"].append(T)
        hist["threshold"].append(thr)
        hist["inner_steps"] += T
        if log is not None:
            log({"step": step, "loss": lv, "truncation": T, "threshold": thr, "inner": t_in})
        if lv > thr or t_in >= c.inner_steps:
            hist["restarts"] += 1
            ep, student, teacher, state, t_in = restart()
    return hist


@torch.no_grad()
def meta_test(update: Callable[[dict, Tensor, Tensor, int], dict], checkpoint: dict, stages: list[Stage],
              evals: dict[str, tuple[Tensor, Tensor, Tensor, Tensor]], every: int, batch_size: int, seed: int,
              features: Optional[Callable[[dict, Tensor, str], Tensor]] = None) -> dict[str, list[float]]:
    """Learn the stages from ``checkpoint`` with ``update(params, x, y, step) -> params`` (the meta-learner alone,
    or a baseline); every ``every`` steps (and at 0) record the readout accuracy of each ``evals`` task
    ``name: (train_x, train_y, test_x, test_y)``; ``features(params, x, task)`` (default: the penultimate
    features) gives the readout's inputs. Returns ``{"step": [...], name: [...]}``."""
    from cltk.metrics import readout_accuracy
    gen = torch.Generator().manual_seed(seed)
    p = clone_params(checkpoint)
    curves: dict[str, list[float]] = {"step": []}
    feats = features or (lambda q, x, task: student_features(q, x))

    def record(step):
        curves["step"].append(step)
        for name, (trx, try_, tex, tey) in evals.items():
            acc = readout_accuracy(feats(p, trx, name), try_, feats(p, tex, name), tey)
            curves.setdefault(name, []).append(acc)

    record(0)
    t = 0
    for st in stages:
        for _ in range(st.steps):
            with torch.enable_grad():
                p = update(p, *_batch(st.bx, st.by, batch_size, gen), t)
            t += 1
            if t % every == 0:
                record(t)
    return curves


def meta_learner_update(learner: L2RMetaLearner, lr: float, gate_log: Optional[dict] = None,
                        log_steps: Sequence[int] = ()) -> Callable:
    """An ``update`` for :func:`meta_test`: the gated step without gradients w.r.t. the meta-learner."""
    box = {"state": learner.init_state()}

    def update(p, x, y, t):
        if t == 0:
            box["state"] = learner.init_state()
        log = [] if (gate_log is not None and t in log_steps) else None
        with torch.no_grad():
            new, box["state"], _ = gated_step(learner, p, box["state"], x, y, lr, log)
        if log is not None:
            gate_log[t] = torch.cat(log)
        return clone_params(new)

    return update


# --------------------------------------------------------------------------------------------- checkpoints

def save_l2r_checkpoint(path, learner: L2RMetaLearner, info: Optional[dict] = None) -> Path:
    """Write the meta-learner (weights, config, layer shapes) atomically."""
    from cltk.checkpoint import save_checkpoint
    return save_checkpoint({"kind": "cltk.l2r", "format": L2R_FORMAT, "config": asdict(learner.config),
                            "signature": learner.signature(),
                            "shapes": {k: [list(s) for s in v] for k, v in learner.shapes.items()},
                            "state": {k: v.detach().cpu() for k, v in learner.state_dict().items()},
                            "info": dict(info or {})}, path)


def load_l2r_checkpoint(path, shapes: Optional[dict] = None) -> L2RMetaLearner:
    """Load a :func:`save_l2r_checkpoint` file. With ``shapes`` (the student's :func:`layer_shapes`), a
    checkpoint built for other layer shapes raises ``ValueError`` naming the first differing layer."""
    from cltk.checkpoint import load_checkpoint
    st = load_checkpoint(path)
    if st.get("kind") != "cltk.l2r" or st.get("format") != L2R_FORMAT:
        raise ValueError(f"{str(path)!r} is not a cltk learning-to-remember checkpoint (format {L2R_FORMAT})")
    saved = {k: [tuple(s) for s in v] for k, v in st["shapes"].items()}
    if shapes is not None:
        want = {k: [tuple(s) for s in v] for k, v in shapes.items()}
        if want != saved:
            diff = next((f"layer {k!r}: student {want.get(k)} vs checkpoint {saved.get(k)}"
                         for k in sorted(set(want) | set(saved)) if want.get(k) != saved.get(k)), "")
            raise ValueError(f"l2r checkpoint {str(path)!r} was built for other student layer shapes ({diff})")
    learner = L2RMetaLearner(saved, L2RConfig(**st["config"]))
    learner.load_state_dict(st["state"])
    return learner
