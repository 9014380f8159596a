"""A lower bound on the wall time of ``cltk compare --preset three-scenarios`` on this machine.

    python bench/three_scenarios_bound.py [BENCHMARK] [--measured SUMMARY.csv]
    python bench/three_scenarios_bound.py split-mnist5k \
        --measured bench/results/three_scenarios/mnist5k/merged/summary.csv

For every (method, scenario) run of the preset (seed 0, the preset's config), the matrix-multiply FLOPs of the whole
run -- training steps, replay and reference batches, old-model forwards, Fisher / importance passes, evaluation and
the readout probe -- are counted with ``torch.utils.flop_counter.FlopCounterMode`` at two iteration counts (n1, n2
per task); the difference gives the FLOPs per iteration, the rest the per-run fixed part, and the run's FLOPs at the
preset's 2000 iterations per task follow exactly (the runs are the same code at every iteration count). Two bounds:

  matmul bound    the run's matmul FLOPs at the measured single-thread sgemm peak (a 1024^3 fp32 torch.mm, in this
                  process): everything else (activations, losses, penalties, Adam, data, Python) counted as free;
  + Adam          plus one fused Adam step over the model's parameters per iteration at its measured time here
                  (it moves 28 bytes per parameter, bandwidth-bound; the loop uses torch's fused Adam).

The preset's runs spread over the 2 cores as two one-thread processes, so its wall time is at least the summed bound
/ 2. With ``--measured``, each run's measured mean time (a merged summary.csv of the protocol) is printed beside it.

Measured 2026-12-01 on the 2-core Xeon (AVX-512, no AMX; bf16 matmuls are slower than fp32 here), torch 2.13 CPU,
1 thread (bench/results/three_scenarios/{mnist5k,fmnist}/bound.txt): sgemm peak 159.9 GFLOP/s, fused Adam 0.460 ms;
Split MNIST-5k at least 32.1 min (matmul) / 37.6 min (+Adam) on 2 cores, Split Fashion-MNIST 33.6 / 39.2 min; a
bare PyTorch step 3.30 ms = 1.47x the finetune bound, about 55 min for the protocol at that efficiency. The
"measured" column is the protocol's mean wall time per run (its sum / 2 is not the protocol's wall time).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

from cltk.benchmark import measure, sgemm_peak_gflops
from cltk.loop import run
from cltk.methods import method_class
from cltk.models import build_model
from cltk.presets import get_preset
from cltk.streams.builders import make_stream


def adam_step_seconds(params: list[torch.Tensor], lr: float, steps: int = 200, runs: int = 7) -> float:
    """Time of one fused Adam step over ``params`` (random gradients, warm state; the fastest of ``runs`` samples
    of ``steps`` steps)."""
    params = [p.detach().clone().requires_grad_(True) for p in params]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-2
    opt = torch.optim.Adam(params, lr=lr, fused=True)
    return min(measure(opt.step, runs=runs, warmup=20, number=steps).samples)


def bare_step_seconds(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, batch_size: int,
                      steps: int = 300, runs: int = 7) -> float:
    """Median time of one step of a bare PyTorch loop on ``net``: draw a minibatch, forward, cross-entropy,
    backward, fused Adam (what a finetune iteration is, without cltk's loop, hooks or bookkeeping), with denormals
    flushed as cltk's loop does (``runs`` samples of ``steps`` steps)."""
    opt = torch.optim.Adam(net.parameters(), lr=lr, fused=True)
    x = x.flatten(1)
    g = torch.Generator().manual_seed(0)

    def step():
        idx = torch.randint(x.shape[0], (batch_size,), generator=g)
        loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    flush = torch.set_flush_denormal(True)
    try:
        return measure(step, runs=runs, warmup=30, number=steps).median
    finally:
        if flush:
            torch.set_flush_denormal(False)


def run_flops(cls, config, benchmark: str, scenario: str, iters: int, batch_size: int, model: str) -> int:
    stream = make_stream(benchmark, scenario, 0)
    net = build_model(model, stream, seed=0)
    with FlopCounterMode(display=False) as counter:
        run(cls(config), net, stream, iters_per_task=iters, batch_size=batch_size, seed=0, progress=False)
    return int(counter.get_total_flops())


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("benchmark", nargs="?", default="split-mnist5k")
    p.add_argument("--measured", help="a merged summary.csv of the protocol (method, scenario, time_s_mean)")
    p.add_argument("--n1", type=int, default=4)
    p.add_argument("--n2", type=int, default=12)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    preset = get_preset("three-scenarios", benchmark=args.benchmark)
    measured = {}
    if args.measured:
        with open(args.measured, newline="") as f:
            measured = {(r["method"], r["scenario"]): float(r["time_s_mean"]) for r in csv.DictReader(f)}
    peak = sgemm_peak_gflops(runs=15, best=True)
    lr = preset.config.get("lr", 1e-3)
    probe_stream = make_stream(args.benchmark, "class", 0)
    probe = build_model(preset.model, probe_stream, seed=0)
    n_params = sum(p.numel() for p in probe.parameters())
    adam = adam_step_seconds(list(probe.parameters()), lr=lr)
    train = probe_stream.tasks[0].train
    bare = bare_step_seconds(probe, train.x, train.y, lr, preset.batch_size)
    n_tasks = len(probe_stream.tasks)
    print(f"sgemm peak {peak:.1f} GFLOP/s; fused Adam step over {n_params:,} parameters {adam * 1e3:.3f} ms "
          f"({28 * n_params / adam / 1e9:.1f} GB/s at 28 B/param); bare PyTorch training step (batch "
          f"{preset.batch_size}, fwd + bwd + fused Adam) {bare * 1e3:.3f} ms = {bare * n_tasks * preset.iters:.1f} s "
          f"per {n_tasks} x {preset.iters} iterations")
    print(f"{'scenario':8s} {'method':11s} {'GFLOP/iter':>10s} {'fixed GFLOP':>11s} {'run TFLOP':>9s} "
          f"{'matmul s':>8s} {'+Adam s':>8s} {'measured s':>10s}")
    tot_mm = tot_adam = tot_meas = 0.0
    finetune_iter = None                                    # finetune's per-iteration bound, for the bare-loop ratio
    runs_per_pair = len(preset.seeds)
    for sc in preset.scenarios:
        for name in preset.methods:
            cls = method_class(name)
            if sc not in cls.scenarios:
                continue
            fields = {f.name for f in dataclasses.fields(cls.Config)}
            config = cls.Config(**{k: v for k, v in preset.config.items() if k in fields})
            f1 = run_flops(cls, config, args.benchmark, sc, args.n1, preset.batch_size, preset.model)
            f2 = run_flops(cls, config, args.benchmark, sc, args.n2, preset.batch_size, preset.model)
            per_iter = (f2 - f1) / (args.n2 - args.n1)          # summed over the tasks: FLOPs per iters_per_task
            fixed = f1 - per_iter * args.n1
            total = fixed + per_iter * preset.iters
            t_mm = total / (peak * 1e9)
            t_adam = t_mm + n_tasks * preset.iters * adam
            if finetune_iter is None and name == "finetune":
                finetune_iter = per_iter / n_tasks / (peak * 1e9) + adam
            meas = measured.get((name, sc))
            tot_mm += t_mm * runs_per_pair
            tot_adam += t_adam * runs_per_pair
            tot_meas += (meas or 0.0) * runs_per_pair
            print(f"{sc:8s} {name:11s} {per_iter / n_tasks / 1e9:10.3f} {fixed / 1e9:11.2f} {total / 1e12:9.2f} "
                  f"{t_mm:8.1f} {t_adam:8.1f} {meas if meas is not None else float('nan'):10.1f}", flush=True)
    print(f"all runs x {runs_per_pair} seeds: matmul bound {tot_mm:.0f} s, +Adam {tot_adam:.0f} s"
          + (f", measured {tot_meas:.0f} s" if measured else "") + " of process time")
    print(f"on 2 cores (2 one-thread processes, perfect balance): at least {tot_mm / 2 / 60:.1f} min (matmul), "
          f"{tot_adam / 2 / 60:.1f} min (+Adam)" + (f"; measured {tot_meas / 2 / 60:.1f} min" if measured else ""))
    if finetune_iter:
        ratio = bare / finetune_iter
        print(f"a bare PyTorch step takes {ratio:.2f}x finetune's per-iteration bound; every run at that efficiency: "
              f"about {tot_adam * ratio / 2 / 60:.1f} min on 2 cores (an estimate, not a bound)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
