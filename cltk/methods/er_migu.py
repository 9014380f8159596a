"""Experience replay with MIGU's masked updates: :mod:`cltk.methods.er` and :mod:`cltk.methods.migu` in one method.

Every step trains on the current minibatch concatenated with a minibatch drawn from a reservoir memory (exactly as
``er``: same buffer, same draws, the step's examples join the memory after the update), and the task's optimizer
is wrapped in :class:`cltk.optim.MIGU` (exactly as ``migu``): each ``nn.Linear`` but the output layer records the
L1 magnitude of its output per feature, and only the weight rows at or above the layer's ``threshold`` quantile
are updated (T = 0.7 keeps the top 30%). The magnitudes are recorded on the forward of the whole step, so the
replayed examples take part in choosing the rows, as they take part in the gradient.

Du et al. (2024, arXiv 2406.17245) combine MIGU with rehearsal-, architecture- and parameter-based continual
learning methods; this is the rehearsal combination, with Chaudhry et al.'s reservoir ER. Defaults are those of
the two parts: buffer 200, replay minibatch as large as the current one, T = 0.7, first task unmasked, biases and
the output layer not masked.
"""
from __future__ import annotations

from dataclasses import dataclass

from cltk.methods.base import register
from cltk.methods.er import ER, ERConfig
from cltk.methods.migu import MIGU, MIGUConfig

__all__ = ["ERMIGUConfig", "ERMIGU"]


@dataclass
class ERMIGUConfig(ERConfig, MIGUConfig):
    """The fields of :class:`~cltk.methods.er.ERConfig` and :class:`~cltk.methods.migu.MIGUConfig`, validated by
    both."""


@register
class ERMIGU(ER, MIGU):
    """``ER`` supplies ``loss``, ``after_step`` and the checkpointed buffer; ``MIGU`` supplies ``wrap_optimizer``
    (a masking :class:`cltk.optim.MIGU` per task) and ``after_task`` (removes that task's hooks)."""

    name = "er-migu"
    description = "experience replay, updating only the weight rows with the largest output magnitudes (MIGU)"
    paper = ("Chaudhry et al. 2019, arXiv:1902.10486; "
             "Du et al. 2024, arXiv 2406.17245")
    Config = ERMIGUConfig
