"""Build task streams (split, permuted, rotated, sequences of data sets) from the offline data sets.

``make_stream(benchmark, scenario, seed)`` accepts four benchmark families; ``<dataset>`` is any name that
:func:`cltk.data.load` accepts (``mnist5k``, ``fashion-mnist``, ``mnist``, ``cifar10``, ``cifar100`` or an IDX data set
under ``$CLTK_DATA``):

``split-<dataset>``
    The data set's classes divided into disjoint tasks. Default: 5 tasks of K/5 classes (2 for the 10-class sets) in
    the fixed order 0, 1, ..., K-1, as in van de Ven & Tolias 2019; if K is not a multiple of 5, tasks of 2 classes.
    ``n_tasks`` / ``classes_per_task`` change the sizes (with both given, only the first ``n_tasks *
    classes_per_task`` classes are used), ``partition=[[0, 1], [2, 3], ...]`` gives any disjoint partition of any
    subset of the classes, and ``shuffle_classes=True`` draws the class order from the seed.
``permuted-<dataset>``
    Every task is the whole data set with one fixed pixel permutation (the same for every channel). Task 0 is the
    identity (the unpermuted data set, as in van de Ven's permuted MNIST); task t >= 1 uses
    ``numpy.random.default_rng([seed, t, 3]).permutation(H * W)``. Default 5 tasks.
``rotated-<dataset>``
    Every task is the whole data set rotated counter-clockwise (as displayed) by one angle in degrees, with bilinear
    interpolation and zero fill. Default angles 0, 30, 60, 90, 120; ``angles=`` sets them, ``n_tasks=k`` alone
    gives 0, 30, ..., 30 (k-1).
``seq-<d1>+<d2>[+...]``
    One task per data set, in the order given (for example ``seq-mnist5k+fashion-mnist``). Images are brought to a
    common shape: the largest channel count (grayscale is repeated to 3 channels when mixed with colour) and the
    largest height and width (or ``image_size``), resized with bilinear interpolation (antialiased).

Targets, in the output space of the scenario (see :mod:`cltk.streams.base`); K is the number of classes of a task.
Task-IL and class-IL use the same mapping:

* split, task/class: a class's unit is its position in the concatenation of the tasks' class lists (with the
  default fixed order, the class id itself); task t owns its own classes' units; ``n_outputs`` = classes used.
* split, domain: the class's index within its task; ``n_outputs`` = classes per task (tasks must be equal in size).
* permuted and rotated, task/class: label + K t; task t owns units K t .. K t + K - 1; ``n_outputs`` = K n_tasks.
* permuted and rotated, domain: the label; ``n_outputs`` = K.
* seq, task/class: label + the class counts of the earlier data sets; ``n_outputs`` = the sum of all K.
* seq, domain: the label; ``n_outputs`` = the largest K.

Task-IL and class-IL differ only in what the loop evaluates (``Task.output_units`` only for task-IL,
``Stream.units_seen`` or all units for class-IL).

Splits and seeds: a task's test split is drawn from the data set's test set, its train and validation splits from
its training set. The validation split is a class-stratified ``val_fraction`` of the task's training pool, chosen by
``default_rng([seed, t, 1])``; ``train_per_task`` caps the pool (class-stratified, ``default_rng([seed, t, 0])``)
before the validation split is carved out of it, and ``test_per_task`` caps the test split (``default_rng([seed, t,
2])``). So the seed changes which training images are held out for validation (and the subsets and permutations),
while the class order stays fixed unless ``shuffle_classes=True``; the same arguments and seed give identical tensors.
``x`` is float32 [N, C, H, W] in [0, 1]; ``y`` is int64 [N]. ``Stream.meta`` holds only JSON-serialisable values.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from cltk.data import load
from cltk.data.sources import Dataset
from cltk.streams.base import SCENARIOS, Split, Stream, Task

__all__ = ["make_stream", "BENCHMARKS", "describe_benchmarks", "DEFAULT_ANGLES"]

DEFAULT_ANGLES = (0.0, 30.0, 60.0, 90.0, 120.0)
_DEFAULT_TASKS = 5
_RNG_TRAIN, _RNG_VAL, _RNG_TEST, _RNG_PERM, _RNG_CLASSES = 0, 1, 2, 3, 4

BENCHMARKS: dict[str, str] = {
    "split-<dataset>": "the data set's classes in disjoint tasks (default 5 tasks, fixed class order; any partition)",
    "permuted-<dataset>": "the whole data set once per task under a fixed pixel permutation (task 0 unpermuted)",
    "rotated-<dataset>": "the whole data set once per task rotated by an angle (default 0, 30, 60, 90, 120 degrees)",
    "seq-<d1>+<d2>[+...]": "one task per whole data set, e.g. seq-mnist5k+fashion-mnist, images at a common shape",
}


# Fixed task sequences built by their own module: name -> ("module:function", description). The function takes
# (scenario, seed, **kwargs) and returns a Stream; it is imported on first use.
NAMED_STREAMS: dict[str, tuple[str, str]] = {
    "mnist5k-fmnist-halves": ("cltk.streams.image_tasks:make_image_task_stream",
                              "MNIST-5k 0-4, 5-9, Fashion-MNIST 0-4, 5-9 as 32x32 RGB images (the AWM sequence)"),
    "text-3tasks": ("cltk.streams.text_tasks:make_text_3tasks",
                    "BBC topic (5), drug-review sentiment (2), drug-review condition (4); MiniLM-L6 token ids [N, 64]"),
}


def describe_benchmarks() -> list[tuple[str, str]]:
    """``(pattern, one-line description)`` per benchmark family and named stream; ``<dataset>`` is any
    ``cltk.data`` name."""
    return list(BENCHMARKS.items()) + [(name, desc) for name, (_, desc) in NAMED_STREAMS.items()]


def _make_named_stream(benchmark: str, scenario: str, seed: int, kwargs: dict) -> Stream:
    import importlib

    module, _, func = NAMED_STREAMS[benchmark][0].partition(":")
    return getattr(importlib.import_module(module), func)(scenario, seed, **kwargs)


# ------------------------------------------------------------------------------------------------------- validation

def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise ValueError(f"make_stream: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_image_size(image_size: object) -> Optional[tuple[int, int]]:
    if image_size is None:
        return None
    if isinstance(image_size, numbers.Integral) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    if (isinstance(image_size, (tuple, list)) and len(image_size) == 2
            and all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1 for s in image_size)):
        return int(image_size[0]), int(image_size[1])
    raise ValueError(f"make_stream: image_size must be a positive int or (height, width), got {image_size!r}")


def _parse_benchmark(benchmark: object) -> tuple[str, list[str]]:
    families = ", ".join(BENCHMARKS)
    if isinstance(benchmark, str):
        family, sep, rest = benchmark.partition("-")
        if sep and rest and family in ("split", "permuted", "rotated"):
            return family, [rest]
        if sep and rest and family == "seq":
            names = rest.split("+")
            if all(names):
                return family, names
    raise ValueError(f"make_stream: benchmark must match one of {families} (<dataset>: a cltk.data name such as "
                     f"mnist5k or fashion-mnist) or be one of {', '.join(NAMED_STREAMS)}, got {benchmark!r}")


# ------------------------------------------------------------------------------------------------------ index draws

def _stratified_order(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random ordering of ``range(len(labels))`` whose every prefix is as class-balanced as possible."""
    n = labels.shape[0]
    perm = rng.permutation(n)
    lab = labels[perm]
    by_class = np.argsort(lab, kind="stable")
    sorted_lab = lab[by_class]
    starts = np.searchsorted(sorted_lab, sorted_lab, side="left")
    rank = np.empty(n, dtype=np.int64)
    rank[by_class] = np.arange(n) - starts            # rank of each element within its class, in perm order
    return perm[np.lexsort((rng.random(n), rank))]


def _subsample(idx: np.ndarray, labels: np.ndarray, cap: Optional[int], rng: np.random.Generator) -> np.ndarray:
    if cap is None or cap >= idx.shape[0]:
        return idx
    return np.sort(idx[_stratified_order(labels[idx], rng)[:cap]])


def _carve_val(idx: np.ndarray, labels: np.ndarray, val_fraction: float, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
    """Split ``idx`` into (train, val) with ``round(val_fraction * len(idx))`` class-stratified val indices."""
    n_val = int(round(val_fraction * idx.shape[0]))
    order = _stratified_order(labels[idx], rng)
    return np.sort(idx[order[n_val:]]), np.sort(idx[order[:n_val]])


def _rng(seed: int, task: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([seed, task, purpose])


# ------------------------------------------------------------------------------------------------------- transforms

Transform = Callable[[torch.Tensor], torch.Tensor]


def _to_float(x: np.ndarray, shape: tuple[int, int, int]) -> torch.Tensor:
    """uint8 [N, C, H, W] -> float32 in [0, 1] at ``shape`` (C, H, W)."""
    c, h, w = shape
    # numpy for the element-wise part: single-threaded, it avoids torch's OpenMP start-up cost on small arrays,
    # and float32 division by 255 rounds exactly like torch's x.float() / 255
    a = x.astype(np.float32)
    a /= np.float32(255.0)
    out = torch.from_numpy(a)
    if out.shape[1] != c:
        if out.shape[1] != 1:
            raise ValueError(f"make_stream: cannot bring {out.shape[1]}-channel images to {c} channels")
        out = out.expand(-1, c, -1, -1)
    if tuple(out.shape[2:]) != (h, w) and out.shape[0] > 0:
        out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False, antialias=True).clamp_(0.0, 1.0)
    return out.contiguous()


def _permute(perm: Optional[np.ndarray]) -> Transform:
    def apply(x: torch.Tensor) -> torch.Tensor:
        if perm is None:
            return x
        n, c, h, w = x.shape
        # np.take along the pixel axis is ~3x faster than fancy indexing x[:, :, perm]
        return torch.from_numpy(np.take(x.numpy().reshape(n, c, h * w), perm, axis=2).reshape(n, c, h, w))
    return apply


def _rotate(angle: float) -> Transform:
    def apply(x: torch.Tensor) -> torch.Tensor:
        if angle % 360.0 == 0.0 or x.shape[0] == 0:
            return x
        a = math.radians(angle)
        # affine_grid maps each output pixel to the input point it samples, in coordinates normalised to [-1, 1]
        # (x right, y down). With y down, sampling at [[cos, -sin], [sin, cos]] p turns the picture counter-clockwise
        # as displayed (a = 90 is torch.rot90(x, 1, (2, 3))); h / w and w / h undo the normalisation's aspect.
        n, _, h, w = x.shape
        cos, sin = math.cos(a), math.sin(a)
        theta = torch.tensor([[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]], dtype=torch.float32)
        grid = F.affine_grid(theta[None], [1, x.shape[1], h, w], align_corners=False)  # one grid for all images
        out = F.grid_sample(x, grid.expand(n, -1, -1, -1), mode="bilinear", padding_mode="zeros",
                            align_corners=False)
        return out.clamp_(0.0, 1.0)
    return apply


# ------------------------------------------------------------------------------------------------------------ tasks

def _build_task(index: int, name: str, ds: Dataset, classes: Sequence[int], output_units: Sequence[int],
                target_of: np.ndarray, shape: tuple[int, int, int], transform: Transform, seed: int,
                val_fraction: float, train_per_task: Optional[int], test_per_task: Optional[int]) -> Task:
    """One task over the images of ``ds`` whose label is in ``classes``; ``target_of[label]`` is the target."""
    tr_lab, te_lab = ds.train_y.numpy(), ds.test_y.numpy()
    tr_idx = np.flatnonzero(np.isin(tr_lab, classes))
    te_idx = np.flatnonzero(np.isin(te_lab, classes))
    tr_idx = _subsample(tr_idx, tr_lab, train_per_task, _rng(seed, index, _RNG_TRAIN))
    tr_idx, va_idx = _carve_val(tr_idx, tr_lab, val_fraction, _rng(seed, index, _RNG_VAL))
    te_idx = _subsample(te_idx, te_lab, test_per_task, _rng(seed, index, _RNG_TEST))
    tgt = np.asarray(target_of, dtype=np.int64)

    def split(images: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> Split:
        return Split(x=transform(_to_float(images[idx], shape)), y=torch.from_numpy(tgt[labels[idx]]))

    tr_x, te_x = ds.train_x.numpy(), ds.test_x.numpy()
    return Task(index=index, name=name, classes=tuple(int(c) for c in classes),
                output_units=tuple(int(u) for u in output_units),
                train=split(tr_x, tr_lab, tr_idx), val=split(tr_x, tr_lab, va_idx), test=split(te_x, te_lab, te_idx))


def _split_partition(k: int, n_tasks: Optional[int], classes_per_task: Optional[int],
                     partition: Optional[Sequence[Sequence[int]]], shuffle_classes: bool, seed: int
                     ) -> list[list[int]]:
    if partition is not None:
        if shuffle_classes:
            raise ValueError("make_stream: shuffle_classes=True has no effect with an explicit partition; "
                             "give one or the other")
        if isinstance(partition, (str, bytes)) or not isinstance(partition, Sequence) or len(partition) == 0:
            raise ValueError(f"make_stream: partition must be a non-empty list of lists of class ids, "
                             f"got {partition!r}")
        parts: list[list[int]] = []
        owner: dict[int, int] = {}
        for t, group in enumerate(partition):
            if isinstance(group, (str, bytes)) or not isinstance(group, Sequence) or len(group) == 0:
                raise ValueError(f"make_stream: partition[{t}] must be a non-empty list of class ids, got {group!r}")
            ids = []
            for c in group:
                if isinstance(c, bool) or not isinstance(c, numbers.Integral) or not 0 <= int(c) < k:
                    raise ValueError(f"make_stream: partition[{t}] has class {c!r}, expected integers in "
                                     f"[0, {k}) for this data set")
                if int(c) in owner:
                    raise ValueError(f"make_stream: partition has class {int(c)} in task {owner[int(c)]} and "
                                     f"task {t}; tasks must have disjoint classes")
                owner[int(c)] = t
                ids.append(int(c))
            parts.append(ids)
        if n_tasks is not None and n_tasks != len(parts):
            raise ValueError(f"make_stream: n_tasks={n_tasks} disagrees with the partition's {len(parts)} tasks")
        if classes_per_task is not None and any(len(p) != classes_per_task for p in parts):
            raise ValueError(f"make_stream: classes_per_task={classes_per_task} disagrees with the partition's "
                             f"task sizes {[len(p) for p in parts]}")
        return parts
    if n_tasks is None and classes_per_task is None:
        if k % _DEFAULT_TASKS == 0:
            n_tasks = _DEFAULT_TASKS
        elif k % 2 == 0:
            classes_per_task = 2
        else:
            raise ValueError(f"make_stream: the data set has {k} classes, which splits into neither 5 tasks nor "
                             f"tasks of 2 classes; give n_tasks, classes_per_task or partition")
    if classes_per_task is None:
        assert n_tasks is not None
        if k % n_tasks != 0:
            raise ValueError(f"make_stream: n_tasks={n_tasks} must divide the data set's {k} classes "
                             f"(or give classes_per_task or partition too)")
        classes_per_task = k // n_tasks
    elif n_tasks is None:
        if k % classes_per_task != 0:
            raise ValueError(f"make_stream: classes_per_task={classes_per_task} must divide the data set's {k} "
                             f"classes (or give n_tasks or partition too)")
        n_tasks = k // classes_per_task
    elif n_tasks * classes_per_task > k:
        raise ValueError(f"make_stream: n_tasks * classes_per_task = {n_tasks} * {classes_per_task} exceeds the "
                         f"data set's {k} classes")
    order = (_rng(seed, 0, _RNG_CLASSES).permutation(k) if shuffle_classes else np.arange(k)).tolist()
    return [order[t * classes_per_task:(t + 1) * classes_per_task] for t in range(n_tasks)]


def make_stream(benchmark: str, scenario: str, seed: int = 0, *, n_tasks: Optional[int] = None,
                classes_per_task: Optional[int] = None, partition: Optional[Sequence[Sequence[int]]] = None,
                angles: Optional[Sequence[float]] = None, val_fraction: float = 0.1,
                train_per_task: Optional[int] = None, test_per_task: Optional[int] = None,
                image_size: Union[int, tuple[int, int], None] = None, shuffle_classes: bool = False) -> Stream:
    """Build the stream ``benchmark`` (see the module docstring) for ``scenario`` in ``SCENARIOS``.

    Args:
        benchmark: ``split-<dataset>``, ``permuted-<dataset>``, ``rotated-<dataset>`` or ``seq-<d1>+<d2>[+...]``.
        scenario: ``"task"``, ``"domain"`` or ``"class"``.
        seed: draws the validation split, subsets, permutations and (with ``shuffle_classes``) the class order.
        n_tasks: number of tasks (split, permuted, rotated).
        classes_per_task, partition, shuffle_classes: split only.
        angles: rotated only, degrees counter-clockwise.
        val_fraction: fraction in [0, 1) of each task's training pool held out as its validation split.
        train_per_task, test_per_task: caps on each task's training pool and test split (class-stratified).
        image_size: resize every image to this (height, width) (an int means square).

    Returns:
        A :class:`Stream`; every split has ``x`` float32 [N, C, H, W] in [0, 1] and ``y`` int64 [N] targets.

    Raises:
        ValueError naming the argument for bad arguments; :class:`cltk.data.DatasetNotFoundError` (a ValueError)
        for a data set that is unknown or not installed.
    """
    if isinstance(benchmark, str) and benchmark in NAMED_STREAMS:
        given = dict(n_tasks=n_tasks, classes_per_task=classes_per_task, partition=partition, angles=angles,
                     train_per_task=train_per_task, test_per_task=test_per_task, image_size=image_size)
        kwargs = {k: v for k, v in given.items() if v is not None}
        if val_fraction != 0.1:
            kwargs["val_fraction"] = val_fraction
        if shuffle_classes:
            kwargs["shuffle_classes"] = shuffle_classes
        return _make_named_stream(benchmark, scenario, seed, kwargs)
    family, names = _parse_benchmark(benchmark)
    if scenario not in SCENARIOS:
        raise ValueError(f"make_stream: scenario must be one of {', '.join(SCENARIOS)}, got {scenario!r}")
    seed = _check_int("seed", seed, 0)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real) or not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"make_stream: val_fraction must be a number in [0, 1), got {val_fraction!r}")
    val_fraction = float(val_fraction)
    if n_tasks is not None:
        n_tasks = _check_int("n_tasks", n_tasks, 1)
    if classes_per_task is not None:
        classes_per_task = _check_int("classes_per_task", classes_per_task, 1)
    if train_per_task is not None:
        train_per_task = _check_int("train_per_task", train_per_task, 1)
    if test_per_task is not None:
        test_per_task = _check_int("test_per_task", test_per_task, 1)
    size = _check_image_size(image_size)
    for arg, value, allowed in (("partition", partition, "split"), ("classes_per_task", classes_per_task, "split"),
                                ("shuffle_classes", shuffle_classes or None, "split"),
                                ("angles", angles, "rotated"), ("n_tasks", n_tasks, "split, permuted, rotated")):
        if value is not None and family not in allowed:
            raise ValueError(f"make_stream: {arg} applies to {allowed} benchmarks only, not {benchmark!r}")

    datasets = [load(n) for n in names]
    c = max(d.image_shape[0] for d in datasets)
    h, w = size if size is not None else (max(d.image_shape[1] for d in datasets),
                                          max(d.image_shape[2] for d in datasets))
    shape = (c, h, w)
    common = dict(shape=shape, seed=seed, val_fraction=val_fraction, train_per_task=train_per_task,
                  test_per_task=test_per_task)
    meta: dict = {"family": family, "datasets": names, "sources": [d.source for d in datasets],
                  "val_fraction": val_fraction, "train_per_task": train_per_task, "test_per_task": test_per_task,
                  "image_size": [h, w]}
    tasks: list[Task] = []

    if family == "split":
        ds = datasets[0]
        parts = _split_partition(ds.num_classes, n_tasks, classes_per_task, partition, shuffle_classes, seed)
        meta.update(partition=parts, shuffle_classes=bool(shuffle_classes))
        if scenario == "domain":
            sizes = {len(p) for p in parts}
            if len(sizes) != 1:
                raise ValueError(f"make_stream: the domain scenario needs tasks of equal size, but the partition's "
                                 f"task sizes are {[len(p) for p in parts]}")
            n_outputs = sizes.pop()
        else:
            n_outputs = sum(len(p) for p in parts)
        offset = 0
        for t, p in enumerate(parts):
            target_of = np.full(ds.num_classes, -1, dtype=np.int64)
            units = list(range(len(p))) if scenario == "domain" else list(range(offset, offset + len(p)))
            target_of[p] = units
            offset += len(p)
            tasks.append(_build_task(t, f"classes {'-'.join(map(str, p))}", ds, p, units, target_of,
                                     transform=lambda x: x, **common))

    elif family in ("permuted", "rotated"):
        ds = datasets[0]
        k = ds.num_classes
        if family == "rotated":
            if angles is None:
                angle_list = list(DEFAULT_ANGLES) if n_tasks is None else [30.0 * i for i in range(n_tasks)]
            else:
                if isinstance(angles, (str, bytes)) or not isinstance(angles, Sequence) or len(angles) == 0 or not all(
                        isinstance(a, numbers.Real) and not isinstance(a, bool) and math.isfinite(a) for a in angles):
                    raise ValueError(f"make_stream: angles must be a non-empty list of finite numbers (degrees), "
                                     f"got {angles!r}")
                angle_list = [float(a) for a in angles]
                if n_tasks is not None and n_tasks != len(angle_list):
                    raise ValueError(f"make_stream: n_tasks={n_tasks} disagrees with the {len(angle_list)} angles "
                                     f"{angle_list}")
            meta["angles"] = angle_list
            transforms: list[Transform] = [_rotate(a) for a in angle_list]
            task_names = [f"rotated {a:g} deg" for a in angle_list]
        else:
            count = n_tasks if n_tasks is not None else _DEFAULT_TASKS
            perms = [None] + [_rng(seed, t, _RNG_PERM).permutation(h * w) for t in range(1, count)]
            transforms = [_permute(p) for p in perms]
            task_names = ["identity"] + [f"permutation {t}" for t in range(1, count)]
            meta["permutation"] = "task 0 identity; task t: numpy default_rng([seed, t, 3]).permutation(H*W)"
        n_outputs = k if scenario == "domain" else k * len(transforms)
        for t, (tf, tname) in enumerate(zip(transforms, task_names)):
            base = 0 if scenario == "domain" else k * t
            units = list(range(base, base + k))
            tasks.append(_build_task(t, tname, ds, list(range(k)), units, np.array(units), transform=tf, **common))

    else:  # seq
        ks = [d.num_classes for d in datasets]
        n_outputs = max(ks) if scenario == "domain" else sum(ks)
        offset = 0
        for t, (d, k) in enumerate(zip(datasets, ks)):
            base = 0 if scenario == "domain" else offset
            units = list(range(base, base + k))
            tasks.append(_build_task(t, d.name, d, list(range(k)), units, np.array(units), transform=lambda x: x,
                                     **common))
            offset += k

    return Stream(name=benchmark, scenario=scenario, tasks=tasks, n_outputs=int(n_outputs), input_shape=shape,
                  seed=seed, meta=meta)
