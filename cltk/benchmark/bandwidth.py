"""STREAM-like bandwidth of this machine, measured in torch on 1 thread.

Three kernels on fp32 tensors much larger than the last-level cache (105 MiB L3 here, so 256 MiB per array):

  read      a.sum()        bytes = 4 n       (one array read)
  copy      b.copy_(a)     bytes = 8 n       (read a, write b; write-allocate traffic not counted, as in STREAM)
  inplace   a.add_(b)      bytes = 12 n      (read a and b, write a): the pattern of an optimizer step

Kernels are reported as a percentage of the figure that matches their access pattern (``Case.bandwidth``).
On CUDA the same three run on the device with CUDA-event timing; ``copy`` is then the device-to-device copy
that HBM percentages are quoted against.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch

from cltk.benchmark.timing import measure

KINDS = ("read", "copy", "inplace")
DEFAULT_BYTES = 256 * 2**20
_BYTES_PER_ELEMENT = {"read": 4, "copy": 8, "inplace": 12}


@dataclass(frozen=True)
class Bandwidth:
    """Measured GB/s (1e9 bytes per second) of each kernel, and how it was measured."""

    read: float
    copy: float
    inplace: float
    array_bytes: int
    device: str
    cpu_model: str
    threads: int
    torch_version: str
    timestamp: str

    def get(self, kind: str) -> float:
        if kind not in KINDS:
            raise ValueError(f"bandwidth kind must be one of {KINDS}, got {kind!r}")
        return getattr(self, kind)


def cpu_model() -> str:
    """The CPU's model name, its family and model numbers (a VM's name, e.g. "AMD EPYC", can stand for CPUs of
    different generations) and the CPU capability cltk's kernels were built for, e.g.
    "AMD EPYC (family 25, model 17; cltk AVX512)"."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "cpu family", "model") and key not in fields:
                    fields[key] = value.strip()
                if not line.strip() and fields:
                    break  # the first processor's block is enough
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown"
    details = []
    if "cpu family" in fields and "model" in fields:
        details.append(f"family {fields['cpu family']}, model {fields['model']}")
    try:
        from cltk import _build_info
        details.append(f"cltk {_build_info.CPU_CAPABILITY}")
    except ImportError:  # a checkout without a build
        pass
    return f"{name} ({'; '.join(details)})" if details else name


def device_name(device: Any) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return cpu_model()


def measure_bandwidth(array_bytes: int = DEFAULT_BYTES, *, device: Any = "cpu", runs: int = 9,
                      warmup: int = 2, threads: int = 1) -> Bandwidth:
    """Measure read/copy/in-place bandwidth with arrays of ``array_bytes`` bytes each (uncached)."""
    if not isinstance(array_bytes, int) or array_bytes < 4:
        raise ValueError(f"measure_bandwidth: array_bytes must be an int >= 4, got {array_bytes!r}")
    dev = torch.device(device)
    n = array_bytes // 4
    a = torch.rand(n, device=dev)  # touched, so page faults are not timed
    b = torch.rand(n, device=dev)
    fns = {
        "read": lambda: a.sum(),
        "copy": lambda: b.copy_(a),
        # alternate the sign so that a stays bounded over many calls
        "inplace": _Alternating(a, b),
    }
    gbps = {}
    for kind, fn in fns.items():
        t = measure(fn, runs=runs, warmup=warmup, threads=threads, device=dev if dev.type == "cuda" else None)
        gbps[kind] = _BYTES_PER_ELEMENT[kind] * n / t.median / 1e9
    return Bandwidth(
        read=gbps["read"], copy=gbps["copy"], inplace=gbps["inplace"], array_bytes=4 * n,
        device=str(dev), cpu_model=device_name(dev), threads=threads, torch_version=torch.__version__,
        timestamp=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )


class _Alternating:
    def __init__(self, a: torch.Tensor, b: torch.Tensor):
        self.a, self.b, self.alpha = a, b, 1.0

    def __call__(self) -> torch.Tensor:
        self.alpha = -self.alpha
        return self.a.add_(self.b, alpha=self.alpha)


_cache: dict[tuple[str, int, int], Bandwidth] = {}


def machine_bandwidth(array_bytes: int = DEFAULT_BYTES, *, device: Any = "cpu", threads: int = 1,
                      cache_file: Optional[str] = None) -> Bandwidth:
    """The measured bandwidth, measured once per process (and device, size, threads).

    cache_file: when given, a JSON record is written there atomically, so a report can show what the
    percentages were taken against. It is never read back as a substitute for measuring.
    """
    key = (str(torch.device(device)), array_bytes, threads)
    if key not in _cache:
        _cache[key] = measure_bandwidth(array_bytes, device=device, threads=threads)
    bw = _cache[key]
    if cache_file is not None:
        save(bw, cache_file)
    return bw


def save(bw: Bandwidth, path: str) -> None:
    """Write ``bw`` as JSON, atomically (tmp, fsync, os.replace)."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(asdict(bw), f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def sgemm_peak_gflops(n: int = 1024, runs: int = 7, best: bool = False) -> float:
    """Single-thread fp32 ``torch.mm`` of two n x n matrices on the CPU: the machine's measured FMA peak in GFLOP/s,
    against which a compute-bound kernel's GFLOP/s are read. The median of ``runs`` process-CPU-time samples, or
    with ``best`` the fastest (for lower bounds: a busy machine then makes the bound lower, never higher)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = measure(lambda: torch.mm(a, b), runs=runs, warmup=1, number=1, threads=1)
    return 2 * n**3 / (min(t.samples) if best else t.median) / 1e9
