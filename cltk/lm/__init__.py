"""Causal language models: the pretrained SmolLM2-135M loader, a small GPT, and the BBC News continual
pre-training benchmark (:mod:`cltk.lm.cpt`, ``cltk compare --benchmark bbc-cpt``; docs/cpt.md)."""
from cltk.lm.gpt import GPT, GPTConfig
from cltk.lm.smollm2 import load_smollm2, smollm2_gguf

__all__ = ["load_smollm2", "smollm2_gguf", "GPT", "GPTConfig"]
