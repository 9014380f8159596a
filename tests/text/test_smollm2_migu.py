"""MIGU on a real decoder: SmolLM2-135M (Llama) trained as a causal LM on BBC News articles for a few steps.

The optimizer is ``cltk.optim.MIGU(AdamW)`` over the 210 projections of the 30 blocks (q, k, v, o, gate, up,
down). The LM head is not hooked: its weight is the token embedding matrix (tied), so masking its rows by output
magnitude would also freeze the input embeddings of 70% of the vocabulary, and its rows are the vocabulary, the
analogue of the classifier rows the ``migu`` method leaves unmasked. The head and embeddings, like the norms, are
updated by plain AdamW.

Slow (loads 135M parameters, about 20 s, then 8 steps at 4 x 64 tokens on one thread): ``pytest -m slow
tests/text/test_smollm2_migu.py``.
"""
import time

import pytest
import torch
from torch import nn

from cltk.optim import MIGU

pytestmark = pytest.mark.slow

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SEQ, BATCH, STEPS, LR, THRESHOLD = 64, 4, 8, 1e-4, 0.7


def _batches(tok) -> tuple[list[torch.Tensor], torch.Tensor]:
    from cltk.text.corpora import bbc_news

    texts, _ = bbc_news()
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(0)).tolist()
    picked = [texts[i] for i in order[: (STEPS + 2) * BATCH]]
    ids = tok(picked, max_length=SEQ, truncation=True, return_tensors=None)["input_ids"]
    assert all(len(s) == SEQ for s in ids), "every picked article is longer than the sequence length"
    ids = torch.tensor(ids, dtype=torch.int64)
    train = list(ids[: STEPS * BATCH].split(BATCH))
    return train, ids[STEPS * BATCH:]   # 8 held-out articles


@torch.no_grad()
def _loss(model, ids: torch.Tensor) -> float:
    return model(input_ids=ids, labels=ids).loss.item()


def test_migu_adamw_on_smollm2_masks_30_percent_of_every_projection_and_learns():
    from cltk.lm import load_smollm2

    t0 = time.perf_counter()
    model, tok = load_smollm2()
    t_load = time.perf_counter() - t0
    train, held = _batches(tok)

    named = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    projections = [(n, m) for n, m in named if n.rsplit(".", 1)[-1] in PROJECTIONS]
    assert len(projections) == 7 * 30 == 210
    assert [n for n, _ in named if (n, _) not in projections] == ["lm_head"]
    assert model.lm_head.weight is model.model.embed_tokens.weight   # tied: see the module docstring

    model.train()
    inner = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    opt = MIGU(inner, nn.ModuleList([m for _, m in projections]), threshold=THRESHOLD)
    assert opt.recorder.layers == [m for _, m in projections]
    assert all(len(m._forward_hooks) == 1 for _, m in projections)
    assert not model.lm_head._forward_hooks

    held_before = _loss(model, held)
    first_before = _loss(model, train[0])
    losses, fractions = [], []
    t1 = time.perf_counter()
    for step, ids in enumerate(train):
        before = [m.weight.detach().clone() for _, m in projections] if step == 0 else None
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        masks = opt.last_masks
        assert len(masks) == 210 and all(mk is not None for mk in masks)
        fractions.append(torch.tensor([mk.float().mean().item() for mk in masks]))
        for (name, m), mk in zip(projections, masks):
            assert torch.count_nonzero(m.weight.grad[~mk]) == 0, name
        if before is not None:
            # first AdamW step without weight decay: a zero-gradient row has zero moments and does not move
            for (name, m), mk, w0 in zip(projections, masks, before):
                assert torch.equal(m.weight[~mk], w0[~mk]), name
                assert not torch.equal(m.weight[mk], w0[mk]), name
            del before
    t_train = time.perf_counter() - t1
    held_after = _loss(model, held)
    first_after = _loss(model, train[0])
    opt.close()
    assert all(not m._forward_hooks for _, m in projections)

    frac = torch.stack(fractions)   # [steps, 210]: share of rows updated in each layer at each step
    print(f"\nSmolLM2-135M + MIGU(AdamW lr {LR}, T {THRESHOLD}), {STEPS} steps of {BATCH} x {SEQ} BBC tokens: "
          f"load {t_load:.1f} s, train {t_train:.1f} s ({t_train / STEPS:.2f} s/step); rows updated per layer "
          f"min {frac.min():.4f} mean {frac.mean():.4f} max {frac.max():.4f}; train losses "
          f"{' '.join(f'{v:.3f}' for v in losses)}; held-out loss {held_before:.3f} -> {held_after:.3f}; "
          f"first batch {first_before:.3f} -> {first_after:.3f}")
    # mag >= quantile(mag, 0.7) keeps ceil(0.3 n) rows unless magnitudes tie: 0.3 to 0.302 for these widths
    assert 0.29 <= frac.min() and frac.max() <= 0.31, frac
    assert held_after < held_before, (held_before, held_after)
    assert first_after < first_before, (first_before, first_after)
