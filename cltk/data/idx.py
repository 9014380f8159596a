"""Reader and writer for the IDX file format of MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic number, one big-endian uint32 per dimension, then the array in C order, big-endian:

    magic = 0x00 0x00 <type code> <number of dimensions>
    type codes: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64

Images are ``idx3-ubyte`` (magic 2051 = 0x00000803, shape [N, H, W]) and labels are ``idx1-ubyte`` (magic 2049 =
0x00000801, shape [N]). Files ending in ``.gz`` are read and written through gzip. Every malformed file raises
:class:`IdxFormatError` naming the file and saying what was expected and what was found.
"""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import Union

import numpy as np

__all__ = ["IdxFormatError", "read_idx", "write_idx", "read_idx_images", "read_idx_labels"]

PathLike = Union[str, "os.PathLike[str]"]

_TYPE_CODES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_OF_KIND = {(d.kind, d.itemsize): code for code, d in _TYPE_CODES.items()}


class IdxFormatError(ValueError):
    """A file is not a valid IDX file, or not the kind of IDX file that was asked for."""


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError; a cut .gz raises EOFError
        raise IdxFormatError(f"{path}: cannot read IDX file: {e}") from e


def read_idx(path: PathLike) -> np.ndarray:
    """Read any IDX file (plain or ``.gz``) into a native-endian numpy array of its stored shape and type."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise IdxFormatError(f"{path}: IDX file too short for a magic number: {len(raw)} bytes")
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or code not in _TYPE_CODES:
        raise IdxFormatError(
            f"{path}: bad IDX magic number 0x{raw[:4].hex()}: expected 0x0000 then a type code in "
            f"{{{', '.join(f'0x{c:02x}' for c in _TYPE_CODES)}}} then the number of dimensions")
    if ndim == 0:
        raise IdxFormatError(f"{path}: IDX magic 0x{raw[:4].hex()} declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IdxFormatError(f"{path}: truncated IDX header: {ndim} dimensions need {header} bytes, got {len(raw)}")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _TYPE_CODES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(raw) - header
    if got != expected:
        what = "truncated" if got < expected else "trailing bytes in"
        raise IdxFormatError(
            f"{path}: {what} IDX file: shape {list(shape)} of {dtype.name} needs {expected} data bytes, got {got}")
    # astype copies, so the result is writable and native-endian (torch.from_numpy needs both)
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _read_expect(path: PathLike, ndim: int, kind: str) -> np.ndarray:
    arr = read_idx(path)
    if arr.dtype != np.uint8 or arr.ndim != ndim:
        magic = 0x0800 | ndim
        raise IdxFormatError(
            f"{path}: expected an {kind} file (ubyte, {ndim}-D, magic {magic} = 0x{magic:08x}), "
            f"got {arr.dtype.name} with shape {list(arr.shape)}")
    return arr


def read_idx_images(path: PathLike) -> np.ndarray:
    """Read an ``idx3-ubyte`` image file: uint8 [N, H, W]."""
    return _read_expect(path, 3, "idx3-ubyte image")


def read_idx_labels(path: PathLike) -> np.ndarray:
    """Read an ``idx1-ubyte`` label file: uint8 [N]."""
    return _read_expect(path, 1, "idx1-ubyte label")


def write_idx(path: PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzip-compressed if ``path`` ends in ``.gz``), atomically.

    The array's dtype must be one the format stores (uint8, int8, int16, int32, float32, float64) and it must have
    between 1 and 255 dimensions.
    """
    path = Path(path)
    array = np.asarray(array)
    code = _CODE_OF_KIND.get((array.dtype.kind, array.dtype.itemsize))
    if code is None:
        raise ValueError(f"write_idx: array dtype must be one of uint8, int8, int16, int32, float32, float64, "
                         f"got {array.dtype}")
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"write_idx: array must have 1 to 255 dimensions, got shape {list(array.shape)}")
    payload = (struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
               + np.ascontiguousarray(array, dtype=_TYPE_CODES[code]).tobytes())
    if path.suffix == ".gz":
        payload = gzip.compress(payload, mtime=0)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
