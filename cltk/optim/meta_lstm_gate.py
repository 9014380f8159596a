"""MetaLSTMGate: SGD whose step is gated per element by a learned per-synapse LSTM.

For every element (synapse) ``w`` of a covered parameter with gradient ``g``, one step of the meta-LSTM
(:func:`cltk.ops.meta_lstm_`, a 3-layer stacked LSTM + ``scale * tanh(Linear(H, 1))`` head) reads the features
``(w, g)``, advances that synapse's own recurrent state, and the update is ``w <- w - lr * gate * g``; the product
``gate * g`` comes out of the same fused call (``multiply=g``). The per-element LSTM state ``(h, c)`` [L, H, numel]
lives in the optimizer state, so ``state_dict`` / ``load_state_dict`` carry it. Parameter groups with
``gate=False`` (uncovered parameters) take the plain SGD step ``w <- w - lr * g``.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import Tensor

from cltk.ops.metalstm import meta_lstm_

__all__ = ["MetaLSTMGate"]

N_FEATURES = 2  # (w, g)


class MetaLSTMGate(torch.optim.Optimizer):
    """``torch.optim``-style optimizer applying the meta-LSTM gated update.

    Args:
        params: parameters or parameter groups; a group may set ``gate=False`` to use plain SGD.
        meta_learner: the seven tensors ``(w_ih0 [4H, 2], w_ih, w_hh, b, w_out, b_out, scale)`` of the per-synapse
            meta-LSTM (e.g. ``cltk.ops.meta_lstm_init(2, H, 3)``); read at every step, not modified.
        lr: step size (> 0).
    """

    def __init__(self, params: Iterable, meta_learner: Sequence[Tensor], lr: float = 0.1) -> None:
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"MetaLSTMGate: lr must be a positive number, got {lr!r}")
        meta = tuple(meta_learner)
        if len(meta) != 7 or not all(isinstance(t, Tensor) for t in meta):
            raise ValueError("MetaLSTMGate: meta_learner must be the 7 tensors (w_ih0, w_ih, w_hh, b, w_out, b_out, "
                             f"scale), got {len(meta)} items")
        if meta[0].dim() != 2 or meta[0].shape[1] != N_FEATURES:
            raise ValueError(f"MetaLSTMGate: meta_learner[0] (w_ih0) must be [4H, {N_FEATURES}] for the features "
                             f"(w, g), got {list(meta[0].shape)}")
        self.meta_learner = meta
        super().__init__(params, dict(lr=float(lr), gate=True))

    def _weights(self, like: Tensor) -> list[Tensor]:
        return [t.detach().to(dtype=like.dtype, device=like.device) for t in self.meta_learner]

    @torch.no_grad()
    def step(self, closure=None):
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
                x = torch.stack([p.reshape(-1), gf], dim=1)
                upd = meta_lstm_(x, state["h"], state["c"], *self._weights(p), multiply=gf.contiguous())
                p.add_(upd.view_as(p), alpha=-lr)
        return loss
