"""CIFAR python-pickle loader on small files written here, and the restricted unpickler's refusals."""
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from cltk.data import CifarFormatError, UnsafePickleError, read_cifar10, read_cifar100
from cltk.data import sources
from cltk.data.cifar import safe_load_pickle
from cltk.streams import make_stream


class Py2StylePickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` opcodes (BINSTRING), as in the original CIFAR files."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_bytes_as_str(self, obj):
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_bytes_as_str


def _dump_py2(obj, path):
    with open(path, "wb") as f:
        Py2StylePickler(f, protocol=2).dump(obj)


def _images(n, start):
    return ((np.arange(n * 3072, dtype=np.int64).reshape(n, 3072) + start) % 251).astype(np.uint8)


def _write_cifar10(root, per_batch=4, dump=_dump_py2):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        labels = [(i * per_batch + j) % 10 for j in range(per_batch)]
        dump({b"batch_label": b"training batch", b"labels": labels, b"data": _images(per_batch, 1000 * i),
              b"filenames": [b"f.png"] * per_batch}, root / f"data_batch_{i}")
    dump({b"labels": list(range(10)), b"data": _images(10, 7)}, root / "test_batch")
    dump({b"label_names": [f"c{k}".encode() for k in range(10)], b"num_vis": 3072}, root / "batches.meta")
    return root


def _write_cifar100(root):
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 200), ("test", 100)):
        _dump_py2({b"data": _images(n, 3), b"fine_labels": [k % 100 for k in range(n)],
                   b"coarse_labels": [k % 20 for k in range(n)]}, root / split)
    _dump_py2({b"fine_label_names": [f"f{k}".encode() for k in range(100)],
               b"coarse_label_names": [f"g{k}".encode() for k in range(20)]}, root / "meta")
    return root


def test_cifar10_layout_and_values(tmp_path):
    root = _write_cifar10(tmp_path / "cifar-10-batches-py")
    assert b"_codecs" not in (root / "data_batch_1").read_bytes()  # really the Python-2 style opcodes
    tx, ty, vx, vy, names = read_cifar10(root)
    assert tx.shape == (20, 3, 32, 32) and tx.dtype == np.uint8 and vx.shape == (10, 3, 32, 32)
    assert ty.dtype == np.int64 and ty.tolist() == [(i * 4 + j) % 10 for i in range(1, 6) for j in range(4)]
    assert vy.tolist() == list(range(10))
    raw = _images(4, 1000)
    c, i, j = 2, 5, 17  # rows are the R, G, B planes, each 32x32 row-major
    assert tx[1, c, i, j] == raw[1, c * 1024 + i * 32 + j]
    np.testing.assert_array_equal(tx[4:8].reshape(4, -1), _images(4, 2000))
    assert names == tuple(f"c{k}" for k in range(10))


def test_python3_protocol2_and_protocol4_pickles_load(tmp_path):
    def dump2(obj, p):
        p.write_bytes(pickle.dumps(obj, protocol=2))  # bytes go through _codecs.encode(str, "latin1")
    root = _write_cifar10(tmp_path / "p2", dump=dump2)
    assert b"_codecs" in (root / "test_batch").read_bytes()
    assert read_cifar10(root)[2].shape == (10, 3, 32, 32)

    def dump4(obj, p):
        p.write_bytes(pickle.dumps({k.decode(): v for k, v in obj.items()}, protocol=4))  # str keys
    root = _write_cifar10(tmp_path / "p4", dump=dump4)
    assert read_cifar10(root)[1].shape == (20,)


def test_cifar100_fine_by_default_and_coarse(tmp_path):
    root = _write_cifar100(tmp_path / "cifar-100-python")
    tx, ty, vx, vy, names = read_cifar100(root)
    assert tx.shape == (200, 3, 32, 32) and ty.max() == 99 and names[:2] == ("f0", "f1")
    _, cy, _, _, cnames = read_cifar100(root, "coarse")
    assert cy.max() == 19 and len(cnames) == 20
    with pytest.raises(ValueError, match="label must be 'fine' or 'coarse', got 'medium'"):
        read_cifar100(root, "medium")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("payload", ["os.system", "eval", "codecs-rot13", "numpy-load"])
def test_malicious_pickle_is_refused(tmp_path, payload):
    marker = tmp_path / "pwned"
    p = tmp_path / "data_batch_1"
    if payload == "os.system":
        p.write_bytes(pickle.dumps({b"data": _Evil(marker)}, protocol=2))
        expect = r"refusing to load global (posix|os)\.system"
    elif payload == "eval":
        p.write_bytes(b"cbuiltins\neval\n(V__import__('os').system('touch " + str(marker).encode() + b"')\ntR.")
        expect = r"refusing to load global builtins\.eval"
    elif payload == "codecs-rot13":
        p.write_bytes(b"c_codecs\nencode\n(Vabc\nVrot13\ntR.")
        expect = r"_codecs.encode is only allowed as encode\(str, 'latin1'\)"
    else:
        p.write_bytes(b"cnumpy\nload\n(V/etc/passwd\ntR.")
        expect = r"refusing to load global numpy\.load"
    with pytest.raises(UnsafePickleError, match=expect) as info:
        safe_load_pickle(p)
    assert str(p) in str(info.value)
    assert not marker.exists()
    # the same refusal through the public reader
    for i in range(2, 6):
        _dump_py2({b"data": _images(1, 0), b"labels": [0]}, tmp_path / f"data_batch_{i}")
    with pytest.raises(UnsafePickleError):
        read_cifar10(tmp_path)
    assert not marker.exists()


def test_malformed_cifar_files(tmp_path):
    root = _write_cifar10(tmp_path / "c")
    (root / "data_batch_3").unlink()
    with pytest.raises(CifarFormatError, match=r"data_batch_3: CIFAR batch file not found"):
        read_cifar10(root)
    _dump_py2({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}, root / "data_batch_3")
    with pytest.raises(CifarFormatError, match=r"data_batch_3: 'data' must be uint8 \[N, 3072\], got uint8 \[4, 100\]"):
        read_cifar10(root)
    _dump_py2({b"data": _images(4, 0)}, root / "data_batch_3")
    with pytest.raises(CifarFormatError, match=r"data_batch_3: missing key 'labels'; keys present: \['data'\]"):
        read_cifar10(root)
    _dump_py2({b"data": _images(4, 0), b"labels": [0, 1, 2]}, root / "data_batch_3")
    with pytest.raises(CifarFormatError, match=r"'labels' must be 4 integers, got int64 \[3\]"):
        read_cifar10(root)
    _dump_py2({b"data": _images(4, 0), b"labels": [0, 1, 2, 10]}, root / "data_batch_3")
    with pytest.raises(CifarFormatError, match=r"labels must lie in \[0, 10\), got range \[0, 10\]"):
        read_cifar10(root)
    (root / "data_batch_3").write_bytes(b"\x80\x02}q\x00")  # cut short
    with pytest.raises(CifarFormatError, match=r"data_batch_3: not a readable CIFAR pickle"):
        read_cifar10(root)


def test_cifar_through_the_registry_and_a_stream(tmp_path, monkeypatch):
    monkeypatch.setenv("CLTK_DATA", str(tmp_path))
    assert dict((n, f) for n, f, _ in sources.available())["cifar10"] is False
    _write_cifar10(tmp_path / "cifar-10-batches-py", per_batch=10)
    _write_cifar100(tmp_path / "cifar100" / "cifar-100-python")
    found = {n: (f, p) for n, f, p in sources.available()}
    assert found["cifar10"] == (True, str(tmp_path / "cifar-10-batches-py"))
    assert found["cifar100"] == (True, str(tmp_path / "cifar100" / "cifar-100-python"))
    ds = sources.load("cifar10")
    assert ds.train_x.shape == (50, 3, 32, 32) and ds.num_classes == 10 and ds.class_names[3] == "c3"
    ds100 = sources.load("cifar100")
    assert ds100.num_classes == 100 and ds100.test_x.shape == (100, 3, 32, 32)
    s = make_stream("split-cifar10", "class", val_fraction=0.0)
    assert s.input_shape == (3, 32, 32) and s.n_outputs == 10 and len(s) == 5
    assert torch.equal(s.tasks[0].test.x, ds.test_x[:2].float() / 255)
    s100 = make_stream("split-cifar100", "task", val_fraction=0.0)
    assert len(s100) == 5 and s100.tasks[1].classes == tuple(range(20, 40))
    assert s100.tasks[1].output_units == tuple(range(20, 40)) and len(s100.tasks[1].train) == 40
