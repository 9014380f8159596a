"""The BBC News continual pre-training (CPT) benchmark with the small in-tree GPT.

Protocol (per seed): a :class:`cltk.lm.gpt.GPT` is pre-trained on domain 1 (business) for ``pretrain_steps`` AdamW
steps and cached under ``<out>/pretrain/``; every method then starts from that same model and is trained for
``steps`` steps on each of domains 2..5 in order. After pre-training and after every domain the held-out
perplexity of every domain is measured, giving the matrix ``P[i, j]`` of :mod:`cltk.lm.metrics`.

``compare_cpt`` runs methods x seeds and returns one result dict per run; ``write_cpt_results`` writes
results.json, results.csv (one row per run), summary.csv (mean and std over seeds) and one perplexity heatmap per
method, all atomically.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from cltk.lm.data import CPTData, bbc_cpt_data
from cltk.lm.gpt import GPT, GPTConfig
from cltk.lm.methods import CPT_METHODS, cpt_method, make_config
from cltk.lm.metrics import cpt_metrics
from cltk.methods._replay_buffer import ReservoirBuffer

__all__ = ["CPTSettings", "evaluate_ppl", "pretrain", "run_cpt", "compare_cpt", "format_cpt_table",
           "write_cpt_results", "plot_ppl_matrices", "DEFAULT_METHODS"]

DEFAULT_METHODS = ("vanilla", "migu", "migu-adamw", "er", "er-migu", "joint")


@dataclass
class CPTSettings:
    """Sizes of one comparison. ``n_domains``: use the first n BBC domains (2..5); ``pretrain_lr``: AdamW lr of
    the first-domain pre-training (linear warm-up over its first 10% of steps, then constant)."""

    steps: int = 60
    pretrain_steps: int = 300
    batch_size: int = 8
    seq_len: int = 64
    vocab_size: Optional[int] = 12288
    heldout_frac: float = 0.2
    max_heldout_blocks: Optional[int] = 32
    n_domains: int = 5
    pretrain_lr: float = 1e-3
    eval_batch_size: int = 64
    model: dict = field(default_factory=dict)   # GPTConfig overrides (vocab_size and block_size are set here)

    def validate(self) -> "CPTSettings":
        for name, lo in (("steps", 1), ("pretrain_steps", 1), ("batch_size", 1), ("seq_len", 1),
                         ("n_domains", 2), ("eval_batch_size", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"CPTSettings.{name} must be an integer >= {lo}, got {v!r}")
        if self.n_domains > 5:
            raise ValueError(f"CPTSettings.n_domains must be <= 5 (BBC has 5 topics), got {self.n_domains!r}")
        if not (isinstance(self.pretrain_lr, (int, float)) and 0 < self.pretrain_lr <= 1):
            raise ValueError(f"CPTSettings.pretrain_lr must be a float in (0, 1], got {self.pretrain_lr!r}")
        bad = sorted(set(self.model) - {f.name for f in fields(GPTConfig)} | set(self.model) & {"vocab_size",
                                                                                               "block_size"})
        if bad:
            raise ValueError(f"CPTSettings.model has invalid GPTConfig keys {bad}")
        return self

    def data(self) -> CPTData:
        return bbc_cpt_data(self.seq_len, self.vocab_size, self.heldout_frac, 0, self.max_heldout_blocks)

    def gpt_config(self, vocab_size: int) -> GPTConfig:
        return GPTConfig(vocab_size=vocab_size, block_size=self.seq_len, **self.model).validate()


@torch.no_grad()
def evaluate_ppl(model: torch.nn.Module, blocks: Tensor, batch_size: int = 64) -> float:
    """Perplexity ``exp(mean next-token NLL)`` of ``model`` (a :class:`GPT`) over int64 ``blocks`` ``[N, L + 1]``."""
    was = model.training
    model.eval()
    total, n = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        b = blocks[i:i + batch_size]
        logits = model(b[:, :-1])
        total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                         b[:, 1:].reshape(-1), reduction="sum"))
        n += b[:, 1:].numel()
    model.train(was)
    return math.exp(total / max(1, n))


def _eval_row(model: torch.nn.Module, data: CPTData, s: CPTSettings) -> list[float]:
    return [evaluate_ppl(model, data.heldout[j], s.eval_batch_size) for j in range(s.n_domains)]


class _Sampler:
    """Random blocks without replacement within an epoch (reshuffled every epoch), own seeded generator."""

    def __init__(self, blocks: Tensor, seed: int) -> None:
        self.blocks = blocks
        self.g = torch.Generator().manual_seed(int(seed))
        self.order = torch.empty(0, dtype=torch.int64)

    def next(self, n: int) -> Tensor:
        if len(self.order) < n:
            self.order = torch.cat([self.order, torch.randperm(len(self.blocks), generator=self.g)])
        idx, self.order = self.order[:n], self.order[n:]
        return self.blocks[idx]


def _cache_key(s: CPTSettings, seed: int) -> str:
    d = {k: v for k, v in asdict(s).items() if k not in ("steps", "n_domains", "eval_batch_size")}
    h = hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]
    return f"pretrain_seed{seed}_{h}.pt"


def pretrain(s: CPTSettings, seed: int, data: CPTData, cache_dir: Optional[str] = None) -> tuple[dict, list[float],
                                                                                              float]:
    """The first-domain model of ``seed``: ``(state_dict, P row 0, seconds)``; read from / written to
    ``cache_dir`` when given (keyed by the seed and every setting that affects it)."""
    from cltk.checkpoint import load_checkpoint, save_checkpoint
    path = os.path.join(cache_dir, _cache_key(s, seed)) if cache_dir else None
    if path and os.path.exists(path):
        ck = load_checkpoint(path)
        return ck["model"], list(ck["row0"]), float(ck["time_s"])
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = GPT(s.gpt_config(data.vocab_size))
    opt = torch.optim.AdamW(model.parameters(), lr=s.pretrain_lr, betas=(0.9, 0.95), weight_decay=0.01)
    warm = max(1, s.pretrain_steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / warm))
    sampler = _Sampler(data.train[0], seed * 1000 + 999)
    model.train()
    for _ in range(s.pretrain_steps):
        loss = model.loss(sampler.next(s.batch_size))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    row0 = _eval_row(model, data, s)
    dt = time.perf_counter() - t0
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if path:
        save_checkpoint({"model": sd, "row0": row0, "time_s": dt}, path)
    return sd, row0, dt


def run_cpt(method: str, seed: int, s: CPTSettings, *, config: Optional[dict] = None, cache_dir: Optional[str] = None,
            data: Optional[CPTData] = None) -> dict:
    """One method, one seed: pre-train (or load) the first-domain model, continually pre-train on domains
    2..n_domains, and return ``{"method", "seed", "P", "metrics", "time_s", "cpu_s", ...}``."""
    s.validate()
    m = cpt_method(method)
    cfg = make_config(method, **(config or {}))
    data = data or s.data()
    sd, row0, pre_s = pretrain(s, seed, data, cache_dir)
    t0, c0 = time.perf_counter(), time.process_time()
    torch.manual_seed(seed * 1000 + 1)
    model = GPT(s.gpt_config(data.vocab_size))
    model.load_state_dict(sd)
    model.train()
    opt = m.make_optimizer(model, cfg)
    buf = None
    if m.replay:
        buf = ReservoirBuffer(cfg.buffer_size, seed=cfg.seed + seed)
        first = data.train[0]
        buf.add(first, torch.zeros(len(first), dtype=torch.int64), torch.zeros(len(first), dtype=torch.int64))
    P = [row0]
    domain_s = []
    masked_frac: list[float] = []
    for k in range(1, s.n_domains):
        td = time.perf_counter()
        if hasattr(opt, "begin_task"):
            opt.begin_task()
        blocks = torch.cat(data.train[:k + 1]) if m.joint else data.train[k]
        sampler = _Sampler(blocks, seed * 1000 + k)
        for _ in range(s.steps):
            cur = sampler.next(s.batch_size)
            batch = cur
            if buf is not None:
                rep = buf.sample(cfg.replay_batch_size or s.batch_size)
                if rep is not None:
                    batch = torch.cat([cur, rep.x])
            loss = model.loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if buf is not None:
                buf.add(cur, torch.zeros(len(cur), dtype=torch.int64), torch.full((len(cur),), k))
            lm = getattr(opt, "last_masks", None)
            if lm:
                done = [x for x in lm if x is not None]
                if done:
                    masked_frac.append(1.0 - float(sum(int(x.sum()) for x in done)) / sum(x.numel() for x in done))
        P.append(_eval_row(model, data, s))
        domain_s.append(time.perf_counter() - td)
    if hasattr(opt, "close"):
        opt.close()
    out = {"method": method, "seed": seed, "domains": list(data.domains[:s.n_domains]), "P": P,
           "metrics": cpt_metrics(P), "time_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
           "domain_time_s": domain_s, "pretrain_time_s": pre_s, "config": asdict(cfg),
           "masked_row_frac": float(np.mean(masked_frac)) if masked_frac else 0.0,
           "buffer_len": len(buf) if buf is not None else 0}
    return out


def compare_cpt(methods: Sequence[str] = DEFAULT_METHODS, seeds: Sequence[int] = (0, 1, 2),
                settings: Optional[CPTSettings] = None, *, config: Optional[dict] = None,
                out: Optional[str] = None, log=print) -> list[dict]:
    """Every method x seed (seed-major, so one cached first-domain model serves all methods of a seed). With
    ``out`` the pre-trained models are cached under ``out/pretrain`` and the results rewritten after each run.
    ``config``: overrides applied to every method whose config has the field."""
    s = (settings or CPTSettings()).validate()
    for name in methods:
        cfg_cls = cpt_method(name).config_cls
        make_config(name, **{k: v for k, v in (config or {}).items() if k in {f.name for f in fields(cfg_cls)}})
    if config:
        known = set().union(*({f.name for f in fields(CPT_METHODS[n].config_cls)} for n in methods))
        bad = sorted(set(config) - known)
        if bad:
            raise ValueError(f"no method in {list(methods)} has a config field {', '.join(bad)}")
    data = s.data()
    log(data.describe())
    log(f"GPT: {GPT(s.gpt_config(data.vocab_size)).n_params() / 1e6:.2f}M parameters")
    cache = os.path.join(out, "pretrain") if out else None
    runs: list[dict] = []
    for seed in seeds:
        for name in methods:
            fields_ = {f.name for f in fields(CPT_METHODS[name].config_cls)}
            r = run_cpt(name, seed, s, config={k: v for k, v in (config or {}).items() if k in fields_},
                        cache_dir=cache, data=data)
            runs.append(r)
            mt = r["metrics"]
            log(f"seed {seed} {name:<10} avg ppl {mt['avg_ppl']:.1f}  BWT {mt['bwt_ppl']:+.1f}  "
                f"FWT {mt['fwt_ppl']:+.1f}  {r['time_s']:.0f}s")
            if out:
                write_cpt_results(out, runs, s, plots=False)
    return runs


_KEYS = ("avg_ppl", "bwt_ppl", "fwt_ppl", "forgetting_ppl", "time_s", "cpu_s")


def aggregate_cpt(runs: Sequence[dict]) -> list[dict]:
    rows = []
    for name in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == name]
        row: dict[str, Any] = {"method": name, "n_seeds": len(mine)}
        for k in _KEYS:
            v = np.array([r[k] if k in ("time_s", "cpu_s") else r["metrics"][k] for r in mine], dtype=float)
            row[k + "_mean"] = float(v.mean())
            row[k + "_std"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        rows.append(row)
    return rows


def format_cpt_table(runs: Sequence[dict]) -> str:
    head = ["method", "seeds", "avg ppl", "BWT_ppl", "FWT_ppl", "forgetting_ppl", "wall (s)", "CPU (s)"]

    def f(r: dict, k: str, d: int) -> str:
        m = r[k + "_mean"]
        return "-" if m is None or math.isnan(m) else f"{m:.{d}f} ± {r[k + '_std']:.{d}f}"

    body = [[r["method"], str(r["n_seeds"]), f(r, "avg_ppl", 1), f(r, "bwt_ppl", 1), f(r, "fwt_ppl", 1),
             f(r, "forgetting_ppl", 1), f(r, "time_s", 0), f(r, "cpu_s", 0)] for r in aggregate_cpt(runs)]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    return "\n".join(lines + ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in body])


def _clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


def write_cpt_results(out: str, runs: Sequence[dict], settings: CPTSettings, meta: Optional[dict] = None,
                      plots: bool = True) -> list[str]:
    """results.json, results.csv, summary.csv (and with ``plots`` the heatmaps) under ``out``; returns the paths."""
    from cltk.results import atomic_write
    os.makedirs(out, exist_ok=True)
    paths = [atomic_write(os.path.join(out, "results.json"), json.dumps(_clean(
        {"benchmark": "bbc-cpt", "settings": asdict(settings), "meta": meta or {}, "runs": list(runs),
         "summary": aggregate_cpt(runs)}), indent=1))]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "seed", *_KEYS[:-2], "time_s", "cpu_s", "masked_row_frac", "P"])
    for r in runs:
        w.writerow([r["method"], r["seed"], *(f"{r['metrics'][k]:.4f}" for k in _KEYS[:-2]), f"{r['time_s']:.2f}",
                    f"{r['cpu_s']:.2f}", f"{r['masked_row_frac']:.4f}",
                    json.dumps([[round(v, 3) for v in row] for row in r["P"]])])
    paths.append(atomic_write(os.path.join(out, "results.csv"), buf.getvalue()))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    agg = aggregate_cpt(runs)
    w.writerow(list(agg[0]) if agg else [])
    for row in agg:
        w.writerow([f"{v:.4f}" if isinstance(v, float) else v for v in row.values()])
    paths.append(atomic_write(os.path.join(out, "summary.csv"), buf.getvalue()))
    if plots and runs:
        paths += plot_ppl_matrices(runs, out)
    return paths


def plot_ppl_matrices(runs: Sequence[dict], out_dir: str) -> list[str]:
    """One ``ppl_matrix_<method>.png`` per method: the seed-mean ``P[i, j]`` (log colour scale)."""
    from matplotlib.colors import LogNorm

    from cltk.plots import _pyplot, _save
    from cltk.results import safe_name
    plt = _pyplot()
    paths = []
    allP = np.concatenate([np.asarray(r["P"], dtype=float).ravel() for r in runs])
    norm = LogNorm(vmin=float(allP.min()), vmax=float(allP.max()))
    for name in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == name]
        P = np.mean([np.asarray(r["P"], dtype=float) for r in mine], axis=0)
        doms = mine[0].get("domains") or [str(j) for j in range(P.shape[1])]
        fig, ax = plt.subplots(figsize=(4.8, 4.0))
        im = ax.imshow(P, norm=norm, cmap="viridis_r")
        T = P.shape[0]
        for i in range(T):
            for j in range(P.shape[1]):
                ax.text(j, i, f"{P[i, j]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if norm(P[i, j]) > 0.5 else "black")
        ax.set_xticks(range(P.shape[1]))
        ax.set_xticklabels(doms, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(T))
        ax.set_yticklabels([f"after {d}" for d in doms[:T]], fontsize=7)
        ax.set_xlabel("held-out domain j")
        ax.set_title(f"{name}: perplexity P[i, j] ({len(mine)} seed{'s' if len(mine) != 1 else ''})", fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8, label="perplexity")
        paths.append(_save(fig, os.path.join(out_dir, f"ppl_matrix_{safe_name(name)}.png")))
    return paths


def compare_cli(args: Any, preset: Any) -> int:
    """``cltk compare --benchmark bbc-cpt``: ``--iters`` steps per domain, ``--batch-size``, ``--set`` method
    config fields (applied to every method that has them), ``--stream`` :class:`CPTSettings` fields (for example
    ``pretrain_steps=20``, ``n_domains=3``), ``--model-arg`` :class:`GPTConfig` fields, ``--threads``."""
    from cltk.cli import CLIError, _csv_list, _parse_json_pairs, _seeds
    from cltk.results import safe_name
    if getattr(args, "nproc", 1) != 1 or getattr(args, "resume", False) or getattr(args, "device", "cpu") != "cpu":
        raise CLIError("bbc-cpt runs in one CPU process: --nproc, --resume and --device are not supported")
    if getattr(args, "eval_split", "test") != "test":
        raise CLIError("bbc-cpt measures held-out perplexity on its own split: --eval-split is not supported")
    if args.threads:
        torch.set_num_threads(args.threads)
    own = preset.benchmark == "bbc-cpt"
    methods = _csv_list(args.methods, "--methods") if args.methods else list(preset.methods if own
                                                                             else DEFAULT_METHODS)
    for m in methods:
        cpt_method(m)
    seeds = _seeds(args.seeds) if args.seeds else list(preset.seeds if own else (0, 1, 2))
    skw = _parse_json_pairs(args.stream, "--stream", [f.name for f in fields(CPTSettings) if f.name != "model"],
                            "CPTSettings")
    mkw = _parse_json_pairs(args.model_arg, "--model-arg",
                            [f.name for f in fields(GPTConfig) if f.name not in ("vocab_size", "block_size")],
                            "GPTConfig")
    base = CPTSettings()
    s = CPTSettings(**{**skw, "steps": args.iters or (preset.iters if own else base.steps),
                       "batch_size": args.batch_size or (preset.batch_size if own else base.batch_size),
                       "model": mkw}).validate()
    config: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise CLIError(f"--set expects field=value, got {item!r}")
        config[key.strip()] = json.loads(value)
    out = args.out or os.path.join("results", safe_name(args.name or args.preset or "bbc-cpt"))
    t0, c0 = time.perf_counter(), time.process_time()
    runs = compare_cpt(methods, seeds, s, config=config, out=out)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(format_cpt_table(runs))
    paths = write_cpt_results(out, runs, s, meta={"command": "compare", "wall_s": wall, "cpu_s": cpu,
                                                  "threads": torch.get_num_threads()})
    print(f"total: {wall:.0f} s wall, {cpu:.0f} s CPU ({torch.get_num_threads()} thread(s)); wrote "
          f"{len(paths)} files to {out}")
    return 0


def merge_cpt_results(dirs: Sequence[str], out: str) -> list[dict]:
    """Merge the results.json of comparisons run as separate processes (for example one per seed, each with
    ``--threads 1``) into one folder: the runs are concatenated, ``meta.cpu_s`` is the sum and ``meta.wall_s`` the
    longest; the settings must agree."""
    docs = []
    for d in dirs:
        with open(os.path.join(d, "results.json"), encoding="utf-8") as f:
            docs.append(json.load(f))
    settings = docs[0]["settings"]
    for d, doc in zip(dirs, docs):
        if doc["settings"] != settings:
            raise ValueError(f"merge_cpt_results: {d} was run with other settings")
    runs = [r for doc in docs for r in doc["runs"]]
    for r in runs:
        r["metrics"] = {k: (math.nan if v is None else v) for k, v in r["metrics"].items()}
    meta = {"command": "compare", "processes": len(docs), "cpu_s": sum(doc["meta"].get("cpu_s", 0.0) for doc in docs),
            "wall_s": max(doc["meta"].get("wall_s", 0.0) for doc in docs), "threads": docs[0]["meta"].get("threads"),
            "merged_from": [os.path.abspath(d) for d in dirs]}
    write_cpt_results(out, runs, CPTSettings(**settings), meta=meta)
    return runs
