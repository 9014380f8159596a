"""MetaLSTMGate: SGD whose step is gated per element by a learned per-synapse LSTM.

For every element (synapse) ``w`` of a covered parameter with gradient ``g``, one step of the meta-LSTM
(:func:`cltk.ops.meta_lstm_`, a 3-layer stacked LSTM + ``scale * tanh(Linear(H, 1))`` head) reads the features
``(w, g)``, advances that synapse's own recurrent state, and the update is ``w <- w - lr * gate * g``; the product
``gate * g`` comes out of the same fused call (``multiply=g``). The per-element LSTM state ``(h, c)`` [L, H, numel]
lives in the optimizer state, so ``state_dict`` / ``load_state_dict`` carry it. Parameter groups with
``gate=False`` (uncovered parameters) take the plain SGD step ``w <- w - lr * g``.

A meta-learner with 4 input features reads ``(w, g, h_i, h'_j)`` (the learning-to-remember rule of
:mod:`cltk.meta.l2r`): ``step(activations={param: (h_in, h_out)})`` gives, for a parameter of shape
``[C_out, C_in, ...]``, the mean input activation ``h_in`` [C_in] of each input unit and the mean output ``h_out``
[C_out] of each output unit (a 1-D parameter [C] takes both of size C). With ``normalize=True`` every feature is
divided by the root mean square of its tensor, as :class:`cltk.meta.l2r.L2RMetaLearner` does.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import Tensor

from cltk.ops.metalstm import meta_lstm_

__all__ = ["MetaLSTMGate"]

N_FEATURES = 2  # (w, g); 4 with the activations (w, g, h_i, h'_j)


class MetaLSTMGate(torch.optim.Optimizer):
    """``torch.optim``-style optimizer applying the meta-LSTM gated update.

    Args:
        params: parameters or parameter groups; a group may set ``gate=False`` to use plain SGD.
        meta_learner: the seven tensors ``(w_ih0 [4H, 2], w_ih, w_hh, b, w_out, b_out, scale)`` of the per-synapse
            meta-LSTM (e.g. ``cltk.ops.meta_lstm_init(2, H, 3)``); read at every step, not modified.
        lr: step size (> 0).
    """

    def __init__(self, params: Iterable, meta_learner: Sequence[Tensor], lr: float = 0.1, *,
                 normalize: bool = False) -> None:
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"MetaLSTMGate: lr must be a positive number, got {lr!r}")
        meta = tuple(meta_learner)
        if len(meta) != 7 or not all(isinstance(t, Tensor) for t in meta):
            raise ValueError("MetaLSTMGate: meta_learner must be the 7 tensors (w_ih0, w_ih, w_hh, b, w_out, b_out, "
                             f"scale), got {len(meta)} items")
        if meta[0].dim() != 2 or meta[0].shape[1] not in (N_FEATURES, 4):
            raise ValueError(f"MetaLSTMGate: meta_learner[0] (w_ih0) must be [4H, {N_FEATURES}] for the features "
                             f"(w, g) or [4H, 4] for (w, g, h_i, h'_j), got {list(meta[0].shape)}")
        if not isinstance(normalize, bool):
            raise ValueError(f"MetaLSTMGate: normalize must be True or False, got {normalize!r}")
        self.meta_learner = meta
        self.n_features = int(meta[0].shape[1])
        self.normalize = normalize
        super().__init__(params, dict(lr=float(lr), gate=True))

    def _weights(self, like: Tensor) -> list[Tensor]:
        return [t.detach().to(dtype=like.dtype, device=like.device) for t in self.meta_learner]

    def _features(self, p: Tensor, g: Tensor, activations) -> Tensor:
        def norm(t):
            return t / t.pow(2).mean().sqrt().clamp_min(1e-12) if self.normalize else t

        cols = [norm(p).reshape(-1), norm(g).reshape(-1)]
        if self.n_features == 4:
            act = None if activations is None else activations.get(p)
            if act is None:
                raise ValueError(f"MetaLSTMGate: the meta-learner reads (w, g, h_i, h'_j); step(activations=...) "
                                 f"must give (h_in, h_out) for every gated parameter, missing for one of shape "
                                 f"{list(p.shape)}")
            h_in, h_out = (t.detach().to(dtype=p.dtype, device=p.device).reshape(-1) for t in act)
            c_out = p.shape[0] if p.dim() >= 1 else 1
            c_in = p.shape[1] if p.dim() >= 2 else c_out
            if h_in.numel() != c_in or h_out.numel() != c_out:
                raise ValueError(f"MetaLSTMGate: activations for a parameter of shape {list(p.shape)} must be "
                                 f"(h_in [{c_in}], h_out [{c_out}]), got ({h_in.numel()}, {h_out.numel()})")
            if p.dim() >= 2:
                tail = (1,) * (p.dim() - 2)
                hi = norm(h_in).view(1, c_in, *tail).expand(p.shape)
                hj = norm(h_out).view(c_out, 1, *tail).expand(p.shape)
            else:
                hi, hj = norm(h_in).view(p.shape), norm(h_out).view(p.shape)
            cols += [hi.reshape(-1), hj.reshape(-1)]
        return torch.stack(cols, dim=1)

    @torch.no_grad()
    def step(self, closure=None, *, activations=None):
        """One gated step. ``activations``: ``{param: (h_in, h_out)}``, needed by a 4-feature meta-learner."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        L, _, H = self.meta_learner[2].shape
        for group in self.param_groups:
            lr = group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if not group["gate"]:
                    p.add_(g, alpha=-lr)
                    continue
                state = self.state[p]
                n = p.numel()
                if len(state) == 0:
                    state["h"] = torch.zeros(L, H, n, dtype=p.dtype, device=p.device)
                    state["c"] = torch.zeros(L, H, n, dtype=p.dtype, device=p.device)
                gf = g.reshape(-1)
                x = self._features(p, g, activations)
                upd = meta_lstm_(x, state["h"], state["c"], *self._weights(p), multiply=gf.contiguous())
                p.add_(upd.view_as(p), alpha=-lr)
        return loss
