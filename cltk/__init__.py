"""cltk: a continual-learning toolkit for PyTorch.

Fused C++/CUDA kernels for continual-learning hot paths, drop-in optimizers, and a small harness that runs
continual-learning methods task after task on real data.
"""
from cltk import _ext

__version__ = "0.1.0"

native_available = _ext.available

__all__ = ["__version__", "native_available"]
