"""OML, online-aware meta-learning (Javed & White 2019): meta-learn a representation (RLN) on other classes so
that online SGD on the prediction network (PLN) above it learns without interfering; then freeze the RLN and train
only the PLN on the stream. The meta-training is in :mod:`cltk.meta.oml`."""
from __future__ import annotations

from dataclasses import dataclass

from cltk.meta.oml import MetaRepConfig, MetaRepMethod
from cltk.methods.base import register

__all__ = ["OML", "OMLConfig"]


@dataclass
class OMLConfig(MetaRepConfig):
    """:class:`~cltk.meta.oml.MetaRepConfig` plus ``remember``: images drawn uniformly from the whole
    meta-training set and added to each episode's meta-loss, 15 (mrcl code). The inner loop takes one SGD step per
    support image (``n_way * support_per_class`` steps, class by class)."""

    remember: int = 15

    def validate(self) -> None:
        super().validate()
        self.check_int("remember", 0)


@register
class OML(MetaRepMethod):
    name = "oml"
    description = "meta-learned frozen representation (online inner loop), only the prediction layers learn"
    paper = "Javed & White 2019, Meta-Learning Representations for Continual Learning (NeurIPS)"
    Config = OMLConfig
    inner_mode = "online"

    def learner_kwargs(self) -> dict:
        return {"remember": self.config.remember, "inner_steps": 1}
