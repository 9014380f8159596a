"""Loader for CIFAR-10 and CIFAR-100 in their original "python version" pickle format.

CIFAR-10 (``cifar-10-batches-py``): ``data_batch_1`` .. ``data_batch_5`` and ``test_batch``, each a pickled dict with
``data`` (uint8 [10000, 3072], rows are the R, G, B planes of a 32x32 image) and ``labels`` (list of int), plus
``batches.meta`` with ``label_names``.
CIFAR-100 (``cifar-100-python``): ``train`` and ``test`` with ``data``, ``fine_labels`` and ``coarse_labels``, plus
``meta`` with ``fine_label_names`` and ``coarse_label_names``.

The files are Python-2 pickles. Unpickling can call any importable function, so they are read with
:class:`RestrictedUnpickler`, which resolves only the few numpy globals that rebuild an ndarray (and a latin-1-only
``_codecs.encode`` for arrays pickled by Python 3 with protocol 2) and refuses every other global with
:class:`UnsafePickleError`.
"""
from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np

__all__ = ["UnsafePickleError", "CifarFormatError", "RestrictedUnpickler", "safe_load_pickle", "read_cifar10",
           "read_cifar100"]

PathLike = Union[str, "os.PathLike[str]"]


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global that CIFAR files never need."""


class CifarFormatError(ValueError):
    """A CIFAR directory or batch file does not have the layout of the original python-pickle release."""


def _latin1_encode(obj: str, encoding: str = "utf-8") -> bytes:
    # Python 3 pickles bytes under protocol 2 as _codecs.encode(str, "latin1"); nothing else is accepted.
    if not isinstance(obj, str) or encoding != "latin1":
        raise UnsafePickleError(f"_codecs.encode is only allowed as encode(str, 'latin1'), got encoding {encoding!r}")
    return obj.encode("latin1")


def _reconstruct() -> Callable[..., Any]:
    try:
        from numpy._core.multiarray import _reconstruct as r  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct as r
    return r


def _allowed() -> dict[tuple[str, str], Any]:
    rec = _reconstruct()
    return {
        ("numpy.core.multiarray", "_reconstruct"): rec,
        ("numpy._core.multiarray", "_reconstruct"): rec,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only rebuilds plain containers, numbers, strings, bytes and numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        obj = _allowed().get((module, name))
        if obj is None:
            raise UnsafePickleError(
                f"refusing to load global {module}.{name}: CIFAR pickles only need "
                f"numpy.core.multiarray._reconstruct, numpy.ndarray and numpy.dtype")
        return obj


def safe_load_pickle(path: PathLike) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler` (``encoding="bytes"``, as Python-2 pickles need)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CifarFormatError(f"{path}: cannot read: {e}") from e
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{path}: {e}") from None
    except Exception as e:  # any other unpickling failure is a malformed file
        raise CifarFormatError(f"{path}: not a readable CIFAR pickle: {type(e).__name__}: {e}") from e


def _get(d: Any, key: str, path: Path) -> Any:
    if not isinstance(d, dict):
        raise CifarFormatError(f"{path}: expected a pickled dict, got {type(d).__name__}")
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    keys = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in d)
    raise CifarFormatError(f"{path}: missing key {key!r}; keys present: {keys}")


def _read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise CifarFormatError(f"{path}: CIFAR batch file not found")
    d = safe_load_pickle(path)
    data = np.asarray(_get(d, "data", path))
    labels = np.asarray(_get(d, label_key, path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise CifarFormatError(f"{path}: 'data' must be uint8 [N, 3072], got {data.dtype} {list(data.shape)}")
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or labels.dtype.kind not in "iu":
        raise CifarFormatError(f"{path}: {label_key!r} must be {data.shape[0]} integers, got {labels.dtype} "
                               f"{list(labels.shape)}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _names(path: Path, key: str) -> tuple[str, ...] | None:
    if not path.is_file():
        return None
    raw = _get(safe_load_pickle(path), key, path)
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in raw)


def _check_labels(root: Path, y: np.ndarray, num_classes: int) -> None:
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise CifarFormatError(f"{root}: labels must lie in [0, {num_classes}), got range [{y.min()}, {y.max()}]")


def read_cifar10(root: PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...] | None]:
    """Read ``cifar-10-batches-py``: (train_x uint8 [N,3,32,32], train_y int64 [N], test_x, test_y, label names)."""
    root = Path(root)
    parts = [_read_batch(root / f"data_batch_{i}", "labels") for i in range(1, 6)]
    test_x, test_y = _read_batch(root / "test_batch", "labels")
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    for y in (train_y, test_y):
        _check_labels(root, y, 10)
    return train_x, train_y, test_x, test_y, _names(root / "batches.meta", "label_names")


def read_cifar100(root: PathLike, label: str = "fine"
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...] | None]:
    """Read ``cifar-100-python`` with ``label="fine"`` (100 classes, default) or ``"coarse"`` (20 superclasses)."""
    if label not in ("fine", "coarse"):
        raise ValueError(f"read_cifar100: label must be 'fine' or 'coarse', got {label!r}")
    root = Path(root)
    key = f"{label}_labels"
    train_x, train_y = _read_batch(root / "train", key)
    test_x, test_y = _read_batch(root / "test", key)
    for y in (train_y, test_y):
        _check_labels(root, y, 100 if label == "fine" else 20)
    return train_x, train_y, test_x, test_y, _names(root / "meta", f"{label}_label_names")
