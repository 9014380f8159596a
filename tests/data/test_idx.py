"""IDX reader/writer on small files written here, plus the header of the real Fashion-MNIST labels."""
import gzip
from pathlib import Path

import numpy as np
import pytest

from cltk.data import IdxFormatError, read_idx, read_idx_images, read_idx_labels, write_idx
from cltk.data.sources import FASHION_MNIST_SYSTEM_DIR


@pytest.mark.parametrize("suffix", ["", ".gz"], ids=["plain", "gz"])
@pytest.mark.parametrize("dtype,shape", [(np.uint8, (5, 4, 3)), (np.uint8, (7,)), (np.int8, (2, 3)),
                                         (np.int16, (3, 2)), (np.int32, (4,)), (np.float32, (2, 2, 2)),
                                         (np.float64, (1, 3)), (np.uint8, (0, 28, 28))],
                         ids=["u8-3d", "u8-1d", "i8", "i16", "i32", "f32", "f64", "empty"])
def test_roundtrip(tmp_path, suffix, dtype, shape):
    rng = np.random.default_rng(0)
    a = (rng.random(shape) * 200 - (0 if np.dtype(dtype).kind == "u" else 100)).astype(dtype)
    p = tmp_path / f"a.idx{suffix}"
    write_idx(p, a)
    b = read_idx(p)
    assert b.dtype == a.dtype and b.dtype.isnative and b.shape == a.shape and b.flags.writeable
    np.testing.assert_array_equal(a, b)
    assert list(tmp_path.iterdir()) == [p]  # the atomic write leaves no temporary file behind


def test_byte_layout_matches_the_format(tmp_path):
    p = tmp_path / "labels-idx1-ubyte"
    write_idx(p, np.array([1, 2, 3], dtype=np.uint8))
    assert p.read_bytes() == b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02\x03"
    p = tmp_path / "images-idx3-ubyte"
    write_idx(p, np.arange(6, dtype=np.uint8).reshape(1, 2, 3))
    assert p.read_bytes()[:16] == bytes.fromhex("00000803" "00000001" "00000002" "00000003")
    q = tmp_path / "big-endian-int32"
    write_idx(q, np.array([258], dtype=np.int32))
    assert q.read_bytes() == bytes.fromhex("00000c01" "00000001" "00000102")


def test_images_and_labels_readers_check_kind(tmp_path):
    img, lab = tmp_path / "img.gz", tmp_path / "lab"
    write_idx(img, np.zeros((2, 3, 3), np.uint8))
    write_idx(lab, np.zeros(2, np.uint8))
    assert read_idx_images(img).shape == (2, 3, 3)
    assert read_idx_labels(lab).shape == (2,)
    with pytest.raises(IdxFormatError, match=r"lab: expected an idx3-ubyte image file .*magic 2051.* shape \[2\]"):
        read_idx_images(lab)
    with pytest.raises(IdxFormatError, match=r"img.gz: expected an idx1-ubyte label file"):
        read_idx_labels(img)
    f = tmp_path / "float"
    write_idx(f, np.zeros(2, np.float32))
    with pytest.raises(IdxFormatError, match=r"expected an idx1-ubyte label file.*got float32"):
        read_idx_labels(f)


def test_bad_magic(tmp_path):
    p = tmp_path / "bad-magic"
    p.write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x05")
    with pytest.raises(IdxFormatError, match=r"bad-magic: bad IDX magic number 0x01020801"):
        read_idx(p)
    p.write_bytes(b"\x00\x00\x07\x01\x00\x00\x00\x01\x05")  # unknown type code
    with pytest.raises(IdxFormatError, match=r"bad IDX magic number 0x00000701"):
        read_idx(p)
    p.write_bytes(b"\x00\x00\x08\x00")
    with pytest.raises(IdxFormatError, match="declares 0 dimensions"):
        read_idx(p)
    p.write_bytes(b"\x00\x00")
    with pytest.raises(IdxFormatError, match="too short for a magic number: 2 bytes"):
        read_idx(p)


def test_truncated_and_trailing(tmp_path):
    p = tmp_path / "x-idx3-ubyte"
    write_idx(p, np.ones((3, 4, 4), np.uint8))
    raw = p.read_bytes()
    p.write_bytes(raw[:-5])
    with pytest.raises(IdxFormatError, match=r"x-idx3-ubyte: truncated IDX file: shape \[3, 4, 4\] of uint8 needs "
                                             r"48 data bytes, got 43"):
        read_idx(p)
    p.write_bytes(raw[:10])
    with pytest.raises(IdxFormatError, match=r"truncated IDX header: 3 dimensions need 16 bytes, got 10"):
        read_idx(p)
    p.write_bytes(raw + b"\x00")
    with pytest.raises(IdxFormatError, match=r"trailing bytes in IDX file.*got 49"):
        read_idx(p)


def test_broken_gzip_names_the_file(tmp_path):
    p = tmp_path / "y.gz"
    write_idx(p, np.ones((50, 8, 8), np.uint8))
    p.write_bytes(p.read_bytes()[:20])
    with pytest.raises(IdxFormatError, match=r"y.gz: cannot read IDX file"):
        read_idx(p)
    p.write_bytes(b"not gzip at all")
    with pytest.raises(IdxFormatError, match=r"y.gz: cannot read IDX file"):
        read_idx(p)
    with pytest.raises(IdxFormatError, match=r"missing.gz: cannot read IDX file"):
        read_idx(tmp_path / "missing.gz")


def test_write_rejects_unstorable_dtype(tmp_path):
    with pytest.raises(ValueError, match=r"write_idx: array dtype must be one of .*got int64"):
        write_idx(tmp_path / "z", np.zeros(3, np.int64))
    with pytest.raises(ValueError, match=r"write_idx: array must have 1 to 255 dimensions, got shape \[\]"):
        write_idx(tmp_path / "z", np.zeros((), np.uint8))


def test_real_fashion_mnist_labels_header():
    p = FASHION_MNIST_SYSTEM_DIR / "t10k-labels-idx1-ubyte.gz"
    if not p.is_file():
        pytest.skip(f"{p} not installed (apt-get install dataset-fashion-mnist)")
    with gzip.open(p) as f:
        assert f.read(8) == bytes.fromhex("00000801" "00002710")  # magic 2049, 10000 labels
    y = read_idx_labels(Path(p))
    assert y.shape == (10000,) and np.bincount(y).tolist() == [1000] * 10
