"""A transformer meta-optimizer that predicts a classifier's weight updates (Vettoruzzo et al., CoLLAs 2024,
"Learning to Learn without Forgetting using Attention", arXiv 2408.03219).

One step, for the ``n`` controlled weights ``w`` (a flat vector over the controlled layers, in layout order)::

    g      = d loss(support) / d w
    s      = minmax(|w * g|); s[s < quantile(s, 1 - keep)] = 0         importance (the top-``keep`` fraction)
    z      = mean over the support images of task_encoder(x)           task representation
    tokens = [task_token(z)] + [concat(embed(w_i), s_i)] + positional  (n + 1 tokens of width d_model)
    h      = TransformerEncoder(tokens)                                built on F.scaled_dot_product_attention
    delta  = tanh(out(h_i)) * clamp * (1 - protect * m_i)              m: importance on earlier tasks, in [0, 1]
    w     <- w + delta

Weights with a low score on the current task (s = 0) are free to move; ``m`` (the running maximum of the scores of
the tasks already learned) ramps down the change allowed on weights that mattered before. Attention over the
weight tokens is computed in query chunks of ``chunk`` rows, each an SDPA call against all keys, so the largest
temporary is ``heads * chunk * n`` floats (or less when SDPA takes its blocked flash path): memory grows linearly
in ``n``, never as ``n x n``.

The task encoder is a small convolutional network pretrained as a classifier on a different data set
(Fashion-MNIST for MNIST streams and the reverse) and frozen. :func:`meta_train` learns the meta-network (and,
optionally, the classifier's other layers, frozen afterwards) over episodes: streams of K-shot tasks, ``Q`` inner
steps per task, the meta-loss being the query loss on the current and every earlier task of the episode after the
inner steps (learning without forgetting), minimised with Adam.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cltk.ops.migu import topk_row_mask

__all__ = ["MetaNetConfig", "AttentionMetaNet", "TaskEncoder", "importance_scores", "chunked_attention",
           "resolve_layers", "controlled_layout", "pretrain_task_encoder", "meta_train", "save_meta_checkpoint",
           "load_meta_checkpoint", "meta_checkpoint_state", "CHECKPOINT_FORMAT", "episode_masks",
           "other_dataset", "inner_step"]

CHECKPOINT_FORMAT = 1
Layout = list[tuple[str, tuple[int, ...]]]


# ---------------------------------------------------------------------------------------------- controlled layers

def resolve_layers(model: nn.Module, layers: Sequence[str]) -> list[str]:
    """Module names of the controlled layers. ``"head"`` is the classifier head (``model.head``, or else the last
    ``nn.Linear``); ``"first-conv"`` the first ``nn.Conv2d``; any other entry must be a module name of ``model``
    owning parameters. Raises ValueError naming ``layers`` for anything else."""
    if isinstance(layers, str) or len(layers) == 0:
        raise ValueError(f"layers must be a non-empty list of layer names, got {layers!r}")
    modules = dict(model.named_modules())
    out: list[str] = []
    for name in layers:
        if name == "head":
            if "head" in modules:
                resolved = "head"
            else:
                linear = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
                if not linear:
                    raise ValueError("layers: 'head' needs model.head or an nn.Linear layer; the model has neither")
                resolved = linear[-1]
        elif name == "first-conv":
            conv = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
            if not conv:
                raise ValueError("layers: 'first-conv' needs an nn.Conv2d layer; the model has none")
            resolved = conv[0]
        else:
            m = modules.get(name)
            if m is None or name == "" or not any(True for _ in m.parameters(recurse=False)):
                owners = [n for n, mm in modules.items() if n and any(True for _ in mm.parameters(recurse=False))]
                raise ValueError(f"layers: unknown controlled layer {name!r}; use 'head', 'first-conv' or one of "
                                 f"{', '.join(owners)}")
            resolved = name
        if resolved in out:
            raise ValueError(f"layers: {name!r} names layer {resolved!r} twice")
        out.append(resolved)
    return out


def controlled_layout(model: nn.Module, layers: Sequence[str]) -> Layout:
    """``[(parameter name, shape), ...]`` of every parameter of the controlled layers, in a fixed order."""
    named = dict(model.named_parameters())
    layout: Layout = []
    for mod in resolve_layers(model, layers):
        for pname, _ in dict(model.named_modules())[mod].named_parameters(recurse=False):
            full = f"{mod}.{pname}"
            layout.append((full, tuple(named[full].shape)))
    return layout


def layout_numel(layout: Layout) -> int:
    return sum(math.prod(s) for _, s in layout)


# --------------------------------------------------------------------------------------------------- importance

def importance_scores(w: Tensor, g: Tensor, keep: float) -> Tensor:
    """Importance of every controlled weight for the current support set.

    ``s = |w * g|`` min-max normalised to [0, 1] over all controlled weights at once; scores below the
    ``1 - keep`` quantile are set to 0 (the selection is :func:`cltk.ops.migu.topk_row_mask`, ties kept).

    Args:
        w, g: float [n] weights and their support-loss gradients. keep: fraction in (0, 1] kept.
    Returns float32 [n] in [0, 1], detached.
    """
    if w.shape != g.shape or w.dim() != 1:
        raise ValueError(f"importance_scores: w and g must be 1-D of one shape, got {list(w.shape)} and "
                         f"{list(g.shape)}")
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"importance_scores: keep must be in (0, 1], got {keep!r}")
    s = (w.detach() * g.detach()).abs().float()
    lo, hi = s.min(), s.max()
    if not bool(hi > lo):
        return torch.zeros_like(s)
    s = (s - lo) / (hi - lo)
    if keep >= 1.0:
        return s
    return s * topk_row_mask(s, 1.0 - keep)


# ---------------------------------------------------------------------------------------------------- attention

def chunked_attention(q: Tensor, k: Tensor, v: Tensor, chunk: int) -> Tensor:
    """``F.scaled_dot_product_attention(q, k, v)`` computed ``chunk`` query rows at a time.

    q, k, v: [B, H, n, dh]. Every call sees at most ``chunk`` queries against all ``n`` keys, so no [n, n] score
    matrix is ever formed (at most [chunk, n] per head, on SDPA's math path). Same result as one call.
    """
    n = q.shape[-2]
    if n <= chunk:
        return F.scaled_dot_product_attention(q, k, v)
    return torch.cat([F.scaled_dot_product_attention(q[..., i:i + chunk, :], k, v) for i in range(0, n, chunk)],
                     dim=-2)


class _Block(nn.Module):
    """Pre-norm transformer encoder layer: chunked multi-head self-attention, then a 2-layer GELU MLP."""

    def __init__(self, d: int, heads: int, ff: int, chunk: int) -> None:
        super().__init__()
        self.heads, self.chunk = heads, chunk
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Linear(ff, d))

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = chunked_attention(q, k, v, self.chunk).transpose(1, 2).reshape(b, n, d)
        x = x + self.proj(a)
        return x + self.ff(self.ln2(x))


@dataclass
class MetaNetConfig:
    """Shape and update rule of the meta-network. ``n_tokens``: controlled weights; ``task_dim``: width of the
    task representation; ``clamp``: largest change per step; ``keep``: top fraction of importance scores kept;
    ``protect``: how far importance on earlier tasks ramps the allowed change down (0: no protection, 1: a weight
    with score 1 on an earlier task is frozen); ``chunk``: attention query rows per SDPA call; ``use_grad``: also
    embed each weight's normalised gradient (not in the paper, whose per-weight inputs are the weight and its
    score)."""

    n_tokens: int
    task_dim: int = 64
    d_model: int = 32
    heads: int = 2
    layers: int = 2
    ff: int = 64
    embed_hidden: int = 16
    clamp: float = 0.05
    keep: float = 0.4
    protect: float = 1.0
    chunk: int = 1024
    use_grad: bool = False

    def __post_init__(self) -> None:
        for name in ("n_tokens", "task_dim", "d_model", "heads", "layers", "ff", "embed_hidden", "chunk"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"MetaNetConfig.{name} must be an integer >= 1, got {v!r}")
        if self.d_model % self.heads or self.d_model < 2:
            raise ValueError(f"MetaNetConfig.d_model must be a multiple of heads ({self.heads}) and >= 2, "
                             f"got {self.d_model}")
        if not (isinstance(self.clamp, (int, float)) and self.clamp > 0):
            raise ValueError(f"MetaNetConfig.clamp must be > 0, got {self.clamp!r}")
        if not (isinstance(self.keep, (int, float)) and 0 < self.keep <= 1):
            raise ValueError(f"MetaNetConfig.keep must be in (0, 1], got {self.keep!r}")
        if not (isinstance(self.protect, (int, float)) and 0 <= self.protect <= 1):
            raise ValueError(f"MetaNetConfig.protect must be in [0, 1], got {self.protect!r}")


class AttentionMetaNet(nn.Module):
    """The transformer meta-optimizer: ``forward(w, score, task, memory)`` -> the update ``delta`` [n]."""

    def __init__(self, config: MetaNetConfig) -> None:
        super().__init__()
        c = self.config = config
        d = c.d_model
        n_in = 2 if c.use_grad else 1
        self.embed = nn.Sequential(nn.Linear(n_in, c.embed_hidden), nn.GELU(), nn.Linear(c.embed_hidden, d - 1))
        self.task_token = nn.Linear(c.task_dim, d)
        self.pos = nn.Parameter(torch.randn(c.n_tokens + 1, d) * 0.02)
        self.blocks = nn.ModuleList(_Block(d, c.heads, c.ff, c.chunk) for _ in range(c.layers))
        self.ln = nn.LayerNorm(d)
        self.out = nn.Linear(d, 1)
        nn.init.zeros_(self.out.weight)   # at initialisation every update is 0
        nn.init.zeros_(self.out.bias)

    def forward(self, w: Tensor, score: Tensor, task: Tensor, memory: Optional[Tensor] = None,
                grad: Optional[Tensor] = None) -> Tensor:
        """Args: ``w`` [n] controlled weights; ``score`` [n] importance in [0, 1]; ``task`` [task_dim]; ``memory``
        [n] importance on earlier tasks in [0, 1] (None: nothing learned yet); ``grad`` [n] (only with
        ``use_grad``). Returns ``delta`` [n] with ``|delta| <= clamp * (1 - protect * memory)``."""
        c = self.config
        n = w.shape[0]
        if w.dim() != 1 or n != c.n_tokens:
            raise ValueError(f"AttentionMetaNet: w must be [n_tokens] = [{c.n_tokens}], got {list(w.shape)}")
        if score.shape != w.shape:
            raise ValueError(f"AttentionMetaNet: score must be [{n}], got {list(score.shape)}")
        if task.shape != (c.task_dim,):
            raise ValueError(f"AttentionMetaNet: task must be [{c.task_dim}], got {list(task.shape)}")
        # scale-free weight inputs: the network sees w in units of the layer's spread
        feats = [w / (w.detach().std() + 1e-8) if n > 1 else w]
        if c.use_grad:
            if grad is None:
                raise ValueError("AttentionMetaNet: grad is required when config.use_grad is True")
            feats.append(grad / (grad.detach().abs().max() + 1e-12))
        tok = torch.cat([self.embed(torch.stack(feats, -1)), score.to(w.dtype)[:, None]], dim=-1)
        x = torch.cat([self.task_token(task)[None], tok], 0) + self.pos
        x = x[None]
        for blk in self.blocks:
            x = blk(x)
        out = self.out(self.ln(x[0, 1:])).squeeze(-1)
        limit = c.clamp if memory is None else c.clamp * (1.0 - c.protect * memory.to(w.dtype))
        return torch.tanh(out) * limit


# -------------------------------------------------------------------------------------------------- task encoder

class TaskEncoder(nn.Module):
    """Two 3x3 conv layers (16, 32) with ReLU and max-pooling, adaptive pooling to 4x4, a linear map to ``dim``.
    ``in_channels``: images with another channel count are averaged to 1 channel or repeated to match."""

    def __init__(self, in_channels: int = 1, dim: int = 64) -> None:
        super().__init__()
        self.in_channels, self.dim = int(in_channels), int(dim)
        self.body = nn.Sequential(nn.Conv2d(self.in_channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(32 * 16, self.dim), nn.ReLU())

    def _adapt(self, x: Tensor) -> Tensor:
        if x.shape[1] == self.in_channels:
            return x
        if self.in_channels == 1:
            return x.mean(1, keepdim=True)
        return x.mean(1, keepdim=True).expand(-1, self.in_channels, -1, -1)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, dim]."""
        return self.body(self._adapt(x))

    def task_representation(self, x: Tensor) -> Tensor:
        """The mean feature over a support set: [B, C, H, W] -> [dim]."""
        return self(x).mean(0)


def other_dataset(name: str) -> str:
    """The data set the task encoder of a stream over ``name`` is pretrained on."""
    base = name.split("-", 1)[1] if name.startswith(("split-", "rotated-", "permuted-")) else name
    if "fashion" in base:
        return "mnist5k"
    if base.startswith("mnist") or base.startswith("seq-"):
        return "fashion-mnist"
    if base == "cifar100":
        return "cifar10"
    if base == "cifar10":
        return "cifar100"
    return "fashion-mnist"


def pretrain_task_encoder(dataset: str, input_shape: Sequence[int], *, dim: int = 64, steps: int = 300,
                          batch_size: int = 64, lr: float = 1e-3, seed: int = 0, max_images: int = 10000
                          ) -> TaskEncoder:
    """A :class:`TaskEncoder` trained ``steps`` Adam steps as a classifier on ``dataset`` (a :func:`cltk.data.load`
    name), at the stream's image shape ``input_shape`` (C, H, W); returned frozen, in eval mode."""
    from cltk.data import load

    ds = load(dataset)
    g = torch.Generator().manual_seed(seed)
    n = min(int(ds.train_y.shape[0]), max_images)
    idx = torch.randperm(int(ds.train_y.shape[0]), generator=g)[:n]
    x = ds.train_x[idx].float() / 255.0
    c, h, w = (int(s) for s in input_shape)
    if tuple(x.shape[2:]) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)
    y = ds.train_y[idx].long()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        enc = TaskEncoder(c, dim)
        head = nn.Linear(dim, int(ds.num_classes))
    opt = torch.optim.Adam([*enc.parameters(), *head.parameters()], lr=lr)
    for _ in range(steps):
        b = torch.randint(0, n, (batch_size,), generator=g)
        loss = F.cross_entropy(head(enc(x[b])), y[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    enc.eval()
    enc.requires_grad_(False)
    return enc


# -------------------------------------------------------------------------------------------------- checkpoints

def meta_checkpoint_state(net: AttentionMetaNet, encoder: TaskEncoder, layout: Layout, body: Optional[dict] = None,
                          info: Optional[dict] = None) -> dict:
    """The checkpoint as a plain dict (tensors, numbers, strings, lists): what :func:`save_meta_checkpoint` writes
    and :func:`load_meta_checkpoint` reads."""
    return {"format": CHECKPOINT_FORMAT, "kind": "attention-meta",
            "layout": [[name, list(shape)] for name, shape in layout],
            "net_config": asdict(net.config), "net": {k: v.detach().clone() for k, v in net.state_dict().items()},
            "encoder": {"in_channels": encoder.in_channels, "dim": encoder.dim,
                        "state": {k: v.detach().clone() for k, v in encoder.state_dict().items()}},
            "body": {k: v.detach().clone() for k, v in (body or {}).items()}, "info": dict(info or {})}


def save_meta_checkpoint(path: Union[str, Path], net: AttentionMetaNet, encoder: TaskEncoder, layout: Layout,
                         body: Optional[dict] = None, info: Optional[dict] = None) -> Path:
    """Write the meta-parameters atomically (:func:`cltk.checkpoint.atomic_write`): the meta-network, the task
    encoder, the controlled-layer layout (names and shapes), optionally the classifier's other layers (``body``, a
    state dict) and ``info`` (plain values such as the shots K it was trained for)."""
    from cltk.checkpoint import atomic_write
    state = meta_checkpoint_state(net, encoder, layout, body, info)
    return atomic_write(path, lambda f: torch.save(state, f))


def _as_layout(raw: Sequence) -> Layout:
    return [(str(name), tuple(int(s) for s in shape)) for name, shape in raw]


def load_meta_checkpoint(checkpoint: Union[str, Path, dict], layout: Optional[Layout] = None
                         ) -> tuple[AttentionMetaNet, TaskEncoder, Layout, dict, dict]:
    """Load ``(net, encoder, layout, body, info)`` from a path or an already loaded dict (``torch.load`` with
    ``weights_only=True``). With ``layout`` given, a checkpoint for another layer layout raises ValueError."""
    if isinstance(checkpoint, dict):
        state = checkpoint
    else:
        from cltk.checkpoint import load_checkpoint
        state = load_checkpoint(checkpoint)
    if state.get("kind") != "attention-meta" or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint: not an attention-meta checkpoint of format {CHECKPOINT_FORMAT} "
                         f"(kind {state.get('kind')!r}, format {state.get('format')!r})")
    saved = _as_layout(state["layout"])
    if layout is not None and list(layout) != saved:
        raise ValueError(f"checkpoint: it was trained for the controlled-layer layout {saved}, the parameters "
                         f"given have the layout {list(layout)}")
    net = AttentionMetaNet(MetaNetConfig(**state["net_config"]))
    net.load_state_dict(state["net"])
    e = state["encoder"]
    enc = TaskEncoder(int(e["in_channels"]), int(e["dim"]))
    enc.load_state_dict(e["state"])
    enc.eval()
    enc.requires_grad_(False)
    return net, enc, saved, dict(state.get("body", {})), dict(state.get("info", {}))


# -------------------------------------------------------------------------------------------------- meta-training

def episode_masks(scenario: str, n_outputs: int, units_per_task: Sequence[Sequence[int]]) -> list[Tensor]:
    """Bool [n_outputs] output mask of every position of an episode: own units (task-IL), the units of the episode's
    tasks so far (class-IL), all units (domain-IL)."""
    out, seen = [], torch.zeros(n_outputs, dtype=torch.bool)
    for units in units_per_task:
        own = torch.zeros(n_outputs, dtype=torch.bool)
        own[list(units)] = True
        seen = seen | own
        out.append(own if scenario == "task" else seen.clone() if scenario == "class"
                   else torch.ones(n_outputs, dtype=torch.bool))
    return out


def _kshot(x: Tensor, y: Tensor, shots: int, query: int, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A class-balanced K-shot support set and a disjoint query set of up to ``query`` images per class."""
    sx, sy, qx, qy = [], [], [], []
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).squeeze(1)
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        sx.append(x[idx[:shots]]); sy.append(y[idx[:shots]])
        qx.append(x[idx[shots:shots + query]]); qy.append(y[idx[shots:shots + query]])
    return torch.cat(sx), torch.cat(sy), torch.cat(qx), torch.cat(qy)


def _flat(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _unflat(v: Tensor, layout: Layout) -> dict[str, Tensor]:
    out, i = {}, 0
    for name, shape in layout:
        k = math.prod(shape)
        out[name] = v[i:i + k].view(shape)
        i += k
    return out


def inner_step(net: AttentionMetaNet, model: nn.Module, layout: Layout, w: Tensor, x: Tensor, y: Tensor,
               mask: Tensor, task: Tensor, memory: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """One meta-optimizer step on the support (x, y) from the flat weights ``w``: returns (new w, score). The
    support gradient is taken at ``w`` detached (no second-order terms); ``delta`` stays differentiable in the
    meta-network's parameters."""
    from torch.func import functional_call
    wd = w.detach().requires_grad_(True)
    logits = functional_call(model, _unflat(wd, layout), (x,))
    loss = F.cross_entropy(logits.masked_fill(~mask, float("-inf")), y)
    (g,) = torch.autograd.grad(loss, wd)
    score = importance_scores(wd, g, net.config.keep)
    delta = net(w, score, task, memory, grad=g if net.config.use_grad else None)
    return w + delta, score


def meta_train(net: AttentionMetaNet, model: nn.Module, layout: Layout, encoder: TaskEncoder,
               tasks: Sequence[tuple[Tensor, Tensor, Sequence[int]]], scenario: str, n_outputs: int, *,
               episodes: int = 100, tasks_per_episode: Optional[int] = None, inner_steps: int = 5, shots: int = 5,
               query: int = 20, lr: float = 1e-3, train_body: bool = True, shuffle_units: bool = False,
               seed: int = 0, log: Optional[Callable[[str], None]] = None) -> list[float]:
    """Meta-train ``net`` (and, with ``train_body``, ``model``'s non-controlled parameters) in place.

    Args:
        tasks: the meta-training pool, one ``(x [N, C, H, W], y [N], output units)`` per task.
        episodes: episodes of Adam; each is a random order of ``tasks_per_episode`` tasks (default all). On each
            task: ``inner_steps`` meta-optimizer steps on a fresh K-shot support set, then the query loss on this
            and every earlier task of the episode, back-propagated into the meta-parameters (truncated at task
            boundaries: the weights entering a task are detached).
        shots: support images per class (K). query: query images per class.
        shuffle_units: give every episode its own random permutation of the output units (labels and task units
            permuted together), so no class keeps a fixed output unit across episodes and the meta-network cannot
            store one fixed head in its parameters: it has to write each head from the support sets.
    Returns the mean meta-loss of every episode.
    """
    from torch.func import functional_call
    g = torch.Generator().manual_seed(seed)
    names = {n for n, _ in layout}
    body = [p for n, p in model.named_parameters() if n not in names] if train_body else []
    params = [*net.parameters(), *body]
    opt = torch.optim.Adam(params, lr=lr)
    n_per = tasks_per_episode or len(tasks)
    named = dict(model.named_parameters())
    init_w = _flat([named[n].detach() for n, _ in layout])
    dev = init_w.device
    net.to(dev)
    encoder.to(dev)
    history = []
    t0 = time.perf_counter()
    model.train()
    for ep in range(episodes):
        order = torch.randperm(len(tasks), generator=g)[:n_per].tolist()
        perm = torch.randperm(n_outputs, generator=g) if shuffle_units else torch.arange(n_outputs)
        masks = [m.to(dev) for m in episode_masks(scenario, n_outputs,
                                                   [perm[list(tasks[i][2])].tolist() for i in order])]
        w = _reinit(init_w.cpu(), layout, g).to(dev)
        memory: Optional[Tensor] = None
        queries: list[tuple[Tensor, Tensor, Tensor]] = []
        total = 0.0
        for pos, ti in enumerate(order):
            x, y, _ = tasks[ti]
            y = perm[y]
            sx, sy, qx, qy = (t.to(dev) for t in _kshot(x, y, shots, query, g))
            with torch.no_grad():
                z = encoder.task_representation(sx)
            w = w.detach()
            score = None
            for _ in range(inner_steps):
                w, score = inner_step(net, model, layout, w, sx, sy, masks[pos], z, memory)
            queries.append((qx, qy, masks[pos]))
            wd = _unflat(w, layout)
            loss = sum(F.cross_entropy(functional_call(model, wd, (qx_,)).masked_fill(~masks[pos], float("-inf")),
                                       qy_) for qx_, qy_, _ in queries) / len(queries)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            if score is not None:
                memory = score if memory is None else torch.maximum(memory, score)
        history.append(total / len(order))
        if log is not None and (ep + 1) % max(1, episodes // 10) == 0:
            log(f"meta-train episode {ep + 1}/{episodes}: loss {history[-1]:.3f} ({time.perf_counter() - t0:.0f} s)")
    model.eval()
    return history


def _reinit(like: Tensor, layout: Layout, g: torch.Generator) -> Tensor:
    """Fresh controlled weights drawn as nn.Linear / nn.Conv2d initialise them: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    for weights (the bound kaiming_uniform(a=sqrt(5)) gives) and biases alike."""
    parts = []
    fan_in = 1
    for name, shape in layout:
        if len(shape) >= 2:
            fan_in = math.prod(shape[1:])
        bound = 1.0 / math.sqrt(max(fan_in, 1))
        parts.append((torch.rand(math.prod(shape), generator=g, dtype=like.dtype) * 2 - 1) * bound)
    return torch.cat(parts)
