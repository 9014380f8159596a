import math

import pytest
import torch
from torch import nn

from cltk.benchmark import scaling
from cltk.benchmark.scaling import SIZES
from cltk.benchmark.timing import num_threads
from cltk.lm.gpt import GPT, GPTConfig

TINY = GPTConfig(d_model=32, n_layer=2, n_head=2, vocab_size=64, block_size=16)


def test_named_sizes_hit_their_targets():
    assert TINY.num_parameters() == GPT(TINY).n_params()
    assert SIZES["10M"].num_parameters() == GPT(SIZES["10M"]).n_params()
    tied = GPTConfig(d_model=32, n_layer=2, n_head=2, vocab_size=64, block_size=16, tie_head=True)
    assert tied.num_parameters() == GPT(tied).n_params()
    counts = {k: c.num_parameters() for k, c in SIZES.items()}
    for name, target in (("10M", 10e6), ("30M", 30e6), ("100M", 100e6), ("300M", 300e6), ("1B", 1e9)):
        assert 0.9 * target <= counts[name] <= 1.1 * target, (name, counts[name])


def test_gpt_is_causal_and_checks_its_input():
    torch.manual_seed(0)
    model = GPT(TINY).eval()
    x = torch.randint(0, 64, (2, 16))
    y = x.clone()
    y[:, 10:] = (y[:, 10:] + 1) % 64
    a, b = model(x), model(y)
    assert a.shape == (2, 16, 64)
    torch.testing.assert_close(a[:, :10], b[:, :10])  # later tokens do not leak into earlier positions
    assert not torch.allclose(a[:, 10:], b[:, 10:])
    with pytest.raises(ValueError, match="sequence length 17 exceeds block_size 16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="d_model .* must be divisible by n_head"):
        GPT(GPTConfig(d_model=30, n_layer=1, n_head=4))


@pytest.mark.parametrize("provider", ["adamw_forloop", "adamw_foreach", "adamw_fused", "hook_quantile_ref",
                                      "awm_interp"])
def test_worker_times_every_phase_and_trains(provider, monkeypatch):
    monkeypatch.setitem(scaling.SIZES, "tiny", TINY)
    with num_threads(torch.get_num_threads()):
        res = scaling.worker("tiny", provider, steps=2, warmup=1, batch=2, threads=1)
    med = res["median_s"]
    assert med["step"] > 0 and med["forward"] > 0 and med["backward"] > 0 and med["optimizer"] > 0
    assert med["step"] == pytest.approx(sum(med[p] for p in scaling.PHASES), rel=1e-6)
    assert (med["magnitude"] > 0) == (provider == "hook_quantile_ref")
    assert (med["mask"] > 0) == (provider == "hook_quantile_ref")
    assert all(math.isfinite(l) for l in res["losses"]) and res["losses"][-1] != res["losses"][0]
    assert res["tokens_per_step"] == 2 * 16 and res["peak_extra_bytes"] >= 0


def test_reference_mask_zeroes_the_rows_below_the_quantile():
    torch.manual_seed(0)
    model = GPT(TINY)
    prov = scaling._hook_quantile_ref(model, 1e-3, threshold=0.7)
    x, y = scaling.token_batch(2, 16, 64)
    nn.functional.cross_entropy(model(x).reshape(-1, 64), y.reshape(-1)).backward()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    grads = {m: m.weight.grad.clone() for m in linears}
    name, mask = prov.post[0]
    assert name == "mask"
    mask()
    for m in linears:
        zero_rows = (m.weight.grad == 0).all(1)
        kept = ~zero_rows
        assert 0.25 <= kept.float().mean() <= 0.35  # top 30% of the rows by cached |y| survive
        torch.testing.assert_close(m.weight.grad[kept], grads[m][kept], rtol=0, atol=0)
    prov.close()


def test_awm_is_the_identity_at_init_and_trains_only_the_grids():
    torch.manual_seed(0)
    model = GPT(TINY)
    x, _ = scaling.token_batch(1, 16, 64)
    before = model(x).detach()
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    prov = scaling._awm(scaling._interp_modulate, "interp")(model, 1e-2)
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(".mod") for n in trainable)
    model(x).sum().backward()
    prov.post[0][1]()
    for n, p in model.named_parameters():
        if n in weights:
            assert torch.equal(p, weights[n])  # the backbone never changes



def test_rows_and_overhead(tmp_path):
    def res(provider, step):
        med = {"step": step, "forward": step / 2, "magnitude": 0.0, "backward": step / 2, "mask": 0.0,
               "optimizer": 0.0}
        return {"size": "10M", "params": 10.5e6, "tokens_per_step": 512, "batch": 2, "seq_len": 256,
                "provider": provider, "median_s": med, "p20_s": med, "p80_s": med, "steps": 3, "threads": 1,
                "peak_extra_bytes": 2**30}

    env = {"device": "cpu", "cpu_model": "x", "threads": 1, "torch_version": "t", "commit": "c", "timestamp": "now"}
    rows = scaling.rows_from_result(res("adamw_fused", 1.0), env) + scaling.rows_from_result(res("other", 1.25), env)
    scaling.add_ratios(rows)
    steps = {r["provider"]: r for r in rows if r["mode"] == "step"}
    assert steps["adamw_fused"]["ratio"] == 1.0 and steps["other"]["ratio"] == 0.8
    assert "+25.0%" in scaling.format_breakdown(rows)
    table = scaling.markdown_table(rows).splitlines()
    assert len(table) == 4 and "| 10M (10.5M) | adamw_fused | 1000 |" in table[2] and "+25.0%" in table[3]
    png = scaling.plot_overhead(rows, str(tmp_path / "o.png"))
    assert (tmp_path / "o.png").stat().st_size > 1000 and png.endswith("o.png")


def test_seq_len_sets_the_tokens_per_step_and_is_checked(monkeypatch):
    monkeypatch.setitem(scaling.SIZES, "tiny", TINY)
    with num_threads(torch.get_num_threads()):
        res = scaling.worker("tiny", "adamw_fused", steps=1, warmup=0, batch=1, threads=1, seq_len=8)
        assert res["tokens_per_step"] == 8 and res["seq_len"] == 8
        with pytest.raises(ValueError, match=r"seq_len must be in \[1, 16\], got 17"):
            scaling.worker("tiny", "adamw_fused", steps=1, warmup=0, batch=1, threads=1, seq_len=17)


def test_footprint_estimate_covers_adamw_state():
    # fp32 parameters, gradients and two moments: 16 bytes per parameter at least
    for cfg in SIZES.values():
        assert scaling.estimate_bytes(cfg, 256) > 16 * cfg.num_parameters()
    big, small = scaling.estimate_bytes(SIZES["1B"], 256), scaling.estimate_bytes(SIZES["300M"], 256)
    assert big > 15 * 2**30 > 8 * 2**30 > small
