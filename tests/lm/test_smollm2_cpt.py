"""A short continual pre-training run of the real SmolLM2-135M: vanilla AdamW vs MIGU (slow: minutes on a CPU)."""
import math

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("gguf")


@pytest.mark.slow
def test_smollm2_cpt_vanilla_vs_migu():
    from cltk.lm.smollm2_cpt import smollm2_cpt
    res = smollm2_cpt(("vanilla", "migu"), n_domains=3, steps=5, batch_size=4, seq_len=64)
    base = np.asarray(res["base"])
    assert np.isfinite(base).all() and (base < 200).all()      # a pretrained LM, not a random one
    for name in ("vanilla", "migu"):
        P = np.asarray(res["runs"][name]["P"])
        assert P.shape == (3, 3) and np.isfinite(P).all()
        # training on a domain lowers its held-out perplexity below the released model's
        assert all(P[j, j] < base[j] for j in range(3))
        assert math.isfinite(res["runs"][name]["metrics"]["bwt_ppl"])
    assert res["runs"]["vanilla"]["P"] != res["runs"]["migu"]["P"]
