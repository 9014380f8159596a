"""The BERT encoder against published all-MiniLM-L6-v2 outputs, and the checkpoint loader's key checks."""
import json

import pytest
import torch

from cltk.text.minilm import (BertConfig, BertEncoder, TextClassifier, convert_bert_state_dict, load_minilm,
                              load_tokenizer, minilm_dir)
from cltk.text.safetensors import load_safetensors, save_safetensors


@pytest.fixture(scope="module")
def encoder():
    return load_minilm().eval()


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def test_every_weight_is_loaded_and_only_the_pooler_is_left_out():
    raw = load_safetensors(minilm_dir() / "model.safetensors")
    sd, ignored = convert_bert_state_dict(raw)
    assert sorted(ignored) == ["embeddings.position_ids", "pooler.dense.bias", "pooler.dense.weight"]
    model = BertEncoder(BertConfig.from_json(minilm_dir() / "config.json"))
    result = model.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # all-MiniLM-L6-v2 has 22.7M parameters with its pooler (384 x 384 + 384), which the sentence embedding skips
    assert sum(t.numel() for k, t in raw.items() if k != "embeddings.position_ids") == 22_713_216
    assert sum(p.numel() for p in model.parameters()) == 22_713_216 - 384 * 385


def test_sentence_similarities_match_the_published_values(encoder, tok):
    # sentence-transformers' README example for all-MiniLM-L6-v2: model.similarity(embeddings, embeddings) prints
    # [[1.0000, 0.6660, 0.1046], [0.6660, 1.0000, 0.1411], [0.1046, 0.1411, 1.0000]]
    sentences = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
    with torch.no_grad():
        e = encoder.embed(tok.encode(sentences, max_len=32), normalize=True)
    sim = e @ e.T
    expected = torch.tensor([[1.0, 0.6660, 0.1046], [0.6660, 1.0, 0.1411], [0.1046, 0.1411, 1.0]])
    torch.testing.assert_close(sim, expected, atol=1e-4, rtol=0)   # published to 4 decimals


def test_paraphrase_is_closer_than_unrelated(encoder, tok):
    s = ["A man is playing a guitar.", "Someone plays an acoustic guitar.", "The stock market fell sharply today."]
    with torch.no_grad():
        e = encoder.embed(tok.encode(s, max_len=32), normalize=True)
    assert (e[0] @ e[1]).item() > 0.6 > 0.2 > (e[0] @ e[2]).item()


def test_padding_does_not_change_the_embedding(encoder, tok):
    s = ["Padding must be masked out of attention and pooling."]
    with torch.no_grad():
        short = encoder.embed(tok.encode(s, max_len=16))
        long = encoder.embed(tok.encode(s, max_len=64))
        batched = encoder.embed(tok.encode(s + ["a much longer sentence " * 5], max_len=64))[:1]
    torch.testing.assert_close(long, short, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched, short, atol=1e-5, rtol=1e-5)


def test_classifier_shapes_and_seeded_head():
    a, b = TextClassifier.pretrained(11, seed=3), TextClassifier.pretrained(11, seed=3)
    assert torch.equal(a.head.weight, b.head.weight)
    x = torch.tensor([[101, 7592, 2088, 102, 0, 0]])
    assert a.features(x).shape == (1, 384) and a(x).shape == (1, 11)


def _tiny_checkpoint(tmp_path, drop=None, extra=None):
    cfg = dict(vocab_size=40, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
               max_position_embeddings=12, type_vocab_size=2, hidden_act="gelu")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    torch.manual_seed(0)
    ref = BertEncoder(BertConfig.from_json(tmp_path / "config.json"))
    names = {"embed_norm": "embeddings.LayerNorm", "q": "attention.self.query", "k": "attention.self.key",
             "v": "attention.self.value", "o": "attention.output.dense", "attn_norm": "attention.output.LayerNorm",
             "ffn_in": "intermediate.dense", "ffn_out": "output.dense", "ffn_norm": "output.LayerNorm"}
    hf = {}
    for k, t in ref.state_dict().items():
        parts = k.split(".")
        if parts[0] == "layers":
            hf[f"encoder.layer.{parts[1]}.{names[parts[2]]}.{parts[3]}"] = t
        elif parts[0] == "embed_norm":
            hf[f"embeddings.LayerNorm.{parts[1]}"] = t
        else:
            hf[f"embeddings.{k}"] = t
    hf["pooler.dense.weight"] = torch.zeros(8, 8)
    if drop:
        del hf[drop]
    if extra:
        hf[extra] = torch.zeros(1)
    save_safetensors(hf, tmp_path / "model.safetensors")
    return ref


def test_loader_maps_hf_names(tmp_path):
    ref = _tiny_checkpoint(tmp_path)
    got = load_minilm(tmp_path)
    for k, t in ref.state_dict().items():
        assert torch.equal(got.state_dict()[k], t), k


def test_loader_rejects_missing_and_unexpected_keys(tmp_path):
    _tiny_checkpoint(tmp_path, drop="encoder.layer.1.attention.self.value.weight")
    with pytest.raises(ValueError, match=r"missing \['layers.1.v.weight'\]"):
        load_minilm(tmp_path)
    _tiny_checkpoint(tmp_path, extra="encoder.layer.0.attention.self.extra")
    with pytest.raises(ValueError, match="unexpected"):
        load_minilm(tmp_path)
