"""Step time and peak memory of the attention meta-optimizer against the number of controlled weights (tokens).

One :class:`cltk.optim.AttentionMetaOptimizer` step on a classifier head of n weights (MLP 784 -> h -> 10 with
h = (n - 10) / 10, so n = 10 h + 10), support = the 10 real MNIST-5k images (5 of each of digits 0 and 1):
support loss and gradient, importance scores (``topk_row_mask`` over all n at once), task encoder, the
transformer (d_model 32, 2 heads, 2 layers, query chunks of 1024 rows), the update. Providers:
  chunked   the default: attention in query chunks of 1024 rows (each an SDPA call against all keys)
  naive     softmax(q k^T / sqrt(d)) v with the [n, n] score matrix materialised (the quadratic reference; run only
            up to 1e4 tokens: at 1e5 it would need 2 heads x 1e10 floats = 80 GB)
Time: process CPU time of one step at 1 thread, median of 9 runs (3 at 1e5, where a step is tens of seconds).
Memory: peak RSS above the post-setup baseline of one step (VmHWM in a fresh subprocess, see
cltk.benchmark.memory).

Measured (Intel Xeon, 2 vCPUs shared with other jobs, torch 2.13 CPU, 1 thread; bench/results/attention_meta.csv):
  tokens     chunked step   chunked peak extra   naive step   naive peak extra
  1,000          8.7 ms          1.1 MiB           15.1 ms        15.9 MiB
  10,000       401.2 ms         14.5 MiB         3155.2 ms      1533.4 MiB
  100,000      39.03 s         147.8 MiB          (not run: ~80 GB of scores)
Memory of the chunked step grows 13x then 10x per 10x tokens (linear); the naive one 96x (quadratic). Time grows
~46x then ~97x: the attention's n^2 arithmetic is still there, only its memory is not.

Run: ``PYTHONPATH=. python bench/attention_meta_tokens.py [--sizes 1000,10000,100000] [--out CSV]``.
"""
from __future__ import annotations

import argparse
import math
import sys
import time


def setup(tokens: int, provider: str = "chunked"):
    """The zero-argument step whose time and peak memory are measured (also the subprocess entry point)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from cltk.meta import attention as am
    from cltk.optim import AttentionMetaOptimizer
    from cltk.streams.builders import make_stream

    torch.manual_seed(0)
    hidden = max(1, (tokens - 10) // 10)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    layout = am.controlled_layout(model, ["head"])
    n = am.layout_numel(layout)
    net = am.AttentionMetaNet(am.MetaNetConfig(n_tokens=n, task_dim=64))
    nn.init.normal_(net.out.weight, std=0.1)
    state = am.meta_checkpoint_state(net, am.TaskEncoder(1, 64), layout, info={"shots": 5})
    opt = AttentionMetaOptimizer(list(model[3].parameters()), state, model=model)
    if provider == "naive":
        def naive(q, k, v, *a, **kw):
            s = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
            return torch.softmax(s, -1) @ v
        for blk in opt.net.blocks:
            blk.chunk = 1 << 62
        am.F = _Patched(F, naive)
    elif provider == "chunked":
        am.F = F
    else:
        raise ValueError(f"provider must be 'chunked' or 'naive', got {provider!r}")
    s = make_stream("split-mnist5k", "class", 0, train_per_task=10, val_fraction=0.0, test_per_task=1)
    x, y = s.tasks[0].train.x, s.tasks[0].train.y
    return lambda: opt.step((x, y))


class _Patched:
    """``torch.nn.functional`` with scaled_dot_product_attention replaced (the naive reference provider)."""

    def __init__(self, F, sdpa) -> None:
        self._F, self.scaled_dot_product_attention = F, sdpa

    def __getattr__(self, name):
        return getattr(self._F, name)


def main(argv=None) -> int:
    import torch

    from cltk.benchmark.memory import CallableSpec, peak_extra_bytes
    from cltk.benchmark.results import append_rows, environment_fields
    from cltk.benchmark.timing import summarize

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,10000,100000")
    p.add_argument("--naive-max", type=int, default=10000, help="largest size the naive provider runs at")
    p.add_argument("--out", default="bench/results/attention_meta.csv")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        for provider in ("chunked", "naive"):
            if provider == "naive" and n > args.naive_max:
                continue
            step = setup(n, provider)
            step()                                   # warm-up
            runs = 9 if n <= 20000 else 3
            samples = []
            for _ in range(runs):
                t0 = time.process_time()
                step()
                samples.append(time.process_time() - t0)
            t = summarize(samples)
            del step
            peak = peak_extra_bytes(CallableSpec("bench.attention_meta_tokens", "setup",
                                                 {"tokens": n, "provider": provider}), threads=1, timeout=1800)
            print(f"{provider:8s} n={n:>7d}  step {t.median * 1e3:9.1f} ms (p20 {t.p20 * 1e3:.1f}, p80 "
                  f"{t.p80 * 1e3:.1f}, {runs} runs)  peak extra {peak / 2**20:8.1f} MiB", flush=True)
            rows.append({"kernel": "attention_meta_step", "provider": provider, "mode": "step",
                         "shape": f"{n} tokens", "median_s": t.median, "p20_s": t.p20, "p80_s": t.p80,
                         "runs": runs, "ratio": "", "baseline": "", "bytes_moved": "", "gbps": "",
                         "bandwidth_kind": "", "pct_bandwidth": "", "peak_extra_bytes": peak,
                         "clock": "process_cpu", **environment_fields("cpu", 1)})
    if args.out:
        append_rows(args.out, rows)
        print(f"appended {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
