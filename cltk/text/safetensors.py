"""A minimal reader of the safetensors format (no dependency beyond numpy and torch).

Layout (https://github.com/huggingface/safetensors): an unsigned little-endian 64-bit header length ``n``, then ``n``
bytes of UTF-8 JSON mapping each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative
to the end of the header; an optional ``"__metadata__"`` entry maps strings to strings), then the raw little-endian
tensor bytes. The data section is read once and every tensor copied out of it, so nothing keeps the file open.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Union

import numpy as np
import torch

__all__ = ["load_safetensors", "read_safetensors_header", "save_safetensors", "SafetensorsError"]

_DTYPES: dict[str, tuple[np.dtype, torch.dtype]] = {
    "F64": (np.dtype("<f8"), torch.float64),
    "F32": (np.dtype("<f4"), torch.float32),
    "F16": (np.dtype("<f2"), torch.float16),
    "BF16": (np.dtype("<u2"), torch.bfloat16),   # read as raw 16-bit words, then reinterpreted
    "I64": (np.dtype("<i8"), torch.int64),
    "I32": (np.dtype("<i4"), torch.int32),
    "I16": (np.dtype("<i2"), torch.int16),
    "I8": (np.dtype("i1"), torch.int8),
    "U8": (np.dtype("u1"), torch.uint8),
    "BOOL": (np.dtype("?"), torch.bool),
}
_NAME_OF = {tdt: name for name, (_, tdt) in _DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsError(ValueError):
    """A file that is not valid safetensors (the message names the file and what is wrong)."""


def read_safetensors_header(path: Union[str, os.PathLike]) -> tuple[dict, int]:
    """``(header, data_start)``: the parsed JSON header (``__metadata__`` included) and the offset of the data."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise SafetensorsError(f"{path}: file is shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", raw)
        if n > _MAX_HEADER:
            raise SafetensorsError(f"{path}: header length {n} exceeds {_MAX_HEADER} bytes")
        text = f.read(n)
        if len(text) != n:
            raise SafetensorsError(f"{path}: header is truncated ({len(text)} of {n} bytes)")
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{path}: header is not UTF-8 JSON ({e})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: header must be a JSON object, got {type(header).__name__}")
    return header, 8 + n


def load_safetensors(path: Union[str, os.PathLike]) -> dict[str, torch.Tensor]:
    """Every tensor of the file, as contiguous CPU tensors with the stored dtype and shape (name order kept)."""
    header, start = read_safetensors_header(path)
    out: dict[str, torch.Tensor] = {}
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read()
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], list(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise SafetensorsError(f"{path}: entry {name!r} must have dtype, shape and data_offsets, got {info!r}"
                                   ) from None
        if dtype not in _DTYPES:
            raise SafetensorsError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r} "
                                   f"(supported: {', '.join(_DTYPES)})")
        np_dt, t_dt = _DTYPES[dtype]
        count = int(np.prod(shape)) if shape else 1
        if not 0 <= begin <= end or end - begin != count * np_dt.itemsize or end > len(data):
            raise SafetensorsError(f"{path}: tensor {name!r} ({dtype} {shape}) has data_offsets [{begin}, {end}], "
                                   f"expected a span of {count * np_dt.itemsize} bytes inside the "
                                   f"{len(data)}-byte data section")
        arr = np.frombuffer(data, dtype=np_dt, count=count, offset=begin) if count else \
            np.empty(0, dtype=np_dt)
        t = torch.from_numpy(arr.copy()).reshape(shape)
        out[name] = t.view(torch.bfloat16) if t_dt is torch.bfloat16 else t
    return out


def save_safetensors(tensors: dict[str, torch.Tensor], path: Union[str, os.PathLike],
                     metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` in the safetensors layout that :func:`load_safetensors` reads (copied to the CPU)."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs, offset = [], 0
    for name, t in tensors.items():
        if t.dtype not in _NAME_OF:
            raise ValueError(f"save_safetensors: tensor {name!r} has unsupported dtype {t.dtype}")
        t = t.detach().cpu().contiguous()
        b = (t.view(torch.uint16) if t.dtype is torch.bfloat16 else t).numpy().astype(
            _DTYPES[_NAME_OF[t.dtype]][0], copy=False).tobytes()
        header[name] = {"dtype": _NAME_OF[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)   # the reference writer pads the header to a multiple of 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
