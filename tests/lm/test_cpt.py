"""The BBC continual pre-training benchmark on real BBC News text, with a tiny GPT and a few steps."""
import json
import math

import numpy as np
import pytest
import torch

from cltk.lm.cpt import CPTSettings, evaluate_ppl, run_cpt
from cltk.lm.data import bbc_cpt_data, pack_blocks, split_articles
from cltk.lm.gpt import GPT, GPTConfig
from cltk.lm.methods import CPT_METHODS, make_config
from cltk.methods._replay_buffer import ReservoirBuffer
from cltk.optim import MIGU
from cltk.text.corpora import BBC_TOPICS

TINY_MODEL = {"d_model": 32, "n_layer": 1, "n_head": 2}


def tiny(**kw):
    base = dict(steps=3, pretrain_steps=3, batch_size=4, n_domains=2, max_heldout_blocks=8, model=TINY_MODEL)
    base.update(kw)
    return CPTSettings(**base).validate()


@pytest.fixture(scope="module")
def data():
    return bbc_cpt_data()


def test_split_is_deterministic_and_disjoint():
    a_tr, a_he = split_articles(100, 0.2, seed=3)
    b_tr, b_he = split_articles(100, 0.2, seed=3)
    assert (a_tr, a_he) == (b_tr, b_he)
    assert len(a_he) == 20 and not set(a_tr) & set(a_he) and sorted(a_tr + a_he) == list(range(100))
    assert split_articles(100, 0.2, seed=4) != (a_tr, a_he)
    with pytest.raises(ValueError, match="heldout_frac"):
        split_articles(10, 1.0, seed=0)


def test_pack_blocks_concatenates_and_drops_the_remainder():
    b = pack_blocks([[1, 2, 3], [4, 5], [6, 7, 8, 9]], 4)
    assert b.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    with pytest.raises(ValueError, match="block_len"):
        pack_blocks([[1, 2]], 1)


def test_bbc_blocks_are_deterministic_and_train_heldout_disjoint(data):
    again = bbc_cpt_data.__wrapped__()          # rebuilt from the (cached) tokens, not the cached result
    assert data.domains == BBC_TOPICS and data.vocab_size == 12288
    for k in range(5):
        assert torch.equal(data.train[k], again.train[k]) and torch.equal(data.heldout[k], again.heldout[k])
        assert data.train[k].shape[1] == 65 and data.train[k].dtype == torch.int64
        assert len(data.train[k]) > 1000 and len(data.heldout[k]) == 32
        assert int(data.train[k].max()) < data.vocab_size and int(data.train[k].min()) >= 0
        # held-out text comes from other articles: almost no held-out 65-token block occurs in training
        tr = {tuple(r) for r in data.train[k].tolist()}
        assert not any(tuple(r) in tr for r in data.heldout[k].tolist())
    assert 0.0 < data.unk_rate < 0.1


def test_gpt_is_causal():
    torch.manual_seed(0)
    m = GPT(vocab_size=50, block_size=16, **TINY_MODEL).eval()
    x = torch.randint(0, 50, (2, 16))
    y = x.clone()
    y[:, 10:] = (y[:, 10:] + 7) % 50
    with torch.no_grad():
        a, b = m(x), m(y)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert not torch.allclose(a[:, 10:], b[:, 10:], atol=1e-3)
    assert all(isinstance(mod, torch.nn.Linear) for mod in (m.head, m.blocks[0].attn.qkv, m.blocks[0].fc))


def test_untrained_perplexity_is_of_the_vocabulary_size(data):
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=data.vocab_size, block_size=64, **TINY_MODEL))
    ppl = evaluate_ppl(m, data.heldout[0][:8])
    assert 0.5 * data.vocab_size < ppl < 2.0 * data.vocab_size


def test_model_size_of_the_benchmark(data):
    c = CPTSettings().gpt_config(data.vocab_size)
    assert (c.vocab_size, c.d_model, c.n_layer, c.n_head, c.tie_head) == (12288, 256, 6, 4, False)
    V, d, T = c.vocab_size, c.d_model, c.block_size
    block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    expected = V * d + T * d + c.n_layer * block + 2 * d + V * d       # embeddings, blocks, final LN, head
    n = GPT(c).n_params()
    assert n == expected == 11_046_912


@pytest.mark.parametrize("method", list(CPT_METHODS))
def test_every_method_gives_a_finite_matrix(method, tmp_path, data):
    r = run_cpt(method, 0, tiny(), cache_dir=str(tmp_path), data=data)
    P = np.asarray(r["P"])
    assert P.shape == (2, 2) and np.isfinite(P).all() and (P > 1).all()
    assert math.isfinite(r["metrics"]["bwt_ppl"]) and math.isfinite(r["metrics"]["avg_ppl"])
    json.dumps(r)


def test_every_method_starts_from_the_same_cached_model(tmp_path, data):
    a = run_cpt("vanilla", 1, tiny(), cache_dir=str(tmp_path), data=data)
    assert len(list(tmp_path.glob("pretrain_seed1_*.pt"))) == 1
    b = run_cpt("migu", 1, tiny(), cache_dir=str(tmp_path), data=data)
    assert a["P"][0] == b["P"][0] and a["P"][1] != b["P"][1]


def test_migu_masks_70_percent_of_the_rows(data):
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=data.vocab_size, block_size=64, **TINY_MODEL))
    opt = MIGU(torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.0), m, threshold=0.7)
    m.loss(data.train[1][:4]).backward()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt.step()
    masks = opt.last_masks
    assert len(masks) == len(opt.recorder.layers) == 5      # qkv, proj, fc, out, head
    for layer, mk in zip(opt.recorder.layers, masks):
        frac = float(mk.float().mean())
        assert 0.3 - 1.0 / mk.numel() <= frac <= 0.3 + 2.0 / mk.numel() + 0.01, frac
    head_changed = (m.head.weight != before["head.weight"]).any(dim=1)
    assert torch.equal(head_changed, masks[-1])
    opt.close()
    r = run_cpt("migu", 0, tiny(), data=data)
    assert r["masked_row_frac"] == pytest.approx(0.7, abs=0.02)


def test_er_buffer_never_exceeds_its_size(data):
    buf = ReservoirBuffer(10, seed=0)
    for k in range(5):
        x = data.train[k][:7]
        buf.add(x, torch.zeros(7, dtype=torch.int64), torch.full((7,), k))
        assert len(buf) <= 10 and buf.x.shape == (10, 65)
    assert buf.n_seen == 35
    r = run_cpt("er", 0, tiny(), config={"buffer_size": 5, "replay_batch_size": 2}, data=data)
    assert r["buffer_len"] == 5


@pytest.mark.parametrize("method,field,value", [
    ("vanilla", "lr", 0.0), ("vanilla", "weight_decay", -1.0), ("vanilla", "beta2", 1.0),
    ("migu", "threshold", 1.0), ("migu-adamw", "threshold", -0.1), ("er", "buffer_size", 0),
    ("er", "replay_batch_size", -1), ("er-migu", "threshold", "high"), ("er-migu", "buffer_size", 2.5)])
def test_bad_configs_name_the_field(method, field, value):
    with pytest.raises(ValueError, match=field):
        make_config(method, **{field: value})


def test_bad_settings_and_names():
    with pytest.raises(ValueError, match="unknown CPT method"):
        make_config("nope")
    with pytest.raises(ValueError, match="no field threshold"):
        make_config("vanilla", threshold=0.5)
    with pytest.raises(ValueError, match="steps"):
        CPTSettings(steps=0).validate()
    with pytest.raises(ValueError, match="n_domains"):
        CPTSettings(n_domains=6).validate()
    with pytest.raises(ValueError, match="vocab_size"):
        CPTSettings(model={"vocab_size": 3}).validate()
    with pytest.raises(ValueError, match="d_model"):
        GPTConfig(d_model=30, n_head=4).validate()
    with pytest.raises(ValueError, match="block_size"):
        GPT(vocab_size=10, block_size=4, **TINY_MODEL)(torch.zeros(1, 5, dtype=torch.int64))
