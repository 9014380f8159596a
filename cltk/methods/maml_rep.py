"""MAML-Rep (Javed & White 2019's baseline): meta-learn the representation (RLN) with MAML's batch inner loop,
i.e. a few SGD steps on a whole batch of a task's images with the meta-loss on held-out images of the same
classes, not an online trajectory and no remember set; then freeze the RLN and train only the PLN on the stream.
The meta-training is in :mod:`cltk.meta.oml`."""
from __future__ import annotations

from dataclasses import dataclass

from cltk.meta.oml import MetaRepConfig, MetaRepMethod
from cltk.methods.base import register

__all__ = ["MAMLRep", "MAMLRepConfig"]


@dataclass
class MAMLRepConfig(MetaRepConfig):
    """:class:`~cltk.meta.oml.MetaRepConfig` plus ``inner_steps``: full-batch SGD steps on the episode's
    ``n_way * support_per_class`` support images, 5 (cltk: MAML's (Finn et al. 2017) Omniglot setting; the OML
    paper does not give its value); ``meta_lr`` 1e-4 (paper; OML's cltk default of 1e-3 let MAML-Rep's meta-loss
    drift back up within 3000 steps on Fashion-MNIST, see docs/methods_meta.md)."""

    inner_steps: int = 5
    meta_lr: float = 1e-4

    def validate(self) -> None:
        super().validate()
        self.check_int("inner_steps", 1)


@register
class MAMLRep(MetaRepMethod):
    name = "maml-rep"
    description = "meta-learned frozen representation (MAML batch inner loop), only the prediction layers learn"
    paper = "Javed & White 2019 (MAML-Rep baseline); Finn et al. 2017, MAML (ICML)"
    Config = MAMLRepConfig
    inner_mode = "batch"

    def learner_kwargs(self) -> dict:
        return {"remember": 0, "inner_steps": self.config.inner_steps}
