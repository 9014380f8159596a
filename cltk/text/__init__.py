"""Text models and data without extra dependencies: a safetensors reader, BERT WordPiece tokenization, a BERT
encoder that loads the pretrained MiniLM-L6 sentence encoder, and the offline text corpora."""
from cltk.text.minilm import BertConfig, BertEncoder, TextClassifier, load_minilm, load_tokenizer, minilm_dir
from cltk.text.safetensors import load_safetensors, save_safetensors
from cltk.text.tokenizer import WordPieceTokenizer, basic_tokenize

__all__ = ["BertConfig", "BertEncoder", "TextClassifier", "load_minilm", "load_tokenizer", "minilm_dir",
           "load_safetensors", "save_safetensors", "WordPieceTokenizer", "basic_tokenize"]
