"""The paper's dataset assessments (§8.5) on texts and arrays (no files): token lengths, unique
entities, LDA topics, and the funnel of counts read from a manifest.

Documented heuristics (the paper names neither its tokenizer nor its entity extractor):
- tokens: words and punctuation marks (`\\w+|[^\\w\\s]`), close to CLIP's BPE count on English;
- entities: maximal runs of capitalised words (joined by `of`, `de`, `van`, ...; broken by numbers
  and punctuation), with leading and trailing stop words removed, ignoring a lone capitalised word
  that opens a sentence; compared lower-cased. Texts that are all lower case (like the released
  RealSyn texts) have none.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer

_TOKEN = re.compile(r"\w+|[^\w\s]")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"[^\W\d_][\w'’-]*|\d+|[^\w\s]")  # words; numbers and punctuation break runs
_CONNECTORS = frozenset("of de del della der di du da la le van von y".split())
STAGE_ORDER = ("extract", "embed", "retrieve", "synth", "balance", "export")


def token_counts(texts: Iterable[str]) -> np.ndarray:
    return np.fromiter((len(_TOKEN.findall(t)) for t in texts), np.int64)


def _runs(words: list[str]) -> Iterator[tuple[int, list[str]]]:
    """(start, words) of the maximal capitalised runs, connectors allowed inside."""
    i = 0
    while i < len(words):
        if not words[i][:1].isupper():
            i += 1
            continue
        j = i + 1
        while j < len(words) and (words[j][:1].isupper() or (words[j] in _CONNECTORS and j + 1 < len(words) and words[j + 1][:1].isupper())):
            j += 1
        yield i, words[i:j]
        i = j


def entities(text: str) -> set[str]:
    """The entities of a text (see the module docstring), lower-cased."""
    found = set()
    for sentence in _SENTENCE.split(text):
        words = [re.sub(r"['’]s$", "", w) for w in _WORD.findall(sentence)]
        first = next((i for i, w in enumerate(words) if w[:1].isalpha()), 0)
        for start, run in _runs(words):
            while run and (run[0].lower() in ENGLISH_STOP_WORDS or run[0] in _CONNECTORS):
                run, start = run[1:], start + 1
            while run and (run[-1].lower() in ENGLISH_STOP_WORDS or run[-1] in _CONNECTORS):
                run = run[:-1]
            if run and not (start == first and len(run) == 1):
                found.add(" ".join(run).lower())
    return found


def entity_overlap(a: Sequence[str], b: Sequence[str], top: int = 15) -> dict[str, Any]:
    """Unique entities of two text sets (as the paper's Venn diagram) and the most frequent ones."""
    per_a, per_b = [entities(t) for t in a], [entities(t) for t in b]
    ca, cb = Counter(e for s in per_a for e in sorted(s)), Counter(e for s in per_b for e in sorted(s))  # sorted: same ties on every run
    return {"a_unique": len(ca), "b_unique": len(cb), "shared": len(ca.keys() & cb.keys()),
            "a_only": len(ca.keys() - cb.keys()), "b_only": len(cb.keys() - ca.keys()),
            "a_per_text": float(np.mean([len(s) for s in per_a])) if a else 0.0,
            "b_per_text": float(np.mean([len(s) for s in per_b])) if b else 0.0,
            "a_top": ca.most_common(top), "b_top": cb.most_common(top)}


@dataclass
class Topics:
    words: list[list[str]]  # top words of each topic
    shares: dict[str, np.ndarray]  # per group of texts: mean topic weight (sums to 1)


def lda_topics(groups: dict[str, Sequence[str]], n_topics: int, n_words: int, seed: int) -> Topics | None:
    """LDA (scikit-learn, batch) fitted on all groups together; None without enough words."""
    from sklearn.decomposition import LatentDirichletAllocation

    docs = [t for texts in groups.values() for t in texts]
    vectorizer = CountVectorizer(stop_words="english", token_pattern=r"(?u)\b[^\W\d_]{3,}\b", max_features=5000,
                                 min_df=2 if len(docs) >= 100 else 1, max_df=0.5 if len(docs) >= 100 else 1.0)
    try:
        counts = vectorizer.fit_transform(docs)
    except ValueError:  # empty vocabulary
        return None
    lda = LatentDirichletAllocation(n_components=n_topics, learning_method="batch", max_iter=20, random_state=seed)
    weights = lda.fit_transform(counts)
    vocab = vectorizer.get_feature_names_out()
    words = [[str(vocab[i]) for i in np.argsort(-row)[:n_words]] for row in lda.components_]
    shares, lo = {}, 0
    for name, texts in groups.items():
        block = weights[lo:lo + len(texts)]
        shares[name] = block.mean(axis=0) if len(block) else np.zeros(n_topics)
        lo += len(texts)
    return Topics(words, shares)


@dataclass
class FunnelRow:
    stage: str
    item: str
    read: int
    kept: int
    rejected: int
    reasons: dict[str, int]


def _summaries(counts: Any, path: str = "") -> Iterator[tuple[str, dict]]:
    """Every {read, kept, rejected} summary inside a stage's counts, with its dotted path."""
    if isinstance(counts, dict):
        if {"read", "kept", "rejected"} <= counts.keys():
            yield path, counts
            return
        for key, value in counts.items():
            yield from _summaries(value, f"{path}.{key}" if path else str(key))


def funnel(stages: dict[str, dict]) -> list[FunnelRow]:
    """The funnel of counts per stage (pipeline order, then any other stage) from manifest stages."""
    names = [s for s in STAGE_ORDER if s in stages] + sorted(set(stages) - set(STAGE_ORDER))
    return [FunnelRow(name, item or "items", int(s["read"]), int(s["kept"]), int(s["rejected"]), dict(s.get("reasons") or {}))
            for name in names for item, s in _summaries(stages[name].get("counts") or {})]
