"""WordPiece tokenization against the MiniLM-L6 (bert-base-uncased) vocabulary."""
import pytest

from cltk.text.minilm import load_tokenizer, minilm_dir
from cltk.text.tokenizer import WordPieceTokenizer, basic_tokenize


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def test_vocab_txt_and_tokenizer_json_agree(tok):
    assert len(tok.vocab) == 30522
    assert WordPieceTokenizer.from_file(minilm_dir() / "vocab.txt").vocab == tok.vocab
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id) == (0, 100, 101, 102)


@pytest.mark.parametrize("text,pieces", [
    ("Hello, world!", ["hello", ",", "world", "!"]),
    ("embeddings", ["em", "##bed", "##ding", "##s"]),
    ("don't", ["don", "'", "t"]),
    ("Café  naïve\tRÉSUMÉ", ["cafe", "naive", "resume"]),
    ("The Kyrgyz Republic", ["the", "ky", "##rgy", "##z", "republic"]),
    ("☃ snowman", ["[UNK]", "snow", "##man"]),
    ("a" * 101, ["[UNK]"]),
], ids=["punct", "pieces", "apostrophe", "accents", "rare-word", "unknown-char", "too-long"])
def test_wordpieces(tok, text, pieces):
    assert tok.tokenize(text) == pieces


def test_known_ids(tok):
    assert tok.encode("hello world", max_len=6).tolist() == [[101, 7592, 2088, 102, 0, 0]]
    assert tok.encode("embeddings", max_len=6).tolist() == [[101, 7861, 8270, 4667, 2015, 102]]


def test_basic_tokenize_cleans_control_chars_and_splits_cjk():
    assert basic_tokenize("a\x00b\u200bc 中文") == ["abc", "中", "文"]


def test_truncation_and_padding(tok):
    x = tok.encode(["word " * 100, "short", ""], max_len=16)
    assert x.shape == (3, 16)
    assert x[0, 0] == 101 and x[0, -1] == 102 and (x[0] != 0).all()
    assert x[1].tolist() == [101, tok.vocab["short"], 102] + [0] * 13
    assert x[2].tolist() == [101, 102] + [0] * 14
    with pytest.raises(ValueError, match="max_len"):
        tok.encode("x", max_len=1)
