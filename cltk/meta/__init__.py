"""Meta-learned optimizers: networks that predict a classifier's weight updates."""
from cltk.meta.attention import (AttentionMetaNet, MetaNetConfig, TaskEncoder, chunked_attention, controlled_layout,
                                 importance_scores, load_meta_checkpoint, meta_train, pretrain_task_encoder,
                                 resolve_layers, save_meta_checkpoint)

__all__ = ["AttentionMetaNet", "MetaNetConfig", "TaskEncoder", "chunked_attention", "controlled_layout",
           "importance_scores", "load_meta_checkpoint", "meta_train", "pretrain_task_encoder", "resolve_layers",
           "save_meta_checkpoint"]
