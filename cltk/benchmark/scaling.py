"""Scaling runs: per-step time and peak memory of optimizers on GPT-style decoders from 10M to 1B parameters.

Each (size, provider) runs in its own subprocess (``python -m cltk.benchmark.scaling --worker ...``) so that its
peak memory (VmHWM after the model is built; see ``cltk.benchmark.memory``) is its own and one provider's optimizer
state or hooks cannot touch another's. Inside, every step is split into phases timed with process CPU time on
``threads`` threads (1 by default):

  forward      model forward and loss (excluding time spent in magnitude hooks, when a provider has them)
  magnitude    time inside the provider's forward hooks (0 when it has none, or when they are inside a fused op)
  backward     loss.backward()
  mask         the provider's separate mask phase (threshold + gradient masking), 0 if fused into the step
  optimizer    optimizer.step() (for cltk.optim.MIGU / MIGUAdamW it includes their own masking)
  step         the sum; the overhead of a provider is its step time over the vanilla step's, minus 1

The token batch is a fixed number of tokens per step (``batch x seq_len``), taken from real text: the bytes of
torch's own ``nn/modules/module.py`` read as token ids (timing does not depend on the token values).

PROVIDERS is the extension point: a name -> factory(model, lr) returning a ``Provider``. Factories that need a
cltk component import it lazily and raise ``ProviderUnavailable`` when it is missing; the driver then prints a note
and skips that provider.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from cltk.lm.gpt import GPT, GPTConfig

# Decoders by target parameter count (cltk.lm.gpt: pre-LN blocks, untied head, no dropout, 256-token context, a
# byte-level 8192-token vocabulary); about 12 d^2 per block plus 2 * vocab * d for the embedding and the head.
SIZES: dict[str, GPTConfig] = {
    "10M": GPTConfig(d_model=256, n_layer=8, n_head=4, vocab_size=8192, block_size=256),
    "30M": GPTConfig(d_model=512, n_layer=7, n_head=8, vocab_size=8192, block_size=256),
    "100M": GPTConfig(d_model=768, n_layer=12, n_head=12, vocab_size=8192, block_size=256),
    "300M": GPTConfig(d_model=1024, n_layer=23, n_head=16, vocab_size=8192, block_size=256),
    "1B": GPTConfig(d_model=2048, n_layer=19, n_head=16, vocab_size=8192, block_size=256),
}

VANILLA = "adamw_fused"  # the full fine-tuning step that overheads are against
PHASES = ("forward", "magnitude", "backward", "mask", "optimizer")
_MARK = "CLTK_SCALING_JSON:"


class ProviderUnavailable(RuntimeError):
    """A provider's component is not in this cltk build (yet)."""


@dataclass
class Provider:
    """What one training step does after forward and backward.

    post: ordered (phase, fn) run after backward; phase is 'mask' or 'optimizer'.
    zero_grad: clears gradients for the next step.
    after_step: optional, runs after the post phases inside the timed step (e.g. reset accumulated magnitudes),
        accounted to the last post phase.
    hook_seconds: optional, returns the seconds spent in forward hooks since the last call (reported as
        'magnitude', subtracted from 'forward').
    close: removes hooks etc.
    """

    post: list[tuple[str, Callable[[], Any]]]
    zero_grad: Callable[[], Any]
    after_step: Optional[Callable[[], Any]] = None
    hook_seconds: Optional[Callable[[], float]] = None
    close: Optional[Callable[[], Any]] = None
    note: str = ""


def _adamw(kind: str) -> Callable[[nn.Module, float], Provider]:
    def make(model: nn.Module, lr: float) -> Provider:
        flags = {"forloop": dict(foreach=False, fused=False), "foreach": dict(foreach=True, fused=False),
                 "fused": dict(fused=True)}[kind]
        opt = torch.optim.AdamW(model.parameters(), lr=lr, **flags)
        return Provider(post=[("optimizer", opt.step)], zero_grad=lambda: opt.zero_grad(set_to_none=True),
                        note=f"torch.optim.AdamW({', '.join(f'{k}={v}' for k, v in flags.items())})")

    return make


def _hook_quantile_ref(model: nn.Module, lr: float, threshold: float = 0.7) -> Provider:
    """The reference implementation's formulation in plain PyTorch: a forward hook per nn.Linear doing
    ``acc += y.reshape(-1, d).abs().sum(0)`` without no_grad (so the graph through |y| stays alive until reset),
    then at the step ``thr = torch.quantile(acc, T)`` and ``W.grad.mul_((acc >= thr)[:, None])``, then fused AdamW."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    acc = {m: torch.zeros(m.out_features) for m in linears}
    spent = [0.0]

    def hook(mod, inp, out):
        t0 = time.process_time()
        acc[mod] += out.reshape(-1, out.shape[-1]).abs().sum(0)
        spent[0] += time.process_time() - t0

    handles = [m.register_forward_hook(hook) for m in linears]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, fused=True)

    def mask():
        for m in linears:
            a = acc[m].detach()
            keep = a >= torch.quantile(a, threshold)
            m.weight.grad.mul_(keep[:, None])

    def reset():
        for m in linears:
            acc[m] = torch.zeros(m.out_features)

    def hook_seconds():
        s, spent[0] = spent[0], 0.0
        return s

    def close():
        for h in handles:
            h.remove()

    return Provider(post=[("mask", mask), ("optimizer", opt.step)], zero_grad=lambda: opt.zero_grad(set_to_none=True),
                    after_step=reset, hook_seconds=hook_seconds, close=close,
                    note=f"forward hooks + torch.quantile({threshold}) mask + AdamW(fused=True)")


def _cltk_optim(name: str) -> Any:
    try:
        import cltk.optim as optim
    except ImportError as e:
        raise ProviderUnavailable(f"cltk.optim is not importable ({e})") from e
    if not hasattr(optim, name):
        raise ProviderUnavailable(f"cltk.optim.{name} is not in this build")
    return getattr(optim, name)


def _migu_fused(model: nn.Module, lr: float, threshold: float = 0.7) -> Provider:
    MIGU = _cltk_optim("MIGU")
    opt = MIGU(torch.optim.AdamW(model.parameters(), lr=lr, fused=True), model, threshold=threshold)
    return Provider(post=[("optimizer", opt.step)], zero_grad=lambda: opt.zero_grad(set_to_none=True),
                    close=getattr(opt, "close", None), note=f"cltk.optim.MIGU(AdamW(fused=True), threshold={threshold})")


def _migu_adamw(model: nn.Module, lr: float, threshold: float = 0.7) -> Provider:
    MIGUAdamW = _cltk_optim("MIGUAdamW")
    opt = MIGUAdamW(model.parameters(), lr=lr, model=model, threshold=threshold)
    return Provider(post=[("optimizer", opt.step)], zero_grad=lambda: opt.zero_grad(set_to_none=True),
                    close=getattr(opt, "close", None), note=f"cltk.optim.MIGUAdamW(threshold={threshold})")


class _Modulated(nn.Module):
    """Parametrization W -> W * up(M): the frozen weight modulated by a low-resolution trainable grid."""

    def __init__(self, shape: tuple[int, int], grid: tuple[int, int], fn: Callable):
        super().__init__()
        self.mod = nn.Parameter(torch.ones(min(grid[0], shape[0]), min(grid[1], shape[1])))
        self.fn = fn

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.fn(w, self.mod)


def _interp_modulate(w: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
    up = F.interpolate(mod[None, None], size=tuple(w.shape), mode="bicubic", align_corners=False)[0, 0]
    return w * up


def _awm(fn: Callable, label: str, grid: tuple[int, int] = (4, 4)) -> Callable[[nn.Module, float], Provider]:
    def make(model: nn.Module, lr: float) -> Provider:
        from torch.nn.utils import parametrize

        for p in model.parameters():
            p.requires_grad_(False)
        mods = []
        for m in list(model.modules()):
            if isinstance(m, (nn.Linear, nn.Embedding)):
                parametrize.register_parametrization(m, "weight", _Modulated(tuple(m.weight.shape), grid, fn))
                mods.append(m.parametrizations.weight[0].mod)
        opt = torch.optim.AdamW(mods, lr=lr, fused=True)
        return Provider(post=[("optimizer", opt.step)], zero_grad=lambda: opt.zero_grad(set_to_none=True),
                        note=f"AWM {grid} modulation of every Linear/Embedding weight via {label}; AdamW(fused) on "
                             "the grids; the modulated weight is recomputed in forward and differentiated in backward")

    return make


def _awm_cltk(model: nn.Module, lr: float) -> Provider:
    try:
        from cltk.ops import bicubic_modulate
    except ImportError as e:
        raise ProviderUnavailable(f"cltk.ops.bicubic_modulate is not in this build ({e})") from e
    return _awm(lambda w, m: bicubic_modulate(w, m), "cltk.ops.bicubic_modulate")(model, lr)


PROVIDERS: dict[str, Callable[[nn.Module, float], Provider]] = {
    "adamw_forloop": _adamw("forloop"),
    "adamw_foreach": _adamw("foreach"),
    "adamw_fused": _adamw("fused"),
    "hook_quantile_ref": _hook_quantile_ref,
    "migu_fused": _migu_fused,          # cltk.optim.MIGU wrapping AdamW(fused=True)
    "migu_adamw": _migu_adamw,          # cltk.optim.MIGUAdamW
    "awm_interp": _awm(_interp_modulate, "F.interpolate(bicubic) * W"),
    "awm_cltk": _awm_cltk,              # cltk.ops.bicubic_modulate
}


def token_batch(batch: int, seq_len: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of shape (batch, seq_len): consecutive windows of real text bytes as token ids."""
    path = os.path.join(os.path.dirname(nn.__file__), "modules", "module.py")
    with open(path, "rb") as f:
        data = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8).long() % vocab
    need = batch * (seq_len + 1)
    if data.numel() < need:
        data = data.repeat(need // data.numel() + 1)
    windows = data[:need].view(batch, seq_len + 1)
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def worker(size: str, provider: str, *, steps: int, warmup: int, batch: int, threads: int, lr: float = 1e-4,
           seq_len: Optional[int] = None) -> dict:
    """One (size, provider) run in this process; returns medians of every phase and the peak memory.

    seq_len: tokens per sequence fed to the model (<= the config's context length, which sets the position table);
    default the full context. Tokens per step = batch x seq_len."""
    if size not in SIZES:
        raise ValueError(f"scaling: size must be one of {list(SIZES)}, got {size!r}")
    if provider not in PROVIDERS:
        raise ValueError(f"scaling: provider must be one of {list(PROVIDERS)}, got {provider!r}")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = SIZES[size]
    seq_len = cfg.block_size if seq_len is None else seq_len
    if not 1 <= seq_len <= cfg.block_size:
        raise ValueError(f"scaling: seq_len must be in [1, {cfg.block_size}], got {seq_len}")
    model = GPT(cfg)
    x, y = token_batch(batch, seq_len, cfg.vocab_size)
    n_params = model.n_params()
    prov = PROVIDERS[provider](model, lr)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base_kib = _status_kib("VmHWM")
    times: dict[str, list[float]] = {p: [] for p in PHASES + ("step",)}
    losses = []
    for i in range(warmup + steps):
        ph = dict.fromkeys(PHASES, 0.0)
        t0 = time.process_time()
        loss = F.cross_entropy(model(x).reshape(-1, cfg.vocab_size), y.reshape(-1))
        t1 = time.process_time()
        loss.backward()
        t2 = time.process_time()
        hooks = prov.hook_seconds() if prov.hook_seconds else 0.0
        ph["forward"], ph["magnitude"], ph["backward"] = t1 - t0 - hooks, hooks, t2 - t1
        for k, (name, fn) in enumerate(prov.post):
            ta = time.process_time()
            fn()
            if k == len(prov.post) - 1 and prov.after_step is not None:
                prov.after_step()
            ph[name] += time.process_time() - ta
        prov.zero_grad()
        losses.append(float(loss.detach()))
        if i >= warmup:
            for p in PHASES:
                times[p].append(ph[p])
            times["step"].append(sum(ph.values()))
    peak_kib = _status_kib("VmHWM")
    if prov.close is not None:
        prov.close()
    return {
        "size": size, "provider": provider, "params": n_params, "batch": batch, "seq_len": seq_len,
        "tokens_per_step": batch * seq_len, "threads": threads, "steps": steps, "warmup": warmup,
        "note": prov.note, "losses": losses,
        "median_s": {p: statistics.median(v) for p, v in times.items()},
        "p20_s": {p: _pct(v, 20) for p, v in times.items()},
        "p80_s": {p: _pct(v, 80) for p, v in times.items()},
        "baseline_rss_bytes": base_kib * 1024, "peak_bytes": peak_kib * 1024,
        "peak_extra_bytes": (peak_kib - base_kib) * 1024,
    }


def _pct(v: list[float], q: float) -> float:
    from cltk.benchmark.timing import percentile

    return percentile(v, q)


def run_in_subprocess(size: str, provider: str, *, steps: int, warmup: int, batch: int, threads: int,
                      seq_len: Optional[int] = None, timeout: float = 3600.0) -> dict:
    """Run ``worker`` in a fresh interpreter; raises ProviderUnavailable if the provider is missing there."""
    import cltk

    env = dict(os.environ)
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    root = os.path.dirname(os.path.dirname(os.path.abspath(cltk.__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "cltk.benchmark.scaling", "--worker", "--sizes", size, "--providers", provider,
           "--steps", str(steps), "--warmup", str(warmup), "--batch", str(batch), "--threads", str(threads)]
    if seq_len is not None:
        cmd += ["--seq-len", str(seq_len)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith(_MARK):
            out = json.loads(line[len(_MARK):])
            if "unavailable" in out:
                raise ProviderUnavailable(out["unavailable"])
            return out
    raise RuntimeError(f"scaling worker {size}/{provider} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def rows_from_result(res: dict, env: dict) -> list[dict]:
    """Results rows (the one CSV schema) for one worker result: one row per phase plus the whole step.

    ratio: the vanilla step time (adamw_fused) over this provider's, filled in by ``add_ratios``."""
    shape = (f"{res['size']} ({res['params'] / 1e6:.1f}M params, {res['tokens_per_step']} tok/step = "
             f"{res['batch']}x{res['seq_len']})")
    rows = []
    for phase in ("step",) + PHASES:
        rows.append({
            "kernel": "scaling_gpt", "provider": res["provider"], "mode": phase, "shape": shape,
            "median_s": res["median_s"][phase], "p20_s": res["p20_s"][phase], "p80_s": res["p80_s"][phase],
            "runs": res["steps"], "ratio": None, "baseline": VANILLA, "bytes_moved": 0, "gbps": None,
            "bandwidth_kind": "inplace", "pct_bandwidth": None,
            "peak_extra_bytes": res["peak_extra_bytes"] if phase == "step" else None, "clock": "process_cpu",
            **env, "threads": res["threads"],
        })
    return rows


def add_ratios(rows: list[dict]) -> None:
    """ratio = vanilla step median / provider step median, per size, on the 'step' rows."""
    base = {r["shape"]: r["median_s"] for r in rows if r["provider"] == VANILLA and r["mode"] == "step"}
    for r in rows:
        if r["mode"] == "step" and r["shape"] in base:
            r["ratio"] = base[r["shape"]] / r["median_s"]


def plot_overhead(rows: list[dict], path: str) -> str:
    """Overhead % of each provider's step over the vanilla (adamw_fused) step, against parameter count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r for r in rows if r["mode"] == "step"]
    params = {r["shape"]: float(r["shape"].split("(")[1].split("M")[0]) * 1e6 for r in steps}
    base = {r["shape"]: float(r["median_s"]) for r in steps if r["provider"] == VANILLA}
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for prov in dict.fromkeys(r["provider"] for r in steps):
        pts = sorted((params[r["shape"]], 100.0 * (float(r["median_s"]) / base[r["shape"]] - 1.0),
                      float(r["peak_extra_bytes"]) / 2**30)
                     for r in steps if r["provider"] == prov and r["shape"] in base)
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=prov)
        ax2.plot([p[0] for p in pts], [p[2] for p in pts], marker="o", label=prov)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_yscale("symlog", linthresh=20)  # linear within +-20 %, logarithmic beyond (AWM via F.interpolate: ~+280 %)
    ticks = [-10, 0, 5, 10, 20, 50, 100, 200, 400]
    ax.set_yticks(ticks, [f"{t:+d}" if t else "0" for t in ticks])
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel(f"step time overhead vs {VANILLA} (%)")
    ax.set_title("per-step time overhead (process CPU time, 1 thread)", fontsize=9)
    ax2.set_xscale("log")
    ax2.set_xlabel("parameters")
    ax2.set_ylabel("peak extra RSS during training (GiB)")
    ax2.set_title("peak memory above the built model", fontsize=9)
    ax2.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    tmp = f"{path}.tmp.{os.getpid()}.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def format_breakdown(rows: list[dict]) -> str:
    by = {}
    for r in rows:
        by.setdefault((r["shape"], r["provider"]), {})[r["mode"]] = r
    lines = [f"{'size':<46} {'provider':<18} {'step':>8} {'fwd':>8} {'mag':>7} {'bwd':>8} {'mask':>7} {'opt':>7} "
             f"{'vs vanilla':>10} {'peak extra':>11}"]
    base = {s: float(d["step"]["median_s"]) for (s, p), d in by.items() if p == VANILLA}
    for (shape, prov), d in by.items():
        step = float(d["step"]["median_s"])
        ov = f"{100 * (step / base[shape] - 1):+.1f}%" if shape in base else ""
        lines.append(
            f"{shape:<46} {prov:<18} {step:8.3f} " + " ".join(
                f"{float(d[p]['median_s']):{8 if p in ('forward', 'backward') else 7}.3f}" for p in PHASES)
            + f" {ov:>10} {float(d['step']['peak_extra_bytes']) / 2**30:8.2f} GiB")
    return "\n".join(lines)


def markdown_table(rows: list[dict]) -> str:
    """README table: per size and provider, the step and its phases (ms), the overhead over the vanilla step and the
    peak extra memory."""
    by: dict = {}
    for r in rows:
        by.setdefault((r["shape"], r["provider"]), {})[r["mode"]] = r
    base = {s: float(d["step"]["median_s"]) for (s, p), d in by.items() if p == VANILLA and "step" in d}
    order = list(PROVIDERS)
    keys = sorted((k for k in by if "step" in by[k]),
                  key=lambda k: (float(k[0].split("(")[1].split("M")[0]),
                                 order.index(k[1]) if k[1] in order else len(order)))
    out = ["| size | provider | step (ms) | p20..p80 | forward | magnitude | backward | mask | optimizer | "
           f"vs {VANILLA} | peak extra |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for shape, prov in keys:
        d = by[(shape, prov)]
        step = float(d["step"]["median_s"])
        ov = f"{100 * (step / base[shape] - 1):+.1f}%" if shape in base else "–"
        phases = " | ".join(f"{1e3 * float(d[p]['median_s']):.0f}" if p in d else "–" for p in PHASES)
        size = f"{shape.split(' (')[0]} ({shape.split('(')[1].split(' params')[0]})"
        out.append(f"| {size} | {prov} | {1e3 * step:.0f} | "
                   f"{1e3 * float(d['step']['p20_s']):.0f}..{1e3 * float(d['step']['p80_s']):.0f} | {phases} | {ov} | "
                   f"{float(d['step']['peak_extra_bytes']) / 2**30:.2f} GiB |")
    return "\n".join(out)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cltk.benchmark.scaling", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10M,30M,100M", help=f"comma-separated, from {list(SIZES)}")
    ap.add_argument("--providers", default=",".join(PROVIDERS), help=f"comma-separated, from {list(PROVIDERS)}")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per run (after warm-up)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch", type=int, default=2, help="sequences per step; tokens/step = batch x seq_len (256)")
    ap.add_argument("--seq-len", dest="seq_len", type=int, default=None,
                    help="tokens per sequence (<= the context length, 256); default the full context")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-gb", dest="max_gb", type=float, default=8.0,
                    help="skip a size whose estimated footprint (see estimate_bytes) exceeds this many GiB or the "
                         "memory the machine has available now")
    ap.add_argument("--out", default=None, help="folder for scaling.csv, scaling.json and scaling.png "
                    "(default: bench/results)")
    ap.add_argument("--report", action="store_true",
                    help="measure nothing: print the markdown table of the newest rows in scaling.csv and redraw "
                         "scaling.png")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    sizes = [s for s in a.sizes.split(",") if s]
    provs = [p for p in a.providers.split(",") if p]
    for s in sizes:
        if s not in SIZES:
            ap.error(f"--sizes: each size must be one of {list(SIZES)}, got {s!r}")
    for p in provs:
        if p not in PROVIDERS:
            ap.error(f"--providers: each provider must be one of {list(PROVIDERS)}, got {p!r}")
    if a.seq_len is not None and a.seq_len < 1:
        ap.error(f"--seq-len must be >= 1, got {a.seq_len}")
    for name in ("steps", "batch", "threads"):
        if getattr(a, name) < 1:
            ap.error(f"--{name} must be >= 1, got {getattr(a, name)}")
    if a.worker:
        try:
            res = worker(sizes[0], provs[0], steps=a.steps, warmup=a.warmup, batch=a.batch, threads=a.threads,
                         seq_len=a.seq_len)
        except ProviderUnavailable as e:
            res = {"unavailable": str(e)}
        print(_MARK + json.dumps(res), flush=True)
        return 0

    from cltk.benchmark.case import find_bench_dir
    from cltk.benchmark.results import append_rows, environment_fields

    out = a.out or os.path.join(find_bench_dir(), "results")
    os.makedirs(out, exist_ok=True)
    csv_path = os.path.join(out, "scaling.csv")
    if a.report:
        from cltk.benchmark.results import read_rows

        latest = _latest_per_key(read_rows(csv_path))
        print(markdown_table(latest))
        print(plot_overhead(latest, os.path.join(out, "scaling.png")))
        return 0
    json_path = os.path.join(out, "scaling.json")
    all_rows: list[dict] = []
    for size in sizes:
        need = estimate_bytes(SIZES[size], a.batch * (a.seq_len or SIZES[size].block_size))
        avail = _mem_available_bytes()
        if need > a.max_gb * 2**30 or (avail is not None and need > avail):
            print(f"  {size}: not measured: estimated footprint {need / 2**30:.1f} GiB exceeds --max-gb "
                  f"{a.max_gb:g} or the {avail / 2**30 if avail else float('nan'):.1f} GiB available now", flush=True)
            continue
        size_rows: list[dict] = []
        for prov in provs:
            t0 = time.time()
            try:
                res = run_in_subprocess(size, prov, steps=a.steps, warmup=a.warmup, batch=a.batch, threads=a.threads,
                                        seq_len=a.seq_len)
            except ProviderUnavailable as e:
                print(f"  {size} {prov}: skipped: {e}", flush=True)
                continue
            print(f"  {size} {prov}: step {res['median_s']['step']:.3f} s, peak extra "
                  f"{res['peak_extra_bytes'] / 2**30:.2f} GiB, loss {res['losses'][0]:.3f} -> {res['losses'][-1]:.3f} "
                  f"({time.time() - t0:.0f} s wall)", flush=True)
            size_rows.extend(rows_from_result(res, environment_fields("cpu", a.threads)))
            _append_json(json_path, res)
        add_ratios(size_rows)
        append_rows(csv_path, size_rows)  # per size, so a long run keeps what it finished
        all_rows.extend(size_rows)
    if not all_rows:
        print("no provider ran")
        return 1
    print(format_breakdown(all_rows))
    from cltk.benchmark.results import read_rows

    png = plot_overhead(_latest_per_key(read_rows(csv_path)), os.path.join(out, "scaling.png"))
    print(f"{len(all_rows)} rows appended to {csv_path}; plot {png}")
    return 0


def estimate_bytes(cfg: Any, tokens: int) -> int:
    """Resident bytes a full fine-tuning step with AdamW needs, roughly: fp32 parameters, gradients and two moment
    buffers (16 bytes per parameter) plus activations (about 40 fp32 values per token per layer and width, and the
    logits with their gradient)."""
    n = cfg.num_parameters()
    return 16 * n + 4 * tokens * (40 * cfg.n_layer * cfg.d_model + 3 * cfg.vocab_size)


def _mem_available_bytes() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _append_json(path: str, res: dict) -> None:
    """Add one worker result (phases, percentiles, losses, provider note) to a JSON list, atomically."""
    data = []
    if os.path.exists(path):
        with open(path) as f:
            data = json.load(f)
    data.append({**res, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _latest_per_key(rows: list[dict]) -> list[dict]:
    """The newest row for every (shape, provider, mode), so the plot shows every size measured so far."""
    latest: dict = {}
    for r in rows:
        if r["kernel"] == "scaling_gpt":
            latest[(r["shape"], r["provider"], r["mode"])] = r
    return list(latest.values())


if __name__ == "__main__":
    sys.exit(main())
