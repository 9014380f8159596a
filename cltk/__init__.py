"""cltk: a continual-learning toolkit for PyTorch.

Fused C++/CUDA kernels for continual-learning hot paths, drop-in optimizers, and a small harness that runs
continual-learning methods task after task on real data.
"""
from cltk import _ext

__version__ = "0.1.0"

native_available = _ext.available


def __getattr__(name: str):
    # lazy: `import cltk` stays light (no tqdm, no data loaders) until the loop is used
    if name == "run":
        from cltk.loop import run
        return run
    if name == "RunResult":
        from cltk.results import RunResult
        return RunResult
    raise AttributeError(f"module 'cltk' has no attribute {name!r}")


__all__ = ["__version__", "native_available", "run", "RunResult"]
