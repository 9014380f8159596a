"""Loading of the native extension ``cltk._C``.

Importing cltk never fails because of the extension. If ``cltk._C`` is missing, fails to load, or was
built against a different torch, the reason is logged once and every op wrapper in ``cltk.ops`` uses its
pure-PyTorch ``*_ref``. ``CLTK_DISABLE_C=1`` forces the reference path.
"""
from __future__ import annotations

import importlib
import logging
import os

import torch

log = logging.getLogger("cltk")

_loaded: bool = False
_reason: str | None = None


def _torch_major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split("+")[0].split(".")[:2])


def _load() -> None:
    global _loaded, _reason
    if os.environ.get("CLTK_DISABLE_C", "0") not in ("", "0"):
        _reason = "disabled by CLTK_DISABLE_C"
        return
    try:
        from cltk import _build_info
    except ImportError:
        _build_info = None
    if _build_info is not None and _torch_major_minor(_build_info.TORCH_VERSION) != _torch_major_minor(torch.__version__):
        _reason = (
            f"cltk._C was built for torch {_build_info.TORCH_VERSION} but torch {torch.__version__} is installed; "
            "rebuild with `pip install --no-build-isolation -e .`"
        )
    else:
        try:
            importlib.import_module("cltk._C")  # loading runs the op registrations

            _loaded = True
            return
        except (ImportError, OSError) as e:
            _reason = f"cltk._C could not be loaded ({type(e).__name__}: {e})"
    log.warning("%s; using the pure-PyTorch reference ops", _reason)


def available() -> bool:
    """True when ``cltk._C`` is loaded and its kernels are used."""
    return _loaded


def reason() -> str | None:
    """Why ``cltk._C`` is not used, or None when it is."""
    return _reason


_has_kernel_cache: dict[tuple[str, str], bool] = {}


def has_kernel(op: str, device_type: str) -> bool:
    """Whether ``cltk::<op>`` has a kernel registered for ``device_type`` ('cpu' or 'cuda'). The answer is cached
    per (op, device type): cltk._C registers all its kernels when it loads, and the dispatcher lookups cost about
    12 us, which every wrapper call would pay."""
    if not _loaded:
        return False
    cached = _has_kernel_cache.get((op, device_type))
    if cached is not None:
        return cached
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    if key is None:
        found = False
    else:
        name = f"cltk::{op}"
        # an op this build of _C does not define (e.g. an older build) has no kernel
        found = torch._C._dispatch_has_kernel(name) and torch._C._dispatch_has_kernel_for_dispatch_key(name, key)
    _has_kernel_cache[(op, device_type)] = found
    return found


def use_native(op: str, *tensors: torch.Tensor) -> bool:
    """Route a call to the native kernel only when one exists for the tensors' device."""
    if not _loaded or not tensors:
        return False
    return has_kernel(op, tensors[0].device.type)


def native_ops() -> list[str]:
    """Names of all registered ``cltk::`` ops (without the namespace)."""
    if not _loaded:
        return []
    names = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("cltk::")]
    return sorted(n.split("::", 1)[1] for n in names)


_load()
