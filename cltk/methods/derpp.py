"""Dark experience replay, DER++ (Buzzega et al. 2020, "Dark Experience for General Continual Learning").

The reservoir memory keeps each example with the logits the model gave it when it was stored. The loss of a step
is the current minibatch's cross-entropy plus two replay terms on two independent memory draws::

    loss = CE(current) + alpha * MSE(f(x'), z') + beta * CE(f(x''), y'')

``z'`` are the stored logits over the whole output space (the MSE is over every unit, as in the paper); the
label term uses the same per-scenario output mask as the training loss.

Under ``torch.distributed`` the memory is global, as ER's: every rank adds the gathered global batch with its
logits, makes the same two draws (sized from the global batch) and trains on its share of each, so W processes
equal one process with the same global batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from cltk import distributed as dist
from cltk.methods._replay_buffer import ReplayConfig, ReservoirReplay
from cltk.methods.base import Batch, register


@dataclass
class DERppConfig(ReplayConfig):
    """DER++. Defaults are the authors' best split-MNIST ("seq-mnist") setting for a 200-example buffer in
    Mammoth (aimagelab/mammoth, ``utils/best_args.py``): ``alpha=0.2``, ``beta=1.0``, replay minibatch 128
    (they train with SGD, lr 0.03, batch 10, one epoch). Their other seq-mnist settings: buffer 500: alpha 1.0,
    beta 0.5; buffer 5120: alpha 0.2, beta 0.5; seq-cifar10 at 200: alpha 0.1, beta 0.5."""

    replay_batch_size: int = 128
    alpha: float = 0.2
    beta: float = 1.0

    def validate(self) -> None:
        super().validate()
        self.check_nonnegative("alpha")
        self.check_nonnegative("beta")


@register
class DERpp(ReservoirReplay):
    name = "derpp"
    description = "DER++: replay stored logits (MSE) and labels (CE) from a reservoir memory"
    paper = "Buzzega et al. 2020, Dark Experience for General Continual Learning: a Strong, Simple Baseline (NeurIPS)"
    Config = DERppConfig

    # stored logits are those of the forward pass that trained on the example (the paper's choice: logits sampled
    # along the optimisation trajectory)
    store_logits = True

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        c = self.config
        logits = self.forward(model, batch.x, batch.t)
        loss = self.task_loss(logits, batch.y, batch.t)
        n = c.replay_size(int(batch.y.shape[0]) * dist.world_size())
        dev = batch.x.device
        if c.alpha > 0:
            mem = self._draw(n)
            if mem is not None:
                out = self.forward(model, mem.x.to(dev), mem.t.to(dev))
                loss = loss + c.alpha * F.mse_loss(out, mem.logits.to(dev, out.dtype))
        if c.beta > 0:
            mem = self._draw(n)
            if mem is not None:
                t = mem.t.to(dev)
                loss = loss + c.beta * self.task_loss(self.forward(model, mem.x.to(dev), t), mem.y.to(dev), t)
        self._pending, self._pending_logits = batch, logits.detach()
        pen = self.penalty(model)
        return loss if pen is None else loss + pen
