"""The machine's own bandwidth as a bench: STREAM-like read, copy and in-place update in torch on 1 thread.

The percentages of every other bench are against these figures, measured once per `cltk bench` run; this file
re-times the same kernels as cases so that the figures land in the CSV with p20/p80 and the runs' spread is visible.
"""
from __future__ import annotations

from cltk.benchmark import Case, bench_device
from cltk.benchmark.bandwidth import DEFAULT_BYTES


def _case(mode: str, nbytes: int, device: str) -> Case:
    n = nbytes // 4

    def build():
        import torch

        a = torch.rand(n, device=device)
        b = torch.rand(n, device=device)
        sign = [1.0]

        def inplace():
            sign[0] = -sign[0]  # alternate, so a stays bounded however many runs
            return a.add_(b, alpha=sign[0])

        fn = {"read": lambda: a.sum(), "copy": lambda: b.copy_(a), "inplace": inplace}[mode]
        return {"torch": fn}

    # Minimum traffic: read touches a once (4 n); copy reads a and writes b (8 n); a.add_(b) reads a and b and
    # writes a (12 n). Write-allocate reads of the destination are not counted, as in STREAM.
    per_element = {"read": 4, "copy": 8, "inplace": 12}[mode]
    return Case(
        kernel="bandwidth", mode=mode, shape=f"{4 * n >> 20} MiB fp32", bytes_moved=per_element * n,
        providers=("torch",), baseline="torch", build=build, bandwidth=mode, device=device, memory=False,
    )


def cases(quick: bool) -> list[Case]:
    device = bench_device()
    nbytes = 64 * 2**20 if quick else DEFAULT_BYTES
    return [_case(mode, nbytes, device) for mode in ("read", "copy", "inplace")]
