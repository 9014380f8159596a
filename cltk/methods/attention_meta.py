"""Attention meta-optimizer (Vettoruzzo et al., CoLLAs 2024, "Learning to Learn without Forgetting using
Attention", arXiv 2408.03219): a meta-learned transformer writes the classifier head's updates.

``setup`` loads a checkpoint of :mod:`cltk.meta.attention` (``checkpoint=``) or meta-trains one: the task encoder
is pretrained on the other data set (Fashion-MNIST for MNIST streams and the reverse), then the meta-network (and
the classifier's other layers, frozen afterwards) learn over episodes of K-shot tasks drawn from the *training*
images of the stream's own benchmark (another sample, drawn with another seed; the test images are never seen).
On the stream, each task gets ``inner_steps`` (Q) meta-optimizer steps on its K-shot support set (a class-balanced
``shots`` per class from the task's training split); further loop steps leave the weights alone. No task id and
no replay are used at test time; the importance memory that protects earlier tasks is all that is carried over.

Meta-training sees ``meta_pool`` labelled training images per task of the stream's own classes; with the stream's
fixed class-to-output-unit mapping the meta-network can store a head for those classes in its parameters, so
results measure meta-training plus Q steps, not learning from K shots alone (``meta_shuffle_units=True`` removes
that shortcut; docs/attention_meta.md has both).

Defaults: K = 5 shots, top-K fraction 0.4 (the paper's). Model sizes and step counts are small for a CPU (see
docs/attention_meta.md for what is shortened against the paper).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Iterable, Optional

import torch
from torch import Tensor, nn

from cltk.methods.base import Method, MethodConfig, register
from cltk.streams.base import Stream, Task

__all__ = ["AttentionMeta", "AttentionMetaConfig"]


@dataclass
class AttentionMetaConfig(MethodConfig):
    """``checkpoint``: a meta-checkpoint to load, or, if the file does not exist, where to save the one meta-trained
    here ("" meta-trains without saving). ``layers``: comma-separated controlled layers (``head``, ``first-conv``
    or module names). ``shots``: K support images per class; ``inner_steps``: Q meta-optimizer steps per task;
    ``keep``: top fraction of importance scores kept; ``clamp``: largest change of one weight in one step;
    ``protect``: how far importance on earlier tasks ramps the allowed change down. Meta-training:
    ``meta_episodes`` Adam steps' episodes at ``meta_lr``, ``meta_query`` query images per class, ``meta_pool``
    training images per task to draw from, ``encoder_steps`` pretraining steps of the task encoder on
    ``encoder_dataset`` ("auto": the other data set), ``train_body`` to meta-learn the non-controlled layers too,
    ``meta_shuffle_units`` to permute the output units in every meta-training episode (see
    :func:`cltk.meta.meta_train`; without it a class keeps its output unit, and the meta-network can learn the
    stream's head from the meta-training pool rather than from the K-shot support sets).
    """

    checkpoint: str = ""
    layers: str = "head"
    shots: int = 5
    inner_steps: int = 5
    keep: float = 0.4
    clamp: float = 0.05
    protect: float = 1.0
    d_model: int = 32
    heads: int = 2
    n_layers: int = 2
    chunk: int = 1024
    use_grad: bool = False
    meta_episodes: int = 100
    meta_lr: float = 1e-3
    meta_query: int = 20
    meta_pool: int = 500
    encoder_dataset: str = "auto"
    encoder_steps: int = 300
    train_body: bool = True
    meta_shuffle_units: bool = False

    def validate(self) -> None:
        super().validate()
        for name in ("shots", "inner_steps", "d_model", "heads", "n_layers", "chunk", "meta_query", "meta_pool"):
            self.check_int(name, 1)
        for name in ("meta_episodes", "encoder_steps"):
            self.check_int(name, 0)
        self.check_range("keep", 0.0, 1.0, lo_open=True)
        self.check_positive("clamp")
        self.check_range("protect", 0.0, 1.0)
        self.check_positive("meta_lr")
        if self.d_model % self.heads:
            raise ValueError(f"{type(self).__name__}.d_model must be a multiple of heads ({self.heads}), "
                             f"got {self.d_model}")
        if not isinstance(self.layers, str) or not [s for s in self.layers.split(",") if s.strip()]:
            raise ValueError(f"{type(self).__name__}.layers must be a comma-separated list of layer names, "
                             f"got {self.layers!r}")
        for name in ("checkpoint", "encoder_dataset"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{type(self).__name__}.{name} must be a string, got {getattr(self, name)!r}")
        for name in ("use_grad", "train_body", "meta_shuffle_units"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{type(self).__name__}.{name} must be True or False, got {getattr(self, name)!r}")


def meta_training_tasks(stream: Stream, pool: int, seed: int) -> list[tuple[Tensor, Tensor, tuple[int, ...]]]:
    """The stream's tasks rebuilt from other training images (``pool`` per task drawn with seed ``seed``, less any
    image that is in the stream's own training split): the meta-training pool. Split, rotated and permuted
    benchmarks only (others need a ``checkpoint``)."""
    from cltk.streams.builders import make_stream

    family = stream.name.split("-", 1)[0]
    kw: dict = dict(train_per_task=pool, test_per_task=1, val_fraction=0.0, image_size=tuple(stream.input_shape[1:]))
    if family == "split":
        kw["partition"] = [list(t.classes) for t in stream.tasks]
    elif family == "rotated":
        kw["angles"] = list(stream.meta["angles"])
    elif family == "permuted":
        kw["n_tasks"] = len(stream.tasks)
    else:
        raise ValueError(f"attention-meta: cannot build meta-training tasks for stream {stream.name!r} (split-, "
                         f"rotated- and permuted- benchmarks only); give checkpoint= a meta-trained checkpoint")
    meta = make_stream(stream.name, stream.scenario, seed, **kw)
    out = []
    for mt, t in zip(meta.tasks, stream.tasks):
        # the stream's own training images (its support sets) never enter meta-training
        seen = {bytes(r.numpy().tobytes()) for r in t.train.x.reshape(len(t.train), -1)}
        keep = torch.tensor([bytes(r.numpy().tobytes()) not in seen for r in mt.train.x.reshape(len(mt.train), -1)],
                            dtype=torch.bool)
        out.append((mt.train.x[keep], mt.train.y[keep], mt.output_units))
    return out


@register
class AttentionMeta(Method):
    name = "attention-meta"
    description = "meta-learned transformer writes the head's updates from importance scores and a task token"
    paper = "Vettoruzzo et al., Learning to Learn without Forgetting using Attention, CoLLAs 2024"
    Config = AttentionMetaConfig

    def __init__(self, config: Optional[AttentionMetaConfig] = None, **overrides) -> None:
        super().__init__(config, **overrides)
        self.meta_state: Optional[dict] = None
        self.memory: Optional[Tensor] = None
        self.history: list[float] = []
        self.meta_train_cpu_s = 0.0      # process CPU time of encoder pretraining and meta-training in setup
        self._opt = None
        self._support: Optional[tuple[Tensor, Tensor]] = None

    # -- setup: load or meta-train ------------------------------------------------------------------------
    def setup(self, model: nn.Module, stream: Stream) -> nn.Module:
        from cltk.meta import attention as am

        model = super().setup(model, stream)
        c = self.config
        layers = [s.strip() for s in c.layers.split(",") if s.strip()]
        layout = am.controlled_layout(model, layers)
        self.layout = layout
        if c.checkpoint and os.path.isfile(c.checkpoint):
            net, enc, _, body, info = am.load_meta_checkpoint(c.checkpoint, layout)
            state = am.meta_checkpoint_state(net, enc, layout, body, info)
        else:
            state = self._meta_train(model, stream, layout)
            if c.checkpoint:
                net, enc, _, body, info = am.load_meta_checkpoint(state)
                am.save_meta_checkpoint(c.checkpoint, net, enc, layout, body, info)
        if state["body"]:
            model.load_state_dict(state["body"], strict=False)
        controlled = {n for n, _ in layout}
        for n, p in model.named_parameters():
            p.requires_grad_(n in controlled)
        self.meta_state = state
        return model

    def _meta_train(self, model: nn.Module, stream: Stream, layout) -> dict:
        from cltk.meta import attention as am

        c = self.config
        seed = int(torch.initial_seed()) % (2 ** 31)
        enc_data = am.other_dataset(stream.name) if c.encoder_dataset == "auto" else c.encoder_dataset
        t0 = time.process_time()
        encoder = am.pretrain_task_encoder(enc_data, stream.input_shape, steps=c.encoder_steps, seed=seed)
        encoder_cpu_s = time.process_time() - t0
        net = am.AttentionMetaNet(am.MetaNetConfig(
            n_tokens=am.layout_numel(layout), task_dim=encoder.dim, d_model=c.d_model, heads=c.heads,
            layers=c.n_layers, clamp=c.clamp, keep=c.keep, protect=c.protect, chunk=c.chunk, use_grad=c.use_grad))
        tasks = meta_training_tasks(stream, c.meta_pool, seed=stream.seed + 1000)
        start = {k: v.detach().clone() for k, v in model.state_dict().items()}
        t0 = time.process_time()
        self.history = am.meta_train(net, model, layout, encoder, tasks, stream.scenario, stream.n_outputs,
                                     episodes=c.meta_episodes, inner_steps=c.inner_steps, shots=c.shots,
                                     query=c.meta_query, lr=c.meta_lr, train_body=c.train_body,
                                     shuffle_units=c.meta_shuffle_units, seed=seed)
        self.meta_train_cpu_s = time.process_time() - t0 + encoder_cpu_s
        controlled = {n for n, _ in layout}
        body = {k: v.detach().clone() for k, v in model.state_dict().items() if k not in controlled}
        # the controlled layers start the stream from the model's own initialisation
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in controlled:
                    p.copy_(start[n])
        return am.meta_checkpoint_state(net, encoder, layout, body, {"shots": c.shots, "episodes": c.meta_episodes,
                                                                     "inner_steps": c.inner_steps,
                                                                     "stream": stream.name,
                                                                     "meta_train_cpu_s": self.meta_train_cpu_s})

    # -- hooks ---------------------------------------------------------------------------------------------
    def before_task(self, task: Task) -> None:
        super().before_task(task)
        self._support = self._kshot_support(task)

    def _kshot_support(self, task: Task) -> tuple[Tensor, Tensor]:
        """``shots`` training images per class of ``task`` (all of them when the split has no more)."""
        x, y = task.train.x, task.train.y
        g = torch.Generator().manual_seed(1000 * (self.stream.seed if self.stream else 0) + task.index)
        keep = []
        for cls in torch.unique(y):
            idx = torch.nonzero(y == cls).squeeze(1)
            keep.append(idx[torch.randperm(idx.numel(), generator=g)[:self.config.shots]])
        idx = torch.sort(torch.cat(keep)).values if keep else torch.zeros(0, dtype=torch.long)
        return x[idx], y[idx]

    def make_optimizer(self, params: Iterable[Tensor]) -> torch.optim.Optimizer:
        from cltk.optim.attention_meta import AttentionMetaOptimizer

        if self.meta_state is None or self.model is None or self.task is None:
            raise RuntimeError("attention-meta: call setup(model, stream) and before_task(task) first")
        named = dict(self.model.named_parameters())
        controlled = [named[n] for n, _ in self.layout]
        index = self.task.index

        def loss_fn(logits: Tensor, y: Tensor) -> Tensor:
            return self.task_loss(logits, y, torch.full_like(y, index))

        def support() -> tuple[Tensor, Tensor]:
            x, y = self._support
            dev = controlled[0].device
            return x.to(dev), y.to(dev)

        opt = AttentionMetaOptimizer(controlled, self.meta_state, model=self.model, loss_fn=loss_fn,
                                     support=support, shots=self.config.shots, max_steps=self.config.inner_steps)
        opt.meta_state["memory"] = None if self.memory is None else self.memory.clone()
        self._opt = opt
        return opt

    def after_task(self, task: Task) -> None:
        if self._opt is not None:
            self._opt.end_task()
            self.memory = None if self._opt.memory is None else self._opt.memory.clone()
        self._opt = None

    def state_dict(self) -> dict:
        return {"memory": self.memory}

    def load_state_dict(self, state: dict) -> None:
        mem = state.get("memory")
        self.memory = None if mem is None else mem.clone()
