"""A short continual pre-training run of the real SmolLM2-135M (:func:`cltk.lm.load_smollm2`) on BBC News domains.

The same protocol as :mod:`cltk.lm.cpt`, shortened: the first ``n_domains`` BBC topics (same article split as the
small benchmark), tokenized with SmolLM2's own tokenizer (each article followed by the EOS token) and packed into
blocks of ``seq_len + 1`` tokens; ``steps`` AdamW (or MIGU-wrapped AdamW, T = 0.7) steps of ``batch_size`` blocks on
each domain in turn, starting from the released weights (there is no separate first-domain pre-training: the
pretrained model plays that role). ``P[i, j]`` is the held-out perplexity on domain ``j`` after training domain
``i``; ``base[j]`` is the released model's. The LM head of SmolLM2 is tied to the input embedding, so MIGU's row
mask of the head also masks those embedding rows' gradient.

Command (a few minutes on a CPU)::

    OMP_NUM_THREADS=2 python -c "from cltk.lm.smollm2_cpt import main; main()"
"""
from __future__ import annotations

import json
import math
import time
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from cltk.lm.data import split_articles
from cltk.lm.metrics import cpt_metrics
from cltk.text.corpora import BBC_TOPICS, bbc_news

__all__ = ["smollm2_domain_blocks", "smollm2_cpt", "main"]


def smollm2_domain_blocks(tokenizer, n_domains: int, seq_len: int, n_train_blocks: int, n_heldout_blocks: int,
                          heldout_frac: float = 0.2, split_seed: int = 0) -> tuple[list, list]:
    """Per domain, ``n_train_blocks`` / ``n_heldout_blocks`` int64 ``[N, seq_len + 1]`` blocks of SmolLM2 token
    ids, from the first articles (in shuffled split order) of the same train / held-out split as the small
    benchmark. Only as many articles as needed are tokenized."""
    texts, labels = bbc_news()
    eos = tokenizer.eos_token_id
    train, heldout = [], []
    for k in range(n_domains):
        idx = [i for i, y in enumerate(labels) if y == k]
        tr, he = split_articles(len(idx), heldout_frac, split_seed + k)
        out = []
        for order, need in ((tr, n_train_blocks), (he, n_heldout_blocks)):
            flat: list[int] = []
            for i in order:
                flat += tokenizer(texts[idx[i]], add_special_tokens=False)["input_ids"] + [eos]
                if len(flat) >= need * (seq_len + 1):
                    break
            n = min(need, len(flat) // (seq_len + 1))
            out.append(torch.tensor(flat[: n * (seq_len + 1)], dtype=torch.int64).view(n, seq_len + 1))
        train.append(out[0])
        heldout.append(out[1])
    return train, heldout


@torch.no_grad()
def _ppl(model, blocks: torch.Tensor, batch_size: int) -> float:
    model.eval()
    total, n = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        b = blocks[i:i + batch_size]
        logits = model(input_ids=b[:, :-1]).logits
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), b[:, 1:].reshape(-1),
                                       reduction="sum"))
        n += b[:, 1:].numel()
    return math.exp(total / n)


def smollm2_cpt(methods: Sequence[str] = ("vanilla", "migu"), *, n_domains: int = 3, steps: int = 5,
                batch_size: int = 4, seq_len: int = 64, lr: float = 1e-4, threshold: float = 0.7,
                n_heldout_blocks: int = 8, seed: int = 0, log=print) -> dict:
    """Continually pre-train SmolLM2-135M on ``n_domains`` BBC topics with each method (from the same released
    weights); returns ``{"base": [...], "runs": {method: {"P", "metrics", "time_s"}}, "settings": {...}}``."""
    from cltk.lm.smollm2 import load_smollm2
    from cltk.optim import MIGU
    for name in methods:
        if name not in ("vanilla", "migu"):
            raise ValueError(f"smollm2_cpt: methods must be 'vanilla' or 'migu', got {name!r}")
    if not 2 <= n_domains <= len(BBC_TOPICS):
        raise ValueError(f"smollm2_cpt: n_domains must be in [2, {len(BBC_TOPICS)}], got {n_domains!r}")
    model, tok = load_smollm2()
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    train, heldout = smollm2_domain_blocks(tok, n_domains, seq_len, steps * batch_size, n_heldout_blocks)
    base = [_ppl(model, h, batch_size) for h in heldout]
    log(f"SmolLM2-135M base perplexity: {', '.join(f'{BBC_TOPICS[j]} {p:.2f}' for j, p in enumerate(base))}")
    runs = {}
    for name in methods:
        model.load_state_dict(init)
        torch.manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
        if name == "migu":
            opt = MIGU(opt, model, threshold=threshold)
        t0 = time.perf_counter()
        P = []
        for k in range(n_domains):
            if hasattr(opt, "begin_task"):
                opt.begin_task()
            g = torch.Generator().manual_seed(seed * 1000 + k)
            order = torch.randperm(len(train[k]), generator=g)
            model.train()
            for s in range(steps):
                b = train[k][order[s * batch_size:(s + 1) * batch_size]]
                logits = model(input_ids=b[:, :-1]).logits
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), b[:, 1:].reshape(-1))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
            P.append([_ppl(model, h, batch_size) for h in heldout])
            log(f"{name}: after {BBC_TOPICS[k]}: " + ", ".join(f"{p:.2f}" for p in P[-1]))
        if hasattr(opt, "close"):
            opt.close()
        runs[name] = {"P": P, "metrics": cpt_metrics(P), "time_s": time.perf_counter() - t0}
    model.load_state_dict(init)
    return {"base": base, "runs": runs, "domains": list(BBC_TOPICS[:n_domains]),
            "settings": {"n_domains": n_domains, "steps": steps, "batch_size": batch_size, "seq_len": seq_len,
                         "lr": lr, "threshold": threshold, "n_heldout_blocks": n_heldout_blocks, "seed": seed}}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    res = smollm2_cpt()
    for name, r in res["runs"].items():
        m = r["metrics"]
        print(f"{name:<8} avg ppl {m['avg_ppl']:.2f}  BWT_ppl {m['bwt_ppl']:+.3f}  FWT_ppl {m['fwt_ppl']:+.3f}  "
              f"{r['time_s']:.0f} s")
    print(json.dumps(res))
    return res
