"""Causal language models: the pretrained SmolLM2-135M loader."""
from cltk.lm.smollm2 import load_smollm2, smollm2_gguf

__all__ = ["load_smollm2", "smollm2_gguf"]
