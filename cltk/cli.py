"""The ``cltk`` command (also ``python -m cltk``).

``cltk list``      methods, benchmarks, models and presets, one line each
``cltk env``       torch and CUDA versions, the native extension and its kernels, the data sets found
``cltk run``       one method on one benchmark and scenario, over one or more seeds
``cltk compare``   several methods over scenarios and seeds: a mean ± std table, results.json/csv and figures
``cltk bench``     the kernel benchmarks (:mod:`cltk.benchmark`)

A bad invocation prints one line ``cltk: error: ...`` and exits with status 2 (``CLTK_DEBUG=1`` shows the
traceback instead).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import types
import typing
from typing import Any, Optional, Sequence

__all__ = ["main", "build_parser", "parse_overrides", "parse_method_spec"]


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # one line, no usage block
        print(f"cltk: error: {message}", file=sys.stderr)
        sys.exit(2)


# ------------------------------------------------------------------------------------------------- value parsing

def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _parse_typed(text: str, tp: Any) -> Any:
    """Parse ``text`` as the annotation ``tp`` (bool, int, float, str, Optional[...], tuple[...] / list[...])."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, getattr(types, "UnionType", typing.Union)):
        args = typing.get_args(tp)
        if type(None) in args and text.strip().lower() in ("none", "null"):
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _parse_typed(text, a)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError("; ".join(errors) or f"cannot parse {text!r}")
    if origin in (tuple, list):
        (inner, *_rest) = typing.get_args(tp) or (str,)
        items = [s for s in _strip_brackets(text).split(",") if s.strip()]
        vals = [_parse_typed(s, inner) for s in items]
        return tuple(vals) if origin is tuple else vals
    if tp in (tuple, list):           # a bare ``tuple`` / ``list`` annotation: numbers where they parse
        vals = [_parse_scalar(s.strip()) for s in _strip_brackets(text).split(",") if s.strip()]
        return tuple(vals) if tp is tuple else vals
    if tp is bool:
        return _parse_bool(text)
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
    if tp is str or tp is Any:
        return text
    raise ValueError(f"fields of type {tp!r} cannot be set from the command line")


def _strip_brackets(text: str) -> str:
    """``"[8,8]"`` / ``"(8, 8)"`` -> ``"8,8"`` / ``"8, 8"``; anything else unchanged."""
    t = text.strip()
    if len(t) >= 2 and (t[0], t[-1]) in (("[", "]"), ("(", ")")):
        return t[1:-1]
    return text


def _parse_scalar(text: str) -> Any:
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def parse_overrides(items: Sequence[str], config_cls: type, what: str = "--set") -> dict[str, Any]:
    """``["field=value", ...]`` -> ``{field: value}`` with each value parsed by the dataclass field's type.

    Raises ValueError for a malformed item, an unknown field or a value of the wrong type.
    """
    hints = typing.get_type_hints(config_cls)
    names = [f.name for f in dataclasses.fields(config_cls)]
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{what} expects field=value, got {item!r}")
        if key not in names:
            raise ValueError(f"{what} {key}: {config_cls.__name__} has no field {key!r}; fields: {', '.join(names)}")
        try:
            out[key] = _parse_typed(value, hints[key])
        except ValueError as e:
            raise ValueError(f"{what} {key}={value}: {e}") from None
    return out


def _split_top_level(text: str) -> list[str]:
    """Split ``text`` at the commas outside brackets: ``"awm:resolution=[8,8],ewc"`` -> two items."""
    out, depth, cur = [], 0, []
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth = max(0, depth - 1)
        if ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return [s.strip() for s in out if s.strip()]


def _label_value(v: Any) -> str:
    if isinstance(v, (tuple, list)):
        return "x".join(_label_value(x) for x in v)
    return str(v)


def parse_method_spec(spec: str) -> tuple[str, str, dict[str, Any]]:
    """``"name[:field=value[:field=value]...]"`` -> ``(label, name, overrides)``.

    Each value is parsed with the type of the method config's field (as ``--set``). The label names the method and
    its overrides, e.g. ``awm:resolution=[8,8]`` -> ``awm(resolution=8x8)``; a plain name is its own label.
    Raises ValueError naming the spec for an unknown method, an unknown field, a malformed item or a bad value
    (including one the config's ``validate()`` refuses).
    """
    from cltk.methods import method_class

    name, *items = [s.strip() for s in spec.split(":")]
    try:
        cls = method_class(name)
    except ValueError as e:
        raise ValueError(f"method spec {spec!r}: {e}") from None
    if not items:
        return name, name, {}
    try:
        overrides = parse_overrides(items, cls.Config, what="field")
        cls.Config(**overrides)
    except ValueError as e:
        raise ValueError(f"method spec {spec!r}: {e}") from None
    label = f"{name}(" + ",".join(f"{k}={_label_value(v)}" for k, v in overrides.items()) + ")"
    return label, name, overrides


def method_configs(specs: dict[str, tuple[str, dict]], config: dict, method_config: dict[str, dict],
                   set_items: Sequence[str]) -> dict[str, Any]:
    """Each selected method's config, by label (``specs``: label -> (registered name, spec overrides), as from
    :func:`parse_method_spec`): the fields it has of ``config``, then ``method_config[name]`` (a preset's settings
    for that method, whatever its spec), then ``--set`` items (parsed with the field's type), then the spec's own
    fields, each over the one before. Raises ValueError naming the field for a bad value, and CLIError for a
    ``--set`` field no selected method has."""
    from cltk.methods import method_class

    pairs = _split_overrides(set_items)
    configs = {}
    for label, (name, overrides) in specs.items():
        cls = method_class(name)
        names = {f.name for f in dataclasses.fields(cls.Config)}
        base = {k: v for k, v in config.items() if k in names}
        base.update(method_config.get(name, {}))
        base.update(parse_overrides([item for key, item in pairs if key in names], cls.Config))
        base.update(overrides)
        configs[label] = cls.Config(**base)              # validate() raises ValueError naming the field
    for key, item in pairs:
        if not any(key in {f.name for f in dataclasses.fields(method_class(n).Config)} for n, _ in specs.values()):
            raise CLIError(f"--set {item}: no selected method has a config field {key!r}")
    return configs


def _split_overrides(items: Sequence[str]) -> list[tuple[str, str]]:
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CLIError(f"--set expects field=value, got {item!r}")
        out.append((key.strip(), item))
    return out


def _parse_json_pairs(items: Sequence[str], option: str, allowed: Optional[Sequence[str]] = None,
                      owner: str = "") -> dict[str, Any]:
    """``key=value`` items of ``option``: each value is read as JSON (numbers, lists, true/false), else kept as a
    string. ``allowed``: the accepted keys (any identifier when None), named in the error with ``owner``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise CLIError(f"{option} expects key=value, got {item!r}")
        if allowed is not None and key not in allowed:
            raise CLIError(f"{option} {key}: {owner} has no argument {key!r}; arguments: {', '.join(allowed)}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _parse_stream_kwargs(items: Sequence[str]) -> dict[str, Any]:
    """``--stream key=value``: a :func:`make_stream` argument."""
    import inspect

    from cltk.streams.builders import make_stream

    allowed = [p for p in inspect.signature(make_stream).parameters if p not in ("benchmark", "scenario", "seed")]
    return _parse_json_pairs(items, "--stream", allowed, "make_stream")


def _parse_model_kwargs(items: Sequence[str]) -> dict[str, Any]:
    """``--model-arg key=value``: a keyword argument of the model's constructor."""
    return _parse_json_pairs(items, "--model-arg")


def _csv_list(text: Optional[str], what: str) -> list[str]:
    items = _split_top_level(text or "")
    if not items:
        raise CLIError(f"{what} needs at least one name, got {text!r}")
    return list(dict.fromkeys(items))


def _seeds(text: str) -> list[int]:
    out = []
    for s in _csv_list(text, "--seeds"):
        try:
            v = int(s)
        except ValueError:
            raise CLIError(f"--seeds expects comma-separated integers >= 0, got {text!r}") from None
        if v < 0:
            raise CLIError(f"--seeds expects integers >= 0, got {v}")
        out.append(v)
    return out


# --------------------------------------------------------------------------------------------------- commands

def _cmd_list(args: argparse.Namespace) -> int:
    from cltk.methods import available_methods
    from cltk.models import MODELS
    from cltk.presets import PRESETS
    from cltk.streams.builders import describe_benchmarks

    def block(title: str, rows: list[tuple[str, str]]) -> None:
        print(title)
        w = max((len(n) for n, _ in rows), default=0)
        for n, d in rows:
            print(f"  {n:<{w}}  {d}")

    methods = available_methods()
    block("methods:", [(n, f"{c.description}" + ("" if tuple(c.scenarios) == ("task", "domain", "class")
                                                   else f" [scenarios: {', '.join(c.scenarios)}]"))
                       for n, c in methods.items()])
    block("benchmarks (<dataset>: see `cltk env`):", describe_benchmarks())
    block("models:", [(n, d) for n, (_, d) in MODELS.items()])
    block("presets (cltk compare --preset NAME):", [(n, p.description) for n, p in PRESETS.items()])
    return 0


def _cmd_env(args: argparse.Namespace) -> int:
    import torch

    from cltk import _ext
    from cltk.data.sources import available

    print(f"torch {torch.__version__}; CUDA {torch.version.cuda or 'none (CPU build)'}; "
          f"CUDA available: {'yes' if torch.cuda.is_available() else 'no'}")
    if _ext.available():
        print("cltk._C: loaded")
    else:
        print(f"cltk._C: not loaded ({_ext.reason()}); the pure-PyTorch reference ops are used")
    ops = _ext.native_ops()
    if ops:
        w = max(len(o) for o in ops)
        print("ops (kernel registered):")
        for op in ops:
            cpu = "yes" if _ext.has_kernel(op, "cpu") else "no"
            cuda = "yes" if _ext.has_kernel(op, "cuda") else "no"
            print(f"  cltk::{op:<{w}}  CPU {cpu:<3}  CUDA {cuda}")
    else:
        print("ops: none registered (cltk._C not loaded)")
    print("data sets:")
    rows = available()
    w = max((len(n) for n, _, _ in rows), default=0)
    for name, found, where in rows:
        print(f"  {name:<{w}}  {'found  ' + where if found else 'missing: ' + where}")
    return 0


def _fmt(mean: float, std: float, scale: float = 1.0, digits: int = 3) -> str:
    import math
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def _fmt_count(n: Optional[float]) -> str:
    import math
    if n is None or math.isnan(n):
        return "-"
    return f"{n:,.0f}"


def format_table(rows: list[dict]) -> str:
    """The mean ± std table of :func:`cltk.results.aggregate` rows, grouped by scenario."""
    head = ["scenario", "method", "seeds", "ACC", "BWT", "FWT", "forgetting", "readout", "time (s)", "s/task",
            "params/task"]
    body = []
    for r in rows:
        body.append([f"{r['scenario']}-IL", r["method"], str(r["n_seeds"]),
                     _fmt(r["acc_mean"], r["acc_std"]), _fmt(r["bwt_mean"], r["bwt_std"]),
                     _fmt(r["fwt_mean"], r["fwt_std"]), _fmt(r["forgetting_mean"], r["forgetting_std"]),
                     _fmt(r["readout_mean"], r["readout_std"]), _fmt(r["time_s_mean"], r["time_s_std"], digits=1),
                     _fmt(r.get("time_per_task_s_mean"), r.get("time_per_task_s_std"), digits=1),
                     _fmt_count(r.get("params_per_task_mean"))])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in body]
    return "\n".join(lines)


def _experiment(args: argparse.Namespace, *, methods: list[str], scenarios: list[str], seeds: list[int],
                benchmark: str, iters: int, model: str, batch_size: int, stream_kwargs: dict, config: dict,
                out: Optional[str], meta: dict, method_config: Optional[dict] = None) -> int:
    """Validate everything, then run every (scenario, seed, method), writing results after each run.

    ``config`` and ``method_config``: a preset's overrides (see :func:`method_configs`)."""
    import torch

    from cltk import distributed as dist
    from cltk.loop import check_eval_split
    from cltk.methods import method_class
    from cltk.models import MODELS, build_model
    from cltk.results import aggregate, safe_name, write_folder
    from cltk.streams.base import SCENARIOS
    from cltk.streams.builders import make_stream

    for sc in scenarios:
        if sc not in SCENARIOS:
            raise CLIError(f"unknown scenario {sc!r}; scenarios: {', '.join(SCENARIOS)}")
    if model not in MODELS:
        raise CLIError(f"unknown model {model!r}; models: {', '.join(MODELS)}")
    if iters < 0:
        raise CLIError(f"--iters must be >= 0, got {iters}")
    if batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {batch_size}")
    _check_out(out)
    specs = {}                                           # label -> (registered name, spec overrides)
    for spec in methods:
        label, name, overrides = parse_method_spec(spec)  # ValueError names the spec
        if label in specs:
            raise CLIError(f"method {label!r} is selected twice")
        specs[label] = (name, overrides)
    classes = {m: method_class(name) for m, (name, _) in specs.items()}
    methods = list(specs)
    skip: set[tuple[str, str]] = set()     # (method, scenario) pairs a comparison leaves out
    for m, cls in classes.items():
        bad = [sc for sc in scenarios if sc not in cls.scenarios]
        if bad and (meta.get("command") != "compare" or len(bad) == len(scenarios)):
            raise CLIError(f"method {m!r} does not support the {', '.join(bad)} scenario "
                           f"(supported: {', '.join(cls.scenarios)})")
        for sc in bad:
            skip.add((m, sc))
            print(f"note: {m} does not support {sc}-IL (supported: {', '.join(cls.scenarios)}); left out there",
                  flush=True)
    configs = method_configs(specs, config, method_config or {}, args.set or [])
    if args.checkpoint_every < 0:
        raise CLIError(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
    if args.keep_checkpoints < 1:
        raise CLIError(f"--keep-checkpoints must be >= 1, got {args.keep_checkpoints}")
    checkpointing = bool(args.checkpoint_every or args.resume)
    if checkpointing and not out:
        raise CLIError("--checkpoint-every and --resume need --out (the checkpoints live under it)")
    if args.threads is not None:
        if args.threads < 1:
            raise CLIError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        raise CLIError(f"--device {args.device!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {args.device}: CUDA is not available in this torch build or machine")
    if dist.world_size() > 1 and batch_size % dist.world_size():
        raise CLIError(f"--batch-size {batch_size} must be divisible by the number of processes {dist.world_size()}")
    # data set and stream errors (e.g. domain-IL over tasks of unequal size) before any run
    first = {sc: make_stream(benchmark, sc, seeds[0], **stream_kwargs) for sc in scenarios}
    eval_split = getattr(args, "eval_split", "test")
    for stream in first.values():
        check_eval_split(stream, eval_split, who="--eval-split")
    model_kwargs = _parse_model_kwargs(getattr(args, "model_arg", None) or [])
    if model_kwargs:
        try:
            build_model(model, next(iter(first.values())), seed=seeds[0], **model_kwargs)
        except TypeError as e:
            raise CLIError(f"--model-arg: model {model!r} does not take these arguments ({e})") from None
    jobs = getattr(args, "jobs", 1)
    if jobs < 1:
        raise CLIError(f"--jobs must be >= 1, got {jobs}")
    if jobs > 1 and dist.world_size() > 1:
        raise CLIError(_JOBS_WITH_NPROC)
    threads = args.threads or max(1, _cpu_count() // jobs)
    main = dist.is_main()
    say = print if main else (lambda *a, **k: None)

    total = (len(scenarios) * len(methods) - len(skip)) * len(seeds)
    runs: list = []
    t0 = time.perf_counter()
    # --out is created by the first run's results (or checkpoint), so that a run its method refuses (for instance a
    # setting the scenario does not allow, checked in the method's setup) leaves no empty folder behind
    meta = dict(meta, benchmark=benchmark, model=model, iters_per_task=iters, batch_size=batch_size,
                eval_split=eval_split, stream_kwargs=stream_kwargs, model_kwargs=model_kwargs, device=str(device),
                torch=torch.__version__, cltk=_source_version(), processes=dist.world_size(),
                started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    grid = [_Job(m, classes[m], configs[m], sc, seed, benchmark, stream_kwargs, model, model_kwargs, iters,
                 batch_size, str(device), not args.no_readout, not args.no_progress and jobs == 1,
                 os.path.join(out, "checkpoints", safe_name(f"{m}-{sc}-seed{seed}")) if checkpointing else None,
                 args.checkpoint_every, args.resume, args.keep_checkpoints, eval_split)
            for sc in scenarios for seed in seeds for m in methods if (m, sc) not in skip]
    results: dict[int, Any] = {}

    def finished(i: int, r: Any) -> None:
        results[i] = r
        runs[:] = [results[k] for k in sorted(results)]          # grid order, whatever order the runs end in
        s = r.summary()
        say(f"[{len(results)}/{total}] {r.scenario}-IL {r.method} seed {r.seed}: ACC {s['acc']:.3f}  "
            f"BWT {s['bwt']:+.3f}  ({s['time_s']:.1f} s)", flush=True)
        if out and main:
            write_folder(out, runs, meta)

    if jobs == 1:
        key, stream = None, None
        for i, job in enumerate(grid):                   # grid order: one stream per (scenario, seed)
            if (job.scenario, job.seed) != key:
                key = (job.scenario, job.seed)
                stream = (first.pop(job.scenario) if job.seed == seeds[0]
                          else make_stream(benchmark, job.scenario, job.seed, **stream_kwargs))
            finished(i, _run_job(job, stream))
    else:
        _run_parallel(grid, jobs, threads, finished)
    say()
    if eval_split != "test":
        say(f"accuracies on the {eval_split} split of every task")
    say(format_table(aggregate(runs)))
    say(f"\n{total} run(s) in {time.perf_counter() - t0:.1f} s")
    if out and main:
        from cltk.plots import plot_all
        os.makedirs(out, exist_ok=True)
        paths = plot_all(runs, out)
        figures = ", ".join(os.path.basename(p) for p in paths)
        print(f"wrote {os.path.join(out, 'results.json')}, results.csv, summary.csv, {figures}")
    return 0


def _source_version() -> str:
    """``cltk.__version__``, with the git commit of the source tree (``+g<sha>``, ``.dirty`` when it has uncommitted
    changes to tracked files) where cltk runs from a git checkout."""
    import subprocess

    import cltk
    root = os.path.dirname(os.path.dirname(os.path.abspath(cltk.__file__)))

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        if os.path.realpath(git("rev-parse", "--show-toplevel")) != os.path.realpath(root):
            return cltk.__version__      # an installed copy inside some other checkout (e.g. a venv in the repo)
        sha = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return cltk.__version__
    return f"{cltk.__version__}+g{sha}{'.dirty' if dirty else ''}" if sha else cltk.__version__


_JOBS_WITH_NPROC = "--jobs runs whole runs in parallel processes; it cannot be combined with --nproc or torchrun"


@dataclasses.dataclass(frozen=True)
class _Job:
    """One run of a comparison: all a (possibly spawned) process needs to build and train it."""

    method: str                     # the label (a name or a method spec)
    cls: type
    config: Any
    scenario: str
    seed: int
    benchmark: str
    stream_kwargs: dict
    model: str
    model_kwargs: dict
    iters: int
    batch_size: int
    device: str
    readout: bool
    progress: bool
    checkpoint_dir: Optional[str]
    checkpoint_every: int
    resume: bool
    keep_checkpoints: int
    eval_split: str = "test"


def _run_job(job: _Job, stream: Any = None) -> Any:
    """Train one run of the grid (building its stream unless given) and label its result."""
    from cltk.loop import run
    from cltk.models import build_model
    from cltk.streams.builders import make_stream
    if stream is None:
        stream = make_stream(job.benchmark, job.scenario, job.seed, **job.stream_kwargs)
    method = job.cls(job.config)
    net = build_model(job.model, stream, seed=job.seed, **job.model_kwargs)
    r = run(method, net, stream, iters_per_task=job.iters, batch_size=job.batch_size, seed=job.seed,
            device=job.device, readout=job.readout, progress=job.progress, checkpoint_dir=job.checkpoint_dir,
            checkpoint_every=job.checkpoint_every, resume=job.resume, keep_checkpoints=job.keep_checkpoints,
            eval_split=job.eval_split)
    r.model = job.model
    r.method = job.method
    r.params_per_task = [_added_parameters(method, i) for i in range(len(stream.tasks))]
    return r


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _init_job_process(threads: int) -> None:
    import torch
    torch.set_num_threads(threads)


def _run_parallel(grid: list[_Job], jobs: int, threads: int, finished: Any) -> None:
    """Run the grid in ``jobs`` spawned processes of ``threads`` torch threads each, calling ``finished(i, result)``
    in this process as each run ends. The first failing run stops the rest (its error is raised here)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    pool = ProcessPoolExecutor(min(jobs, len(grid)) or 1, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_job_process, initargs=(threads,))
    try:
        futures = {pool.submit(_run_job, job): i for i, job in enumerate(grid)}
        for f in as_completed(futures):
            finished(futures[f], f.result())
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _added_parameters(method: Any, task: int) -> Optional[int]:
    """``method.added_parameters(task)`` where the method defines it (None otherwise)."""
    fn = getattr(method, "added_parameters", None)
    return None if fn is None else fn(task)


def _cmd_run(args: argparse.Namespace) -> int:
    from cltk.presets import get_preset
    p = get_preset("default")
    return _experiment(args, methods=[args.method], scenarios=[args.scenario], seeds=_seeds(args.seeds),
                       benchmark=args.benchmark, iters=args.iters if args.iters is not None else p.iters,
                       model=args.model,
                       batch_size=args.batch_size if args.batch_size is not None else 128,
                       stream_kwargs=_parse_stream_kwargs(args.stream), config={}, out=args.out, meta={"command": "run"})


def _cmd_compare(args: argparse.Namespace) -> int:
    from cltk.presets import get_preset
    try:
        p = get_preset(args.preset or "default")
    except ValueError as e:
        raise CLIError(str(e)) from None
    if (args.benchmark or p.benchmark) == "bbc-cpt":  # continual pre-training of a causal LM (cltk.lm.cpt)
        from cltk.lm.cpt import compare_cli
        return compare_cli(args, p)
    stream_kwargs = dict(p.stream_kwargs)
    stream_kwargs.update(_parse_stream_kwargs(args.stream))
    name = args.name or args.preset or time.strftime("%Y%m%d-%H%M%S")
    from cltk.results import safe_name
    out = args.out or os.path.join("results", safe_name(name))
    return _experiment(
        args, methods=_csv_list(args.methods, "--methods") if args.methods is not None else list(p.methods),
        scenarios=_csv_list(args.scenarios, "--scenarios") if args.scenarios is not None else list(p.scenarios),
        seeds=_seeds(args.seeds) if args.seeds is not None else list(p.seeds),
        benchmark=args.benchmark or p.benchmark,
        iters=args.iters if args.iters is not None else p.iters, model=args.model or p.model,
        batch_size=args.batch_size if args.batch_size is not None else p.batch_size, stream_kwargs=stream_kwargs,
        config=dict(p.config), method_config=p.method_config, out=out,
        meta={"command": "compare", "preset": args.preset or "default"})


def _cmd_l2r(args: argparse.Namespace) -> int:
    import torch

    from cltk.meta.l2r_experiments import run_experiment
    torch.set_num_threads(args.threads or 1)
    out = args.out or os.path.join("bench", "results", "l2r", args.experiment)
    _check_out(out)
    res = run_experiment(args.experiment, quick=args.quick, out=out, seed=args.seed, variant=args.variant,
                         test_dataset=args.test_dataset, meta_steps=args.meta_steps,
                         log=None if args.quiet else (lambda m: print(m, flush=True)))
    for row in res["table"]:
        print("  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    print(f"meta-training {res['meta_cpu_s']} CPU-s; results in {out}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import cltk.benchmark as bench
    return int(bench.main(args) or 0)


# ----------------------------------------------------------------------------------------------------- parser

def _common_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--iters", type=int, default=None, help="optimizer steps per task")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=None, help="training batch size (128)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="method config override, parsed with the field's type (repeatable), e.g. --set lr=0.01")
    p.add_argument("--stream", action="append", default=[], metavar="KEY=VALUE",
                   help="make_stream argument (JSON value), e.g. --stream train_per_task=500 (repeatable)")
    p.add_argument("--model-arg", dest="model_arg", action="append", default=[], metavar="KEY=VALUE",
                   help="model constructor argument (JSON value), e.g. --model-arg weights_path=mbv2.pth (repeatable)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default)")
    p.add_argument("--no-readout", dest="no_readout", action="store_true", help="skip the linear-readout probe")
    p.add_argument("--eval-split", dest="eval_split", default="test", choices=["test", "val"],
                   help="measure every accuracy on the tasks' test split (default) or on their validation split, "
                        "to choose hyperparameters without looking at the test data")
    p.add_argument("--no-progress", dest="no_progress", action="store_true", help="no progress bar")
    p.add_argument("--checkpoint-every", dest="checkpoint_every", type=int, default=0, metavar="N",
                   help="checkpoint every N steps within a task (and after every task) under OUT/checkpoints/")
    p.add_argument("--resume", action="store_true",
                   help="continue every run from its newest checkpoint under OUT/checkpoints/ (finished runs are "
                        "read back from their last checkpoint)")
    p.add_argument("--keep-checkpoints", dest="keep_checkpoints", type=int, default=2, metavar="K",
                   help="keep the newest K checkpoints of each run (default 2)")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train data-parallel in N processes on this machine (gloo on the CPU, nccl on CUDA); "
                        "the same as torchrun --nproc_per_node N -m cltk ...")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cltk", description="cltk: continual-learning toolkit for PyTorch")
    sub = parser.add_subparsers(dest="command", metavar="{list,env,run,compare,l2r,bench}", parser_class=_Parser)
    sub.required = True
    p = sub.add_parser("list", help="methods, benchmarks, models and presets")
    p.set_defaults(func=_cmd_list)
    p = sub.add_parser("env", help="torch, CUDA, native kernels and data sets on this machine")
    p.set_defaults(func=_cmd_env)

    p = sub.add_parser("run", help="one method on one benchmark and scenario")
    p.add_argument("--method", required=True, help="a method name (cltk list)")
    p.add_argument("--benchmark", required=True, help="e.g. split-mnist5k (cltk list)")
    p.add_argument("--scenario", default="task", help="task, domain or class (default task)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    p.add_argument("--model", default="mlp", help="mlp or convnet (default mlp)")
    p.add_argument("--out", default=None, help="write results.json/csv and figures to this folder")
    _common_run_options(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("compare", help="methods x scenarios x seeds: mean ± std table, results and figures")
    p.add_argument("--preset", default=None, help="a named preset (cltk list); options below override it")
    p.add_argument("--methods", default=None, help="comma-separated method names")
    p.add_argument("--benchmark", default=None, help="e.g. split-mnist5k")
    p.add_argument("--scenarios", default=None, help="comma-separated, from task, domain, class")
    p.add_argument("--seeds", default=None, help="comma-separated seeds")
    p.add_argument("--model", default=None, help="mlp or convnet")
    p.add_argument("--name", default=None, help="results folder name under results/ (default: preset or time)")
    p.add_argument("--out", default=None, help="results folder (default results/<name>)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="run N runs at once in separate processes (each with --threads, default cores/N, torch "
                        "threads); the results equal one process's")
    _common_run_options(p)
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("l2r", help="learning to remember from a multi-task teacher: one experiment")
    p.add_argument("--experiment", required=True,
                   choices=["two-tasks", "unseen-classes", "unseen-init", "unseen-domain", "three-tasks"])
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    p.add_argument("--out", default=None, help="results folder (default bench/results/l2r/EXPERIMENT)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", default="synapse", help="synapse (default) or neuron")
    p.add_argument("--test-dataset", dest="test_dataset", default="mnist5k",
                   help="unseen-domain: the meta-test data set (any 10-class name cltk.data knows)")
    p.add_argument("--meta-steps", dest="meta_steps", type=int, default=None, help="meta-updates (default 300)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1)")
    p.add_argument("--quiet", action="store_true", help="print only the table")
    p.set_defaults(func=_cmd_l2r)

    p = sub.add_parser("bench", help="kernel benchmarks (cltk.benchmark)")
    import cltk.benchmark as bench
    bench.add_arguments(p)
    p.set_defaults(func=_cmd_bench)
    return parser


def _check_out(out: Optional[str]) -> None:
    """Refuse an ``--out`` that cannot become a folder before any work (and before ``--nproc`` starts processes,
    so that the error is one line, not a failing rank 0 and the ranks waiting for it)."""
    if not out:
        return
    path = os.path.abspath(out)
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise CLIError(f"--out {out}: cannot create the folder ({probe} is not a folder)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise CLIError(f"--out {out}: cannot create the folder ({probe} is not writable)")


def _free_port() -> int:
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, nproc: int, port: int, argv: list[str]) -> None:
    """One process of ``--nproc N``: torchrun's environment, then the same command."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    rc = main(argv)
    if rc:
        sys.exit(rc)


def _spawn(argv: list[str], nproc: int) -> int:
    import torch.multiprocessing as mp
    try:
        mp.spawn(_worker, args=(nproc, _free_port(), argv), nprocs=nproc, join=True)
    except mp.ProcessExitedException as e:
        print(f"cltk: error: process {e.error_index} of {nproc} exited with status {e.exit_code}", file=sys.stderr)
        return 2
    except mp.ProcessRaisedException as e:
        print(f"cltk: error: {str(e).strip().splitlines()[-1]}", file=sys.stderr)
        return 2
    return 0


def _run_command(args: argparse.Namespace) -> int:
    """``args.func``, inside a process group when launched as several processes."""
    from cltk import distributed as dist
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return int(args.func(args) or 0)
    device = dist.init_from_env(getattr(args, "device", "cpu"))
    if device is not None and hasattr(args, "device"):
        args.device = str(device)
    ok = False
    try:
        rc = int(args.func(args) or 0)
        ok = rc == 0
        return rc
    finally:
        dist.destroy(wait_for_all=ok)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    nproc = getattr(args, "nproc", 1)
    if nproc < 1:
        print(f"cltk: error: --nproc must be >= 1, got {nproc}", file=sys.stderr)
        return 2
    if nproc > 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        try:
            if getattr(args, "jobs", 1) > 1:
                raise CLIError(_JOBS_WITH_NPROC)
            _check_out(getattr(args, "out", None))
        except CLIError as e:
            print(f"cltk: error: {e}", file=sys.stderr)
            return 2
        return _spawn(argv, nproc)
    try:
        return _run_command(args)
    except KeyboardInterrupt:
        print("cltk: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one line for the user, never a traceback
        if os.environ.get("CLTK_DEBUG", "0") not in ("", "0"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not isinstance(e, (CLIError, ValueError, FileNotFoundError, OSError, TypeError)):
            msg = f"{type(e).__name__}: {msg}"
        print(f"cltk: error: {msg}", file=sys.stderr)
        return 2
