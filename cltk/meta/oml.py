"""Meta-learned representations for continual learning: OML and MAML-Rep (Javed & White 2019).

The network is split into a representation learning network (RLN, the early layers) and a prediction learning
network (PLN, the last ``pln_layers`` parametrised layers). Before the stream, the RLN and the PLN's initialisation
are meta-learned on a meta-training set of classes the stream does not contain; during the stream the RLN is frozen
and only the PLN learns.

One meta-step (:meth:`MetaLearner.episode_loss`):

* sample ``n_way`` meta-training classes, ``support_per_class`` inner images and ``query_per_class`` other images of
  each; the output rows of the sampled classes start from fresh Kaiming-normal weights (zero bias), so the PLN has
  to learn them from scratch in the inner loop (the mrcl code resets them in place);
* the RLN features of every image are computed once (the inner loop does not change the RLN);
* inner loop on the PLN only, plain SGD at ``inner_lr``:
  ``"online"`` (OML): one step per inner image, in a class-by-class (correlated) order;
  ``"batch"`` (MAML-Rep): ``inner_steps`` steps on all inner images at once;
* meta-loss: cross-entropy of the adapted PLN on the query images, plus (``"online"``) ``remember`` images drawn
  uniformly from the whole meta-training set (the paper's remember set, which asks the trajectory's updates not to
  interfere with what was known), averaged over every sample;
* Adam at ``meta_lr`` on the RLN, the PLN initialisation and the meta-training output layer, through the inner loop:
  second order by default, first order (inner gradients treated as constants) with ``first_order=True``.

The meta-training output layer has one row per meta-training class; the stream's own output layer (the model's last
layer) keeps its initialisation, since its classes are other classes.

Meta-training draws from its own generators (``meta_seed``), never from the global RNG, so it is a function of the
initial weights, the config and the meta-training data; :class:`MetaRepMethod` reuses an identical result computed
earlier in the process, and ``meta_checkpoint`` saves it to a file.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from cltk.methods.base import Method, MethodConfig
from cltk.streams.base import Stream

__all__ = ["MetaRepConfig", "MetaRepMethod", "MetaLearner", "split_model", "meta_training_set",
           "save_meta_checkpoint", "load_meta_checkpoint", "META_FORMAT"]

META_FORMAT = 1


# ------------------------------------------------------------------------------------------------------ splitting

def _chain(model: nn.Module) -> list[nn.Module]:
    """The model as a list of modules applied in order, or TypeError if it is not such a chain."""
    if isinstance(model, nn.Sequential):
        return list(model)
    body, head = getattr(model, "body", None), getattr(model, "head", None)
    named = {n for n, m in model.named_children() if any(True for _ in m.parameters())}
    if isinstance(body, nn.Sequential) and isinstance(head, nn.Linear) and named <= {"body", "head"}:
        return [*body, head]
    raise TypeError(f"cannot split a {type(model).__name__} into a representation (RLN) and a prediction (PLN) "
                    f"network: it must be an nn.Sequential or have a 'body' nn.Sequential and a 'head' nn.Linear "
                    f"applied in that order (like cltk.models.MLP and ConvNet)")


def split_model(model: nn.Module, pln_layers: int) -> tuple[nn.Sequential, nn.Sequential]:
    """(RLN, PLN): the model's modules before and from its ``pln_layers``-th last parametrised layer.

    The two ``nn.Sequential`` share the model's modules (and parameters); ``PLN(RLN(x)) == model(x)``. The last
    module must be an ``nn.Linear`` (the output layer), and no module may hold buffers (BatchNorm statistics would
    keep changing in a frozen RLN).
    """
    mods = _chain(model)
    if not mods or not isinstance(mods[-1], nn.Linear):
        raise TypeError(f"cannot split a {type(model).__name__}: its last module must be the nn.Linear output layer, "
                        f"got {type(mods[-1]).__name__ if mods else 'nothing'}")
    for m in mods:
        if any(True for _ in m.buffers()):
            raise TypeError(f"cannot split a {type(model).__name__}: {type(m).__name__} holds buffers (e.g. "
                            f"BatchNorm statistics), which a frozen RLN would still update")
    layered = [i for i, m in enumerate(mods) if any(True for _ in m.parameters())]
    if isinstance(pln_layers, bool) or not isinstance(pln_layers, int) or not 1 <= pln_layers < len(layered):
        raise ValueError(f"pln_layers must be an integer in [1, {len(layered) - 1}] for this "
                         f"{type(model).__name__} ({len(layered)} parametrised layers; the RLN needs at least one), "
                         f"got {pln_layers!r}")
    cut = layered[len(layered) - pln_layers]
    return nn.Sequential(*mods[:cut]), nn.Sequential(*mods[cut:])


# ----------------------------------------------------------------------------------------------------------- data

def _stream_classes(stream: Stream) -> tuple[list[str], set[int]]:
    datasets = list(stream.meta.get("datasets", []))
    used: set[int] = set()
    for task in stream.tasks:
        used.update(int(c) for c in task.classes)
    return datasets, used


def resolve_meta_dataset(meta_dataset: str, stream: Stream) -> tuple[str, Optional[list[int]]]:
    """(data set name, classes to use or None for all). ``"auto"``: Fashion-MNIST for a stream without it, else
    MNIST-5k. The stream's own data set gives the classes the stream does not use (a disjoint-classes split)."""
    datasets, used = _stream_classes(stream)
    if meta_dataset == "auto":
        if "fashion-mnist" not in datasets:
            meta_dataset = "fashion-mnist"
        elif not {"mnist5k", "mnist"} & set(datasets):
            meta_dataset = "mnist5k"
        else:
            raise ValueError(f"meta_dataset='auto' cannot choose a data set disjoint from the stream "
                             f"{stream.name!r} (it uses {', '.join(datasets)}); set meta_dataset")
    if meta_dataset not in datasets:
        return meta_dataset, None
    family = stream.meta.get("family")
    if family != "split" or len(datasets) != 1:
        raise ValueError(f"meta_dataset={meta_dataset!r} is the data set of the stream {stream.name!r}; only a "
                         f"split-{meta_dataset} stream leaves classes out for meta-training; choose another data set")
    from cltk.data import load
    free = [c for c in range(load(meta_dataset).num_classes) if c not in used]
    if len(free) < 2:
        raise ValueError(f"meta_dataset={meta_dataset!r}: the stream {stream.name!r} uses all but {len(free)} of its "
                         f"classes; meta-training needs at least 2 classes it does not use")
    return meta_dataset, free


def meta_training_set(meta_dataset: str, stream: Stream, per_class: int, seed: int) -> tuple[Tensor, Tensor]:
    """(x float32 [N, *stream.input_shape] in [0, 1], y int64 [N] in [0, n_classes)): up to ``per_class`` training
    images of each meta-training class (see :func:`resolve_meta_dataset`), drawn by ``default_rng(seed)``, brought
    to the stream's image shape (channels repeated, bilinear antialiased resize)."""
    from cltk.data import load
    name, classes = resolve_meta_dataset(meta_dataset, stream)
    ds = load(name)
    if classes is None:
        classes = list(range(ds.num_classes))
    labels = ds.train_y.numpy()
    rng = np.random.default_rng(seed)
    idx, ys = [], []
    for k, c in enumerate(classes):
        pool = np.flatnonzero(labels == c)
        pick = rng.permutation(pool)[:per_class]
        idx.append(pick)
        ys.append(np.full(len(pick), k, dtype=np.int64))
    sel = np.concatenate(idx)
    x = torch.from_numpy(ds.train_x.numpy()[sel].astype(np.float32) / np.float32(255.0))
    c, h, w = stream.input_shape
    if x.shape[1] != c:
        if x.shape[1] != 1:
            raise ValueError(f"meta_dataset={name!r}: cannot bring {x.shape[1]}-channel images to {c} channels")
        x = x.expand(-1, c, -1, -1)
    if tuple(x.shape[2:]) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True).clamp_(0.0, 1.0)
    return x.contiguous(), torch.from_numpy(np.concatenate(ys))


# ---------------------------------------------------------------------------------------------------- meta-learner

@dataclass
class Episode:
    """One meta-training episode, as indices into the meta-training set."""

    classes: Tensor      # int64 [n_way]
    support: Tensor      # int64 indices into the meta-training set, class by class
    query: Tensor        # int64 indices: query images of the same classes, then the remember set
    fresh_rows: Tensor   # float32 [n_way, d]: the sampled classes' output rows at the episode's start


class MetaLearner:
    """Meta-trains ``rln`` and the initialisation of the PLN (``pln_body`` followed by ``out``, the meta-training
    output layer over the meta-training classes) on ``(x, y)``; see the module docstring for one step.

    ``mode``: ``"online"`` (OML) or ``"batch"`` (MAML-Rep). Sampling uses its own generator seeded with ``seed``.
    """

    def __init__(self, rln: nn.Module, pln_body: nn.Module, out: nn.Linear, x: Tensor, y: Tensor, *, mode: str,
                 n_way: int, support_per_class: int, query_per_class: int, remember: int, inner_lr: float,
                 inner_steps: int, meta_lr: float, first_order: bool, seed: int) -> None:
        if mode not in ("online", "batch"):
            raise ValueError(f"MetaLearner: mode must be 'online' or 'batch', got {mode!r}")
        self.rln, self.out, self.x, self.y = rln, out, x, y
        self.pln = nn.Sequential(*pln_body, out)
        self.mode, self.n_way, self.remember = mode, n_way, remember
        self.support_per_class, self.query_per_class = support_per_class, query_per_class
        self.inner_lr, self.inner_steps, self.first_order = inner_lr, inner_steps, first_order
        self.n_classes = int(y.max()) + 1
        if n_way > self.n_classes:
            raise ValueError(f"n_way={n_way} exceeds the {self.n_classes} meta-training classes")
        self.by_class = [torch.nonzero(y == c).flatten() for c in range(self.n_classes)]
        need = support_per_class + query_per_class
        short = [c for c, ix in enumerate(self.by_class) if len(ix) < need]
        if short:
            raise ValueError(f"meta-training classes {short} have fewer than support_per_class + query_per_class = "
                             f"{need} images")
        self.params = [*rln.parameters(), *self.pln.parameters()]
        self.optimizer = torch.optim.Adam(self.params, lr=meta_lr)
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, generator: Optional[torch.Generator] = None) -> Episode:
        g = generator if generator is not None else self.generator
        classes = torch.randperm(self.n_classes, generator=g)[:self.n_way]
        sup, qry = [], []
        for c in classes.tolist():
            pool = self.by_class[c]
            pick = pool[torch.randperm(len(pool), generator=g)[:self.support_per_class + self.query_per_class]]
            sup.append(pick[:self.support_per_class])
            qry.append(pick[self.support_per_class:])
        if self.mode == "online" and self.remember > 0:
            qry.append(torch.randint(0, len(self.y), (self.remember,), generator=g))
        d = self.out.in_features
        fresh = torch.randn(self.n_way, d, generator=g) * math.sqrt(2.0 / d)   # Kaiming normal, fan-in
        return Episode(classes, torch.cat(sup), torch.cat(qry), fresh)

    def episode_loss(self, ep: Episode) -> Tensor:
        """The meta-loss of one episode, differentiable w.r.t. the RLN and the PLN initialisation."""
        feats = self.rln(self.x[torch.cat([ep.support, ep.query])])
        f_sup, f_qry = feats[:len(ep.support)], feats[len(ep.support):]
        y_sup, y_qry = self.y[ep.support], self.y[ep.query]
        fast = dict(self.pln.named_parameters())
        wname, bname = self._out_names()
        rows = torch.zeros(self.n_classes, dtype=torch.bool)
        rows[ep.classes] = True
        w = fast[wname].clone()
        w[ep.classes] = ep.fresh_rows.to(w.dtype)
        fast[wname] = w
        if bname is not None:
            fast[bname] = fast[bname].masked_fill(rows.to(fast[bname].device), 0.0)
        if self.first_order:
            f_sup = f_sup.detach()
        if self.mode == "online":
            steps = [(f_sup[i:i + 1], y_sup[i:i + 1]) for i in range(len(y_sup))]
        else:
            steps = [(f_sup, y_sup)] * self.inner_steps
        for fx, fy in steps:
            loss = F.cross_entropy(functional_call(self.pln, fast, (fx,)), fy)
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not self.first_order)
            fast = {n: p - self.inner_lr * g for (n, p), g in zip(fast.items(), grads)}
        return F.cross_entropy(functional_call(self.pln, fast, (f_qry,)), y_qry)

    def _out_names(self) -> tuple[str, Optional[str]]:
        i = len(self.pln) - 1
        return f"{i}.weight", (f"{i}.bias" if self.out.bias is not None else None)

    def step(self) -> float:
        """One meta-step on a fresh episode; returns its meta-loss (before the update)."""
        loss = self.episode_loss(self.sample())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def evaluate(self, episodes: list[Episode]) -> float:
        """Mean meta-loss over fixed episodes, without updating anything."""
        total = 0.0
        for ep in episodes:
            with torch.enable_grad():   # the inner loop needs gradients even when nothing is updated
                total += float(self.episode_loss(ep).detach())
        return total / max(1, len(episodes))


# ----------------------------------------------------------------------------------------------------- checkpoints

def _signature(rln: nn.Module, pln_body: nn.Module) -> list[str]:
    return [f"rln.{n}:{tuple(p.shape)}" for n, p in rln.named_parameters()] + \
           [f"pln.{n}:{tuple(p.shape)}" for n, p in pln_body.named_parameters()]


def save_meta_checkpoint(path: str, method: str, rln: nn.Module, pln_body: nn.Module, info: dict) -> Path:
    """Write the meta-learned RLN and PLN initialisation (without the stream's output layer) atomically."""
    from cltk.checkpoint import save_checkpoint
    return save_checkpoint({"format": META_FORMAT, "kind": "cltk.meta", "method": method,
                            "signature": _signature(rln, pln_body),
                            "rln": {k: v.detach().cpu() for k, v in rln.state_dict().items()},
                            "pln": {k: v.detach().cpu() for k, v in pln_body.state_dict().items()},
                            "info": info}, path)


def load_meta_checkpoint(path: str, rln: nn.Module, pln_body: nn.Module) -> dict:
    """Load a :func:`save_meta_checkpoint` file into ``rln`` and ``pln_body`` (``torch.load(weights_only=True)``).

    Raises:
        ValueError: the file is not a meta-learning checkpoint, or was written for another architecture (the
            message lists the first difference).
    """
    from cltk.checkpoint import load_checkpoint
    state = load_checkpoint(path)
    if state.get("kind") != "cltk.meta" or state.get("format") != META_FORMAT:
        raise ValueError(f"meta_checkpoint {path!r} is not a cltk meta-learning checkpoint (format {META_FORMAT})")
    want, got = _signature(rln, pln_body), list(state.get("signature", []))
    if want != got:
        diff = next((f"{a} vs {b}" for a, b in zip(want, got) if a != b),
                    f"{len(want)} parameter tensors vs {len(got)}")
        raise ValueError(f"meta_checkpoint {path!r} was written for another architecture or pln_layers "
                         f"(this model vs the checkpoint: {diff})")
    device = next(rln.parameters()).device
    rln.load_state_dict({k: v.to(device) for k, v in state["rln"].items()})
    pln_body.load_state_dict({k: v.to(device) for k, v in state["pln"].items()})
    return dict(state.get("info", {}))


# ------------------------------------------------------------------------------------------------------- methods

@dataclass
class MetaRepConfig(MethodConfig):
    """Fields shared by OML and MAML-Rep. "paper": Javed & White 2019 (Omniglot) and its code (mrcl); "cltk": a
    value of this toolkit, scaled down for CPU or needed by the harness.

    * ``optimizer``, ``lr``: how the stream trains the PLN; Adam 1e-3 (cltk: as ``finetune``, so the two differ only
      in the frozen meta-learned RLN; the paper trains online with SGD at a grid-searched rate).
    * ``pln_layers`` 2 (paper: the PLN is the last two fully connected layers).
    * ``meta_dataset`` ``"auto"`` (cltk): Fashion-MNIST for streams without it, MNIST-5k otherwise; naming the
      stream's own data set (split streams only) meta-trains on the classes the stream does not use.
    * ``meta_checkpoint`` (cltk): a file to load the meta-learned RLN and PLN initialisation from; when it does not
      exist yet, meta-training writes it. A loaded file is used whatever its meta-training settings were; only the
      architecture (and ``pln_layers``) must match. "" meta-trains in every run.
    * ``meta_steps`` 3000 (cltk: about one CPU-minute for the MLP at 1 thread; the paper meta-trains far longer),
      ``meta_lr`` 1e-3 (cltk, OML; paper 1e-4, which MAML-Rep keeps), Adam.
    * ``inner_lr`` 0.03 (paper); ``n_way`` 3 classes per episode, ``support_per_class`` 5, ``query_per_class`` 5
      (the mrcl code's Omniglot setting).
    * ``first_order`` False (paper: second order through the inner loop).
    * ``meta_per_class`` 500 images of each meta-training class, drawn with ``meta_seed`` 0, which also draws the
      episodes (cltk).
    """

    pln_layers: int = 2
    meta_dataset: str = "auto"
    meta_checkpoint: str = ""
    meta_steps: int = 3000
    meta_lr: float = 1e-3
    inner_lr: float = 0.03
    n_way: int = 3
    support_per_class: int = 5
    query_per_class: int = 5
    first_order: bool = False
    meta_per_class: int = 500
    meta_seed: int = 0

    def validate(self) -> None:
        super().validate()
        self.check_int("pln_layers", 1)
        if not isinstance(self.meta_dataset, str) or not self.meta_dataset:
            raise ValueError(f"{type(self).__name__}.meta_dataset must be a data set name or 'auto', "
                             f"got {self.meta_dataset!r}")
        if not isinstance(self.meta_checkpoint, str):
            raise ValueError(f"{type(self).__name__}.meta_checkpoint must be a path string ('' for none), "
                             f"got {self.meta_checkpoint!r}")
        self.check_int("meta_steps", 0)
        self.check_positive("meta_lr")
        self.check_positive("inner_lr")
        self.check_int("n_way", 1)
        self.check_int("support_per_class", 1)
        self.check_int("query_per_class", 1)
        if not isinstance(self.first_order, bool):
            raise ValueError(f"{type(self).__name__}.first_order must be True or False, got {self.first_order!r}")
        self.check_int("meta_per_class", 1)
        self.check_int("meta_seed", 0)
        if self.meta_per_class < self.support_per_class + self.query_per_class:
            raise ValueError(f"{type(self).__name__}.meta_per_class must be >= support_per_class + "
                             f"query_per_class = {self.support_per_class + self.query_per_class}, "
                             f"got {self.meta_per_class}")


_MEMO: "OrderedDict[str, tuple[dict, dict, list[float], dict]]" = OrderedDict()
_MEMO_SIZE = 4


class MetaRepMethod(Method):
    """Meta-learn the RLN in :meth:`setup` (or load it from ``meta_checkpoint``), then freeze it: the stream trains
    the PLN only. Subclasses set ``inner_mode`` and :meth:`learner_kwargs`."""

    inner_mode = "online"

    def learner_kwargs(self) -> dict:
        raise NotImplementedError

    def setup(self, model: nn.Module, stream: Stream) -> nn.Module:
        model = super().setup(model, stream)
        c = self.config
        self.rln, self.pln = split_model(model, c.pln_layers)
        pln_body = nn.Sequential(*list(self.pln)[:-1])
        self.meta_losses: list[float] = []
        path = c.meta_checkpoint
        if path and Path(path).is_file():
            self.meta_info = load_meta_checkpoint(path, self.rln, pln_body)
        else:
            self.meta_info = self.meta_train(stream, pln_body)
            if path:
                save_meta_checkpoint(path, self.name, self.rln, pln_body, self.meta_info)
        for p in self.rln.parameters():
            p.requires_grad_(False)
        return model

    def _cache_key(self, stream: Stream, pln_body: nn.Module) -> str:
        """Everything meta-training depends on: the method, its meta-training fields, the meta-training data and
        the initial RLN and PLN weights (it draws from no global RNG)."""
        import hashlib
        import json
        c = self.config
        fields = {k: v for k, v in vars(c).items()
                  if k not in ("optimizer", "lr", "momentum", "weight_decay", "meta_checkpoint")}
        doc = {"method": self.name, "mode": self.inner_mode, "config": fields,
               "data": resolve_meta_dataset(c.meta_dataset, stream), "shape": list(stream.input_shape),
               "out": [list(self.pln)[-1].in_features, list(self.pln)[-1].bias is not None],
               "params": _signature(self.rln, pln_body)}
        h = hashlib.sha256(json.dumps(doc, sort_keys=True, default=repr).encode())
        for p in [*self.rln.parameters(), *pln_body.parameters()]:
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def meta_train(self, stream: Stream, pln_body: nn.Module) -> dict:
        """Meta-train ``self.rln`` and ``pln_body`` in place; returns a summary. A result already computed in this
        process from the same inputs (see :meth:`_cache_key`) is reused: runs that differ only in the scenario
        or the stream's optimizer share one meta-training."""
        import time
        c = self.config
        key = self._cache_key(stream, pln_body)
        hit = _MEMO.get(key)
        if hit is not None:
            _MEMO.move_to_end(key)
            rln_state, pln_state, losses, info = hit
            self.rln.load_state_dict(rln_state)
            pln_body.load_state_dict(pln_state)
            self.meta_losses = list(losses)
            return {**info, "reused": True}
        x, y = meta_training_set(c.meta_dataset, stream, c.meta_per_class, c.meta_seed)
        device = next(self.rln.parameters()).device
        head = list(self.pln)[-1]
        n_classes = int(y.max()) + 1
        out = torch.nn.utils.skip_init(nn.Linear, head.in_features, n_classes, bias=head.bias is not None,
                                       device=device)
        g = torch.Generator().manual_seed(c.meta_seed + 1)   # not the global RNG: the run's draws stay the same
        with torch.no_grad():
            out.weight.copy_(torch.randn(n_classes, head.in_features, generator=g)
                             * math.sqrt(2.0 / head.in_features))
            if out.bias is not None:
                out.bias.zero_()
        learner = MetaLearner(self.rln, pln_body, out, x.to(device), y.to(device), mode=self.inner_mode,
                              meta_lr=c.meta_lr, inner_lr=c.inner_lr, n_way=c.n_way,
                              support_per_class=c.support_per_class, query_per_class=c.query_per_class,
                              first_order=c.first_order, seed=c.meta_seed, **self.learner_kwargs())
        was = self.model.training
        self.model.train()
        t0 = time.process_time()
        self.meta_losses = [learner.step() for _ in range(c.meta_steps)]
        self.model.train(was)
        tail = self.meta_losses[-50:]
        info = {"meta_steps": c.meta_steps, "meta_cpu_s": time.process_time() - t0,
                "meta_loss_last50": sum(tail) / len(tail) if tail else float("nan"), "meta_classes": n_classes,
                "reused": False}
        _MEMO[key] = ({k: v.detach().clone() for k, v in self.rln.state_dict().items()},
                      {k: v.detach().clone() for k, v in pln_body.state_dict().items()}, list(self.meta_losses), info)
        while len(_MEMO) > _MEMO_SIZE:
            _MEMO.popitem(last=False)
        return dict(info)

    def state_dict(self) -> dict:
        return {"meta_info": dict(getattr(self, "meta_info", {}))}

    def load_state_dict(self, state: dict) -> None:
        self.meta_info = dict(state.get("meta_info", {}))
