"""Meta-learning for continual learning: the attention meta-optimizer (Vettoruzzo et al. 2024), a network that
predicts a classifier's weight updates, and meta-learned representations (OML and MAML-Rep, Javed & White 2019,
in :mod:`cltk.meta.oml`)."""
from cltk.meta.attention import (AttentionMetaNet, MetaNetConfig, TaskEncoder, chunked_attention, controlled_layout,
                                 importance_scores, load_meta_checkpoint, meta_train, pretrain_task_encoder,
                                 resolve_layers, save_meta_checkpoint)

__all__ = ["AttentionMetaNet", "MetaNetConfig", "TaskEncoder", "chunked_attention", "controlled_layout",
           "importance_scores", "load_meta_checkpoint", "meta_train", "pretrain_task_encoder", "resolve_layers",
           "save_meta_checkpoint"]
