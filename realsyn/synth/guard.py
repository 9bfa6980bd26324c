"""The output guard (pure): is a generated text usable as a synthetic caption, and if not, why.

The source text is untrusted web data and a small LLM drifts, so every output is checked, in order:

- `empty`: nothing left after `clean` (whitespace collapsed, wrapping quotes removed);
- `too_long`: more than `max_tokens` CLIP tokens (see `tokens.py`);
- `prompt_echo`: repeats the prompt, e.g. a field label ("Caption:", "Tags:"), instruction words
  ("rewrite", "instructions", "here is"), chat markup, or any run of `NGRAM` words of the prompt's
  fixed text (instruction, template, few-shot examples): markers and runs that also occur in the
  item's own caption, tags or text are allowed;
- `repetitive`: a run of `NGRAM` words occurs twice (a small model looping; this project's addition);
- `language`: the language identifier names another language than expected with probability
  >= `min_language_score` (uncertain answers, common on short texts, pass);
- `unchanged`: the source text itself, word for word (nothing was fused; this project's addition).

`hopeless` tells a text that no continuation can save (too long, or already repetitive) so an
LLM backend that checks mid-generation can end that row early.

The stage regenerates a flagged text once, and after a second failure uses `fallback_text`:
the caption and the source text joined ("caption. text"), cut to `max_tokens` CLIP tokens at a
word boundary. The fallback is used as it is, unchecked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

from realsyn.synth.tokens import TokenCounter

NGRAM = 6  # words in a run copied from the prompt's fixed text that counts as an echo
MARKERS = re.compile(r"\b(?:caption|tags?|text|sentence|description|answer|output)(?: is)?\s*:|\brewrit\w*|\binstructions?\b"
                     r"|\bpreamble\b|\bhere(?: is|'s)\b|\bas an ai\b|<\|?im_(?:start|end)|<\|endoftext", re.I)
_QUOTES = "\"'“”‘’«»`"


def clean(text: str) -> str:
    """Whitespace collapsed and wrapping quotes removed."""
    text = " ".join(text.split())
    while len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return text


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def ngram_list(text: str, n: int = NGRAM) -> list[tuple[str, ...]]:
    w = words(text)
    return [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]


def ngrams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    return set(ngram_list(text, n))


def _markers(text: str) -> set[str]:
    return {" ".join(m.lower().split()) for m in MARKERS.findall(text)}


@dataclass(frozen=True)
class Guard:
    """Checks outputs against one prompt's fixed text; `detect` is the language identifier."""

    prompt_ngrams: frozenset[tuple[str, ...]]
    count: Callable[[str], int]
    max_tokens: int = 77
    language: str | None = None
    detect: Callable[[str], tuple[str, float]] | None = None
    min_language_score: float = 0.5

    @classmethod
    def for_prompt(cls, static_text: str, counter: TokenCounter, **kw: object) -> Guard:
        return cls(frozenset(ngrams(static_text)), counter.count, **kw)  # type: ignore[arg-type]

    def hopeless(self, text: str) -> bool:
        """True once `text` is rejected whatever follows it: too long or already repetitive,
        judged without its last word, which generation may not have finished ("a" of "an")."""
        done = " ".join(words(clean(text))[:-1])
        runs = ngram_list(done)
        return len(set(runs)) < len(runs) or self.count(done) > self.max_tokens

    def check(self, text: str, caption: str, tags: Sequence[str], source: str) -> str | None:
        """The reason `text` (already cleaned) is rejected, or None."""
        if not text:
            return "empty"
        if self.count(text) > self.max_tokens:
            return "too_long"
        inputs = " \n ".join([caption, ", ".join(tags), source])
        if _markers(text) - _markers(inputs) or (ngrams(text) & self.prompt_ngrams) - ngrams(inputs):
            return "prompt_echo"
        runs = ngram_list(text)
        if len(set(runs)) < len(runs):
            return "repetitive"
        if self.language and self.detect:
            lang, score = self.detect(text)
            if lang != self.language and score >= self.min_language_score:
                return "language"
        if words(text) == words(source):
            return "unchanged"
        return None


def fallback_text(caption: str, source: str, counter: TokenCounter, max_tokens: int = 77) -> str:
    """The documented fallback: "caption. source", cut to `max_tokens` CLIP tokens."""
    head = caption.strip().rstrip(".")
    joined = f"{head}. {' '.join(source.split())}" if head else " ".join(source.split())
    return counter.truncate(joined, max_tokens)
