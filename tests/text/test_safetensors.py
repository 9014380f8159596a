"""The in-tree safetensors reader: a hand-built file, a round trip, malformed files, and the real MiniLM file."""
import json
import struct

import numpy as np
import pytest
import torch

from cltk.text.minilm import minilm_dir
from cltk.text.safetensors import SafetensorsError, load_safetensors, read_safetensors_header, save_safetensors


def _write(path, entries, data: bytes, pad: int = 0):
    text = json.dumps(entries).encode() + b" " * pad
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def test_reads_a_hand_built_file(tmp_path):
    f32 = np.arange(6, dtype="<f4").reshape(2, 3) / 4
    i64 = np.array([-3, 0, 7, 2**40], dtype="<i8")
    bf16 = torch.tensor([1.5, -2.25], dtype=torch.bfloat16)
    bf_bytes = bf16.view(torch.int16).numpy().astype("<i2").tobytes()
    f16 = np.array(0.5, dtype="<f2")
    blobs = [f32.tobytes(), i64.tobytes(), bf_bytes, f16.tobytes()]
    offs = np.cumsum([0] + [len(b) for b in blobs]).tolist()
    entries = {"__metadata__": {"format": "pt"},
               "w": {"dtype": "F32", "shape": [2, 3], "data_offsets": offs[0:2]},
               "ids": {"dtype": "I64", "shape": [4], "data_offsets": offs[1:3]},
               "bf": {"dtype": "BF16", "shape": [2], "data_offsets": offs[2:4]},
               "scalar": {"dtype": "F16", "shape": [], "data_offsets": offs[3:5]}}
    path = tmp_path / "t.safetensors"
    _write(path, entries, b"".join(blobs), pad=5)
    sd = load_safetensors(path)
    assert list(sd) == ["w", "ids", "bf", "scalar"]
    assert sd["w"].dtype == torch.float32 and torch.equal(sd["w"], torch.from_numpy(f32))
    assert sd["ids"].dtype == torch.int64 and sd["ids"].tolist() == [-3, 0, 7, 2**40]
    assert sd["bf"].dtype == torch.bfloat16 and torch.equal(sd["bf"], bf16)
    assert sd["scalar"].shape == () and sd["scalar"].item() == 0.5
    header, start = read_safetensors_header(path)
    assert header["__metadata__"] == {"format": "pt"} and start == 8 + len(json.dumps(entries)) + 5


def test_save_then_load_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {"a": torch.randn(3, 4, generator=g), "b": torch.randint(0, 9, (5,), generator=g),
               "c": torch.randn(2, 2, generator=g).to(torch.bfloat16), "d": torch.zeros(0, 3),
               "e": torch.tensor([True, False])}
    save_safetensors(tensors, tmp_path / "r.safetensors", metadata={"k": "v"})
    back = load_safetensors(tmp_path / "r.safetensors")
    assert list(back) == list(tensors)
    for k in tensors:
        assert back[k].dtype == tensors[k].dtype and torch.equal(back[k], tensors[k]), k


@pytest.mark.parametrize("entries,data,match", [
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 8, "expected a span of 8 bytes"),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, "inside the 8-byte data"),
    ({"w": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8, "unsupported dtype 'C64'"),
    ({"w": {"dtype": "F32", "shape": [1]}}, b"\0" * 4, "must have dtype, shape and data_offsets"),
], ids=["short-span", "past-end", "dtype", "no-offsets"])
def test_malformed_files_name_the_problem(tmp_path, entries, data, match):
    path = tmp_path / "bad.safetensors"
    _write(path, entries, data)
    with pytest.raises(SafetensorsError, match=match):
        load_safetensors(path)


def test_truncated_header(tmp_path):
    path = tmp_path / "cut.safetensors"
    path.write_bytes(struct.pack("<Q", 100) + b'{"a": 1}')
    with pytest.raises(SafetensorsError, match="header is truncated"):
        load_safetensors(path)


def test_real_minilm_file():
    sd = load_safetensors(minilm_dir() / "model.safetensors")
    assert len(sd) == 104
    assert sd["embeddings.word_embeddings.weight"].shape == (30522, 384)
    assert sd["encoder.layer.5.intermediate.dense.weight"].shape == (1536, 384)
    assert sd["embeddings.position_ids"].dtype == torch.int64
    assert sd["embeddings.position_ids"][0].tolist() == list(range(512))
    assert all(t.dtype == torch.float32 for k, t in sd.items() if k != "embeddings.position_ids")
