"""The five learning-to-remember experiments (Xiong, Ren & Urtasun 2019) and their baselines, on 14x14 images.

Every experiment pretrains the student on Task A, meta-trains an :class:`~cltk.meta.l2r.L2RMetaLearner` with a
multi-task teacher (:func:`cltk.meta.l2r.meta_train`), then meta-tests: from an A checkpoint, the student learns a
new Task B for ``test_steps`` steps with each update rule, and the linear readout accuracy (a linear classifier fitted
on the frozen penultimate features of a task's training images, tested on its test images) of A and of B is
recorded every ``every`` steps.

=================  ===========================  ===================================  ====================================
experiment          Task A                       B, meta-training                     B, meta-test
=================  ===========================  ===================================  ====================================
two-tasks           Fashion-MNIST 0-4            Fashion 5-9, first half of the data  Fashion 5-9, the second half
unseen-classes      Fashion 0-3                  2-class tasks sampled from {4, 5, 6}  {7, 8, 9}
unseen-init         Fashion 0-4, 3 checkpoints   Fashion 5-9, first half              a 4th checkpoint, second half
unseen-domain       Fashion 0-4                  Fashion 5-9                          another data set (``test_dataset``,
                                                                                     default MNIST-5k): its first half
                                                                                     of classes is A, the rest B
three-tasks         Fashion 0-3                  B1 = 4-6 then B2 = 7-9, first half    the same, second half
=================  ===========================  ===================================  ====================================

Update rules under the same protocol (same A checkpoint, same B batches, same steps; all plain SGD at ``lr``
unless said): ``l2r`` (the meta-learner alone), ``sgd``, ``sgd x0.1``, ``ewc``, ``lwf`` and the multi-task
``teacher`` (SGD on A ∪ B, the upper reference), and three with their own starting point: ``hat`` (A learned
with HAT's masks), ``rep`` (the student trained on A and the meta-training B data, then only its head learns) and
``oml`` (representation meta-learned with OML on the same data, PLN and head trained on A, then on B); see the
``*_update`` / ``*_checkpoint`` functions' docstrings.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cltk.meta.l2r import (Episode, L2RConfig, L2RMetaLearner, Stage, _grads, clone_params, layer_shapes,
                           meta_learner_update, meta_test, meta_train, pretrain, save_l2r_checkpoint, sgd_step,
                           student_init)

__all__ = ["EXPERIMENTS", "Settings", "ImagePool", "run_experiment", "sgd_update", "ewc_update", "lwf_update",
           "teacher_update", "ewc_fisher",
           "hat_checkpoint", "hat_update", "rep_checkpoint", "oml_checkpoint", "write_summary"]

EXPERIMENTS = ("two-tasks", "unseen-classes", "unseen-init", "unseen-domain", "three-tasks")
SIZE = 14


@dataclass
class Settings:
    """Sizes of one run. Full: ``pretrain_steps`` 600 (batch 64, SGD momentum 0.9), ``test_steps`` 500 evaluated
    every 50, readout on up to 500 training and 500 test images per class, the meta-learner's ``meta_steps`` 300.
    ``quick``: a seconds-long smoke run with the same code paths."""

    pretrain_steps: int = 600
    test_steps: int = 500
    every: int = 50
    readout_train: int = 500
    readout_test: int = 500
    meta_steps: int = 300
    ewc_lambda: float = 100.0
    ewc_samples: int = 200
    lwf_lambda: float = 1.0
    lwf_temperature: float = 2.0
    oml_meta_steps: int = 300

    @classmethod
    def quick(cls) -> "Settings":
        return cls(pretrain_steps=60, test_steps=40, every=20, readout_train=60, readout_test=60, meta_steps=6,
                   ewc_samples=20, oml_meta_steps=3)


class ImagePool:
    """A data set's images as float [N, 1, 14, 14] in [0, 1] (grayscale; 28x28 is 2x2-average pooled, other sizes
    are resized with antialiasing), indexed by class. Any name :func:`cltk.data.load` knows works, including IDX
    data sets under ``$CLTK_DATA``."""

    def __init__(self, name: str) -> None:
        from cltk.data import load
        ds = load(name)
        self.name, self.num_classes = name, ds.num_classes
        self.train_x, self.train_y = self._prep(ds.train_x), ds.train_y
        self.test_x, self.test_y = self._prep(ds.test_x), ds.test_y

    @staticmethod
    def _prep(x: Tensor) -> Tensor:
        x = x.float() / 255.0
        if x.shape[1] != 1:
            x = x.mean(dim=1, keepdim=True)
        if tuple(x.shape[2:]) == (2 * SIZE, 2 * SIZE):
            return F.avg_pool2d(x, 2)
        return F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False, antialias=True)

    def task(self, classes, split: str = "train", half: Optional[int] = None, per_class: Optional[int] = None
             ) -> tuple[Tensor, Tensor]:
        """Images of ``classes`` (labels kept); ``half`` 0/1: the first/second half of each class's images."""
        x, y = (self.train_x, self.train_y) if split == "train" else (self.test_x, self.test_y)
        idx = []
        for c in classes:
            ix = torch.nonzero(y == c).flatten()
            if half is not None:
                m = len(ix) // 2
                ix = ix[:m] if half == 0 else ix[m:]
            if per_class is not None:
                ix = ix[:per_class]
            if len(ix) == 0:
                raise ValueError(f"data set {self.name!r} has no {split} images of class {c}")
            idx.append(ix)
        idx = torch.cat(idx)
        return x[idx], y[idx]


def _cat(*tasks: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    return torch.cat([t[0] for t in tasks]), torch.cat([t[1] for t in tasks])


# --------------------------------------------------------------------------------------------------- baselines

def sgd_update(lr: float) -> Callable:
    """Plain SGD on B's cross-entropy (``sgd`` at the student's rate, ``sgd x0.1`` at a tenth of it)."""
    return lambda p, x, y, t: sgd_step(p, x, y, lr)


def ewc_fisher(p: dict, x: Tensor, y: Tensor, n: int) -> dict[str, Tensor]:
    """Diagonal empirical Fisher of the A checkpoint: mean squared per-sample gradient on ``n`` random A images."""
    fisher: dict[str, Tensor] = {}
    pick = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:n]
    for i in pick.tolist():
        g, _, _ = _grads(p, x[i:i + 1], y[i:i + 1])
        for k, v in g.items():
            fisher[k] = fisher.get(k, 0) + v * v / len(pick)
    return fisher


def ewc_update(lr: float, anchor: dict, fisher: dict, lam: float) -> Callable:
    """EWC (Kirkpatrick et al. 2017): SGD on B's loss + ``1/2 * sum lam F (w - w_A)^2`` (the head's B rows are
    penalised too; lambda is a cltk choice, not tuned). The per-parameter curvature ``lam * F`` is capped at
    ``1 / lr``: plain SGD on a quadratic of curvature above ``2 / lr`` diverges, which happens for an undertrained
    checkpoint's large Fisher values."""
    curv = {k: (lam * v).clamp(max=1.0 / lr) for k, v in fisher.items()}

    def penalty(d, logits):
        return 0.5 * sum((curv[k] * (d[k] - anchor[k]) ** 2).sum() for k in curv)
    return lambda p, x, y, t: sgd_step(p, x, y, lr, penalty)


def lwf_update(lr: float, old: dict, old_classes: list[int], lam: float, temperature: float) -> Callable:
    """LwF (Li & Hoiem 2017): SGD on B's loss + ``lam * T^2 * KL`` between the A checkpoint's and the current
    softened outputs (temperature T) over the old classes, on the B images."""
    from cltk.meta.l2r import student_forward
    cls = torch.tensor(old_classes)

    def step(p, x, y, t):
        with torch.no_grad():
            target = F.softmax(student_forward(old, x)[1][:, cls] / temperature, dim=1)

        def kd(d, logits):
            logp = F.log_softmax(logits[:, cls] / temperature, dim=1)
            return lam * temperature ** 2 * F.kl_div(logp, target, reduction="batchmean")
        return sgd_step(p, x, y, lr, kd)
    return step


def teacher_update(lr: float, stages: list[Stage], batch_size: int, seed: int) -> Callable:
    """The multi-task teacher: SGD on batches of A ∪ B (ignores the B-only batch it is given)."""
    gen = torch.Generator().manual_seed(seed + 7)
    bounds = []
    acc = 0
    for st in stages:
        acc += st.steps
        bounds.append(acc)

    def step(p, x, y, t):
        k = next(i for i, b in enumerate(bounds) if t < b)
        idx = torch.randint(0, len(stages[k].aby), (batch_size,), generator=gen)
        return sgd_step(p, stages[k].abx[idx], stages[k].aby[idx], lr)
    return step


# HAT: the student's four blocks are masked per channel; conv weight [j, i] connects block-input channel i to
# block-output channel j (the first conv's input is the image, never masked).
_HAT_LAYERS = {"c1.w": (0, None), "n1.g": (0, None), "n1.b": (0, None), "c2.w": (1, 0), "n2.g": (1, None),
               "n2.b": (1, None), "c3.w": (2, 1), "n3.g": (2, None), "n3.b": (2, None), "c4.w": (3, 2),
               "n4.g": (3, None), "n4.b": (3, None)}


def _hat_widths(p: dict) -> list[int]:
    return [p["n1.g"].numel(), p["n2.g"].numel(), p["n3.g"].numel(), p["n4.g"].numel()]


def _hat_s(t: int, smax: float, cycle: int) -> float:
    b = t % cycle
    return 1.0 / smax + (smax - 1.0 / smax) * b / max(1, cycle - 1)


def _hat_train_step(p: dict, emb: list[Tensor], x: Tensor, y: Tensor, lr: float, s: float, smax: float, c: float,
                    prev: Optional[list[Tensor]]) -> tuple[dict, list[Tensor]]:
    """One HAT step (Serra et al. 2018): masks ``sigmoid(s e)``, the attention regulariser, gradients of weights
    used by the previous task's masks ``prev`` zeroed by ``1 - min(a_out, a_in)``, embedding-gradient compensation,
    embeddings clamped to +-6."""
    from cltk.meta.l2r import student_forward
    d = {k: (v.detach().requires_grad_() if not k.startswith("_") else v) for k, v in p.items()}
    e = [t.detach().requires_grad_() for t in emb]
    masks = [torch.sigmoid(s * t) for t in e]
    loss = F.cross_entropy(student_forward(d, x, masks=masks)[1], y)
    if prev is None:
        reg = sum(m.sum() for m in masks) / sum(m.numel() for m in masks)
    else:
        free = [1 - a for a in prev]
        reg = sum((m * f).sum() for m, f in zip(masks, free)) / sum(f.sum() for f in free).clamp_min(1.0)
    loss = loss + c * reg
    names = [k for k in d if not k.startswith("_")]
    grads = torch.autograd.grad(loss, [d[k] for k in names] + e)
    new = dict(p)
    for k, g in zip(names, grads[:len(names)]):
        if prev is not None and k in _HAT_LAYERS:
            o, i = _HAT_LAYERS[k]
            used = prev[o]
            if i is not None:
                used = torch.minimum(used[:, None], prev[i][None, :])
            g = g * (1 - used).reshape(used.shape + (1,) * (g.dim() - used.dim()))
        new[k] = p[k].detach() - lr * g
    new_e = []
    for t, g in zip(e, grads[len(names):]):
        comp = smax / s * (torch.cosh((s * t.detach()).clamp(-50, 50)) + 1) / (torch.cosh(t.detach()) + 1)
        new_e.append((t.detach() - lr * g * comp).clamp(-6, 6))
    return new, new_e


def hat_checkpoint(p0: dict, x: Tensor, y: Tensor, steps: int, lr: float, seed: int, smax: float = 400.0,
                   c: float = 0.75, cycle: int = 50) -> tuple[dict, list[Tensor]]:
    """HAT's own Task-A checkpoint (HAT must learn A with its masks; plain SGD here, the other rules' checkpoint
    uses momentum) and A's binary masks ``sigmoid(smax e_A)``."""
    g = torch.Generator().manual_seed(seed)
    emb = [torch.randn(w, generator=g) for w in _hat_widths(p0)]
    p = clone_params(p0)
    for t in range(steps):
        idx = torch.randint(0, len(y), (64,), generator=g)
        p, emb = _hat_train_step(p, emb, x[idx], y[idx], lr, _hat_s(t, smax, cycle), smax, c, None)
    return p, [torch.sigmoid(smax * e) for e in emb]


def hat_update(lr: float, masks_a: list[Tensor], seed: int, smax: float = 400.0, c: float = 0.75,
               cycle: int = 50) -> tuple[Callable, Callable]:
    """HAT (Serra et al. 2018) on B from its A checkpoint: new task embeddings, weights used by A frozen through
    A's masks; ``smax`` 400 and ``c`` 0.75 are the paper's. The shared head is not protected (HAT's multi-head
    setting would not need it). Returns ``(update, features)``: A's readout uses A's masks, B's uses B's (HAT
    is task-aware). GroupNorm mixes the channels of a group, so A's units are not exactly frozen here."""
    from cltk.meta.l2r import student_features
    g = torch.Generator().manual_seed(seed + 11)
    box = {"emb": [torch.randn(m.numel(), generator=g) for m in masks_a]}

    def update(p, x, y, t):
        p, box["emb"] = _hat_train_step(p, box["emb"], x, y, lr, _hat_s(t, smax, cycle), smax, c, masks_a)
        return p

    def features(p, x, task):
        masks = masks_a if task == "A" else [torch.sigmoid(smax * e) for e in box["emb"]]
        return student_features(p, x, masks=masks)
    return update, features


_PLN = ("c4.w", "n4.g", "n4.b", "head.w", "head.b")


def rep_checkpoint(p0: dict, x: Tensor, y: Tensor, steps: int, seed: int) -> dict:
    """Rep: the student trained jointly on the meta-training data (A and the meta-training B tasks)."""
    g = torch.Generator().manual_seed(seed)
    return pretrain(p0, x, y, steps, generator=g)


class _Part(nn.Module):
    """Some of the student's parameters as an nn.Module (for cltk.meta.oml's functional inner loop)."""

    def __init__(self, p: dict, names: Sequence[str], fn: Callable) -> None:
        super().__init__()
        self.names, self.fn, self.groups = list(names), fn, p["_groups"]
        for n in self.names:
            self.register_parameter(n.replace(".", "_"), nn.Parameter(p[n].detach().clone()))

    def params(self) -> dict:
        return {**{n: getattr(self, n.replace(".", "_")) for n in self.names}, "_groups": self.groups}

    def forward(self, x):
        return self.fn(self.params(), x)


def _rln_forward(p, x):
    groups = int(p["_groups"])

    def layer(h, c, n, stride):
        return F.group_norm(F.conv2d(h, p[f"{c}.w"], stride=stride, padding=1), groups, p[f"{n}.g"], p[f"{n}.b"])
    h1 = F.relu(layer(x, "c1", "n1", 1))
    h2 = F.relu(layer(h1, "c2", "n2", 2))
    return F.relu(h2 + layer(h2, "c3", "n3", 1))


def _pln_forward(p, h):
    z = F.conv2d(h, p["c4.w"], stride=2, padding=1)
    return F.relu(F.group_norm(z, int(p["_groups"]), p["n4.g"], p["n4.b"])).mean(dim=(2, 3))


def oml_checkpoint(p0: dict, meta_x: Tensor, meta_y: Tensor, a_x: Tensor, a_y: Tensor, meta_steps: int,
                   pretrain_steps: int, seed: int) -> dict:
    """OML (Javed & White 2019) with :class:`cltk.meta.oml.MetaLearner`: the RLN (c1..n3) and the PLN's
    initialisation (c4, n4) are meta-learned on the meta-training data (online inner loop on the PLN, second
    order, the mrcl Omniglot settings: 3-way, 5 + 5 images, remember 15, inner lr 0.03, meta lr 1e-3 Adam); then
    the PLN and head learn A with the RLN frozen. The B rule trains the PLN and head only."""
    from cltk.meta.oml import MetaLearner
    classes, y = torch.unique(meta_y, return_inverse=True)
    rln = _Part(p0, ["c1.w", "n1.g", "n1.b", "c2.w", "n2.g", "n2.b", "c3.w", "n3.g", "n3.b"], _rln_forward)
    pln_body = _Part(p0, ["c4.w", "n4.g", "n4.b"], _pln_forward)
    out = nn.Linear(p0["head.w"].shape[1], len(classes))
    ml = MetaLearner(rln, nn.Sequential(pln_body), out, meta_x, y, mode="online", n_way=3, support_per_class=5,
                     query_per_class=5, remember=15, inner_lr=0.03, inner_steps=1, meta_lr=1e-3,
                     first_order=False, seed=seed)
    for _ in range(meta_steps):
        ml.step()
    p = dict(p0)
    p.update({k: v.detach().clone() for k, v in {**rln.params(), **pln_body.params()}.items()})
    g = torch.Generator().manual_seed(seed)
    return pretrain(p, a_x, a_y, pretrain_steps, generator=g, trainable=_PLN)


# ------------------------------------------------------------------------------------------------ experiments

@dataclass
class _Plan:
    sample_episode: Callable[[torch.Generator], Episode]
    test_ckpt: dict
    test_stages: list[Stage]
    evals: dict
    a_classes: list[int]
    a_train: tuple[Tensor, Tensor]
    meta_data: tuple[Tensor, Tensor]      # A and the meta-training B tasks (Rep and OML learn from it)
    init_seed: int                        # the student_init seed of the test checkpoint


def _evals(pool: ImagePool, tasks: dict[str, list[int]], s: Settings, half: Optional[int]) -> dict:
    out = {}
    for name, classes in tasks.items():
        trx, try_ = pool.task(classes, "train", half if name != "A" else None, s.readout_train)
        tex, tey = pool.task(classes, "test", None, s.readout_test)
        out[name] = (trx, try_, tex, tey)
    return out


def _ckpt(pool: ImagePool, classes, s: Settings, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    x, y = pool.task(classes)
    return pretrain(student_init(pool.num_classes, generator=g), x, y, s.pretrain_steps, generator=g)


def _plan(experiment: str, s: Settings, cfg: L2RConfig, seed: int, test_dataset: str) -> _Plan:
    fm = ImagePool("fashion-mnist")
    n = cfg.inner_steps
    if experiment in ("two-tasks", "unseen-init", "unseen-domain"):
        A, B = list(range(5)), list(range(5, 10))
        a = fm.task(A)
        b0 = fm.task(B, half=0)
        stage = Stage(*b0, *_cat(a, b0), n)
        if experiment == "unseen-init":
            ckpts = [_ckpt(fm, A, s, seed * 100 + 1 + k) for k in range(3)]
            test_ckpt = _ckpt(fm, A, s, seed * 100 + 50)
        else:
            ckpts = [_ckpt(fm, A, s, seed * 100)]
            test_ckpt = ckpts[0]

        def sample(gen):
            return Episode(ckpts[int(torch.randint(0, len(ckpts), (1,), generator=gen))], [stage])

        if experiment == "unseen-domain":
            tp = ImagePool(test_dataset)
            k = tp.num_classes // 2
            TA, TB = list(range(k)), list(range(k, tp.num_classes))
            ta, tb = tp.task(TA), tp.task(TB)
            if tp.num_classes != fm.num_classes:
                raise ValueError(f"test_dataset {test_dataset!r} has {tp.num_classes} classes; the student's head "
                                 f"has {fm.num_classes} (a 10-class data set is needed)")
            test_ckpt = _ckpt(tp, TA, s, seed * 100 + 50)
            stages = [Stage(*tb, *_cat(ta, tb), s.test_steps)]
            return _Plan(sample, test_ckpt, stages, _evals(tp, {"A": TA, "B": TB}, s, None), TA, ta,
                         _cat(a, b0), seed * 100 + 50)
        b1 = fm.task(B, half=1)
        stages = [Stage(*b1, *_cat(a, b1), s.test_steps)]
        return _Plan(sample, test_ckpt, stages, _evals(fm, {"A": A, "B": B}, s, 1), A, a, _cat(a, b0),
                     seed * 100 + (50 if experiment == "unseen-init" else 0))
    if experiment == "unseen-classes":
        A, pool_cls, TB = [0, 1, 2, 3], [4, 5, 6], [7, 8, 9]
        a = fm.task(A)
        ckpt = _ckpt(fm, A, s, seed * 100)
        cache: dict = {}

        def sample(gen):
            pick = sorted(torch.randperm(len(pool_cls), generator=gen)[:2].tolist())
            key = tuple(pick)
            if key not in cache:
                b = fm.task([pool_cls[i] for i in pick])
                cache[key] = Stage(*b, *_cat(a, b), n)
            return Episode(ckpt, [cache[key]])

        tb = fm.task(TB)
        return _Plan(sample, ckpt, [Stage(*tb, *_cat(a, tb), s.test_steps)],
                     _evals(fm, {"A": A, "B": TB}, s, None), A, a, _cat(a, fm.task(pool_cls)), seed * 100)
    if experiment == "three-tasks":
        A, B1, B2 = [0, 1, 2, 3], [4, 5, 6], [7, 8, 9]
        a = fm.task(A)
        ckpt = _ckpt(fm, A, s, seed * 100)

        def stages_for(half, steps):
            b1, b2 = fm.task(B1, half=half), fm.task(B2, half=half)
            ab1 = _cat(a, b1)
            return [Stage(*b1, *ab1, steps // 2), Stage(*b2, *_cat(*[ab1, b2]), steps - steps // 2)]

        train_stages = stages_for(0, n)
        return _Plan(lambda gen: Episode(ckpt, train_stages), ckpt, stages_for(1, s.test_steps),
                     _evals(fm, {"A": A, "B1": B1, "B2": B2}, s, 1), A, a,
                     _cat(a, fm.task(B1, half=0), fm.task(B2, half=0)), seed * 100)
    raise ValueError(f"experiment must be one of {', '.join(EXPERIMENTS)}, got {experiment!r}")


def run_experiment(experiment: str, *, quick: bool = False, out: Optional[str] = None, seed: int = 0,
                   variant: str = "synapse", test_dataset: str = "mnist5k", meta_steps: Optional[int] = None,
                   log: Optional[Callable[[str], None]] = None) -> dict:
    """Run one experiment end to end; with ``out`` write results.json, curves.csv, the meta-learner checkpoint,
    curves.png and gates.png there (atomically). Returns the results dict."""
    if experiment not in EXPERIMENTS:
        raise ValueError(f"experiment must be one of {', '.join(EXPERIMENTS)}, got {experiment!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    s = Settings.quick() if quick else Settings()
    if meta_steps is not None:
        s.meta_steps = meta_steps
    cfg = L2RConfig(variant=variant, meta_steps=s.meta_steps, seed=seed,
                    inner_steps=s.test_steps if quick else L2RConfig.inner_steps)
    say = log or (lambda m: None)
    torch.manual_seed(seed)
    plan = _plan(experiment, s, cfg, seed, test_dataset)
    learner = L2RMetaLearner(layer_shapes(plan.test_ckpt), cfg)
    t0 = time.process_time()
    hist = meta_train(learner, plan.sample_episode,
                      log=lambda r: say(f"meta-step {r['step']}: loss {r['loss']:.3f} T={r['truncation']} "
                                        f"thr={r['threshold']:.2f} inner={r['inner']}")
                      if r["step"] % 25 == 0 else None)
    meta_cpu = time.process_time() - t0
    say(f"meta-training: {meta_cpu:.1f} CPU-s, {hist['inner_steps']} inner steps, {hist['restarts']} restarts")

    lr, bs = cfg.lr, cfg.batch_size
    ck = plan.test_ckpt
    gate_log: dict = {}
    log_steps = (0, s.test_steps // 2, s.test_steps - 1)
    rules: dict[str, Callable] = {
        "l2r": meta_learner_update(learner, lr, gate_log, log_steps),
        "sgd": sgd_update(lr),
        "sgd x0.1": sgd_update(lr * 0.1),
        "ewc": ewc_update(lr, clone_params(ck), ewc_fisher(ck, *plan.a_train, s.ewc_samples), s.ewc_lambda),
        "lwf": lwf_update(lr, clone_params(ck), plan.a_classes, s.lwf_lambda, s.lwf_temperature),
        "teacher": teacher_update(lr, plan.test_stages, bs, seed),
    }
    # Baselines with their own checkpoints: HAT (A learned with masks), Rep and OML (meta-training data).
    own: dict[str, tuple[dict, Callable, Optional[Callable]]] = {}
    p0 = student_init(ck["head.w"].shape[0], generator=torch.Generator().manual_seed(plan.init_seed))
    t1 = time.process_time()
    hat_ck, masks_a = hat_checkpoint(p0, *plan.a_train, s.pretrain_steps, lr, plan.init_seed)
    own["hat"] = (hat_ck, *hat_update(lr, masks_a, seed))
    rep_ck = rep_checkpoint(p0, *plan.meta_data, s.pretrain_steps, plan.init_seed)
    own["rep"] = (rep_ck, lambda p, x, y, t: sgd_step(p, x, y, lr, trainable=("head.w", "head.b")), None)
    # OML's meta-training output layer (nn.Linear) draws from the global RNG: reseed so that the baseline does not
    # depend on what ran before it (e.g. the neuron variant's heads).
    torch.manual_seed(seed)
    oml_ck = oml_checkpoint(p0, *plan.meta_data, *plan.a_train, s.oml_meta_steps, s.pretrain_steps, plan.init_seed)
    own["oml"] = (oml_ck, lambda p, x, y, t: sgd_step(p, x, y, lr, trainable=_PLN), None)
    say(f"HAT, Rep and OML checkpoints: {time.process_time() - t1:.1f} CPU-s")
    curves = {}
    for name, rule in [*rules.items(), *own.items()]:
        t1 = time.process_time()
        if name in own:
            start, rule, feats = own[name]
        else:
            start, feats = ck, None
        curves[name] = meta_test(rule, start, plan.test_stages, plan.evals, s.every, bs, seed, feats)
        final = {k: round(v[-1], 4) for k, v in curves[name].items() if k != "step"}
        say(f"{name}: {final} ({time.process_time() - t1:.1f} CPU-s)")
    tasks = [k for k in plan.evals]
    table = [{"method": m, **{f"{k}@0": c[k][0] for k in tasks}, **{f"{k}@{c['step'][-1]}": c[k][-1] for k in tasks}}
             for m, c in curves.items()]
    gates = {str(t): g for t, g in gate_log.items()}
    res = {"experiment": experiment, "seed": seed, "quick": quick, "variant": variant,
           "test_dataset": test_dataset if experiment == "unseen-domain" else None,
           "settings": asdict(s), "config": asdict(cfg), "meta_cpu_s": round(meta_cpu, 1),
           "meta_inner_steps": hist["inner_steps"], "meta_restarts": hist["restarts"],
           "meta_loss": [round(v, 5) for v in hist["loss"]], "curves": curves, "table": table,
           "gate_stats": {t: {"mean": float(g.mean()), "std": float(g.std()), "min": float(g.min()),
                              "max": float(g.max()), "n": g.numel()} for t, g in gates.items()},
           "torch_threads": torch.get_num_threads()}
    if out:
        _write(Path(out), res, learner, gates)
    return res


def _write(out: Path, res: dict, learner: L2RMetaLearner, gates: dict[str, Tensor]) -> None:
    from cltk.checkpoint import atomic_write_text
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps(res, indent=1))
    rows = ["method,step,task,readout_accuracy"]
    for m, c in res["curves"].items():
        for k, v in c.items():
            if k != "step":
                rows += [f"{m},{st},{k},{a:.4f}" for st, a in zip(c["step"], v)]
    atomic_write_text(out / "curves.csv", "\n".join(rows) + "\n")
    save_l2r_checkpoint(out / "meta_learner.pt", learner, {"experiment": res["experiment"], "seed": res["seed"]})
    _plot(out, res, gates)


def _plot(out: Path, res: dict, gates: dict[str, Tensor]) -> None:
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cltk.checkpoint import atomic_write_bytes

    def save(fig, name):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        atomic_write_bytes(out / name, buf.getvalue())

    tasks = [k for k in next(iter(res["curves"].values())) if k != "step"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for m, c in res["curves"].items():
            ax.plot(c["step"], [100 * v for v in c[task]], marker="o", ms=3, label=m,
                    lw=2.2 if m == "l2r" else 1.2, ls="--" if m == "teacher" else "-")
        ax.set_title(f"{res['experiment']}: task {task}")
        ax.set_xlabel("steps on the new task")
        ax.set_ylabel("readout accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    save(fig, "curves.png")
    if gates:
        fig, ax = plt.subplots(figsize=(5, 3.4))
        for t, g in gates.items():
            ax.hist(g.numpy(), bins=80, histtype="step", density=True, label=f"step {t}")
        ax.set_xlabel("gate value δ")
        ax.set_ylabel("density")
        ax.set_title(f"{res['experiment']}: meta-learner gates")
        ax.legend(fontsize=8)
        save(fig, "gates.png")


def write_summary(root: str) -> str:
    """A markdown table of every ``<root>/<experiment>/results.json``: readout accuracy (%) of each task at step 0
    and at the last step, and the change; written to ``<root>/summary.md`` (atomically) and returned."""
    from cltk.checkpoint import atomic_write_text
    lines = []
    for exp in EXPERIMENTS:
        f = Path(root) / exp / "results.json"
        if not f.is_file():
            continue
        r = json.loads(f.read_text())
        tasks = [k for k in next(iter(r["curves"].values())) if k != "step"]
        last = next(iter(r["curves"].values()))["step"][-1]
        lines += [f"### {exp} (seed {r['seed']}, meta-training {r['meta_cpu_s']} CPU-s, "
                  f"{r['meta_inner_steps']} inner steps)", "",
                  "| rule | " + " | ".join(f"{t} @0 | {t} @{last} | Δ{t}" for t in tasks) + " |",
                  "|---|" + "---:|" * (3 * len(tasks))]
        for m, c in r["curves"].items():
            cells = []
            for t in tasks:
                a0, a1 = 100 * c[t][0], 100 * c[t][-1]
                cells += [f"{a0:.1f}", f"{a1:.1f}", f"{a1 - a0:+.1f}"]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    text = "\n".join(lines)
    atomic_write_text(Path(root) / "summary.md", text)
    return text
