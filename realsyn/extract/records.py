"""Per-part extraction: documents in, image and sentence rows out (pure logic, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from realsyn.config import ExtractConfig
from realsyn.extract.images import inspect_image
from realsyn.extract.sentences import caption_reason, sentence_reason, split_sentences, text_hash, word_entropy
from realsyn.io.documents import Document, stable_id
from realsyn.io.readers.html import FIGURE_LABEL


@dataclass
class Scorers:
    """Model-based filters, each a batch function; None when the filter is off."""

    perplexity: Callable[[Sequence[str]], Sequence[float]] | None = None
    nsfw: Callable[[Sequence[bytes]], Sequence[float]] | None = None
    language: Callable[[Sequence[str]], Sequence[tuple[str, float]]] | None = None


@dataclass
class PartRows:
    """The rows one part produces: column lists for images and sentences, and image bytes."""

    images: dict[str, list[Any]] = field(default_factory=lambda: {c: [] for c in IMAGE_COLUMNS})
    sentences: dict[str, list[Any]] = field(default_factory=lambda: {c: [] for c in SENTENCE_COLUMNS})
    blobs: dict[str, list[Any]] = field(default_factory=lambda: {"image_id": [], "data": []})
    documents: int = 0
    stored: set[str] = field(default_factory=set)
    checked: dict[int, tuple[bytes, Any]] = field(default_factory=dict)
    """Verdicts by identity of the image bytes: an image the reader shares among many items (a
    member referenced many times) is decoded and hashed once."""


IMAGE_COLUMNS: tuple[str, ...] = ("image_id", "doc_id", "position", "width", "height", "format", "phash", "nsfw",
                 "url", "alt", "caption", "source", "status", "reason", "path", "detail")
SENTENCE_COLUMNS: tuple[str, ...] = ("sentence_id", "doc_id", "position", "text", "words", "entropy", "language",
                    "perplexity", "text_hash", "source", "status", "reason", "kind")
KINDS = ("sentence", "caption", "alt")
"""What a pool text is: a sentence of the prose, an image's figure caption, or its alt text."""


def _image_row(rows: PartRows, doc: Document, pos: int, item: Any, cfg: ExtractConfig) -> None:
    f = cfg.images
    width = height = phash = fmt = None
    if item.data is not None:
        if id(item.data) not in rows.checked:  # the bytes are kept with the verdict: their id stays theirs
            rows.checked[id(item.data)] = (item.data, inspect_image(
                item.data, min_side=f.min_side, min_aspect=f.min_aspect, max_aspect=f.max_aspect, max_pixels=f.max_pixels))
        check = rows.checked[id(item.data)][1]
        image_id = check.sha256[:32]
        width, height, fmt, phash, reason = check.width, check.height, check.format, check.phash, check.reason
        if reason is None and image_id not in rows.stored:
            rows.stored.add(image_id)
            rows.blobs["image_id"].append(image_id)
            rows.blobs["data"].append(item.data)
    else:
        image_id = stable_id("url", item.url or f"{doc.doc_id}:{pos}", length=32)
        reason = item.error or ("not_downloaded" if item.url else "missing")
    values = (image_id, doc.doc_id, pos, width, height, fmt, phash, None, item.url, item.alt,
              item.caption, doc.source, "kept" if reason is None else "rejected", reason, item.path, item.detail)
    for col, v in zip(IMAGE_COLUMNS, values):
        rows.images[col].append(v)


def _sentence_row(rows: PartRows, doc: Document, pos: int, text: str, reason: str | None, kind: str) -> None:
    values = (stable_id(doc.doc_id, str(pos), length=32), doc.doc_id, pos, text, len(text.split()),
              word_entropy(text), None, None, text_hash(text), doc.source,
              "kept" if reason is None else "rejected", reason, kind)
    for col, v in zip(SENTENCE_COLUMNS, values):
        rows.sentences[col].append(v)


def _sentence_rows(rows: PartRows, doc: Document, pos: int, text: str, cfg: ExtractConfig) -> int:
    f = cfg.sentences
    for sentence in split_sentences(text, splitter=f.splitter):
        reason = sentence_reason(sentence, min_words=f.min_words, max_words=f.max_words,
                                 min_entropy=f.min_entropy, reject_emoji=f.reject_emoji,
                                 reject_url=f.reject_url, cat=f.cat)
        _sentence_row(rows, doc, pos, sentence, reason, "sentence")
        pos += 1
    return pos


def _caption_row(rows: PartRows, doc: Document, pos: int, text: str, kind: str, cfg: ExtractConfig) -> int:
    """A figure caption or alt text as one pool text (not split; its "Fig. 3." label dropped),
    under the caption filters."""
    text = FIGURE_LABEL.sub("", text, count=1).strip() or text
    pieces = [text] if len(text.split()) <= cfg.sentences.max_words else split_sentences(text, cfg.sentences.splitter)
    for piece in pieces:  # a long description (an accessibility alt) is split into its sentences
        reason = caption_reason(piece, max_words=cfg.sentences.max_words, reject_url=cfg.sentences.reject_url)
        _sentence_row(rows, doc, pos, piece, reason, kind)
        pos += 1
    return pos


def _reject_where(table: dict[str, list[Any]], inputs: Sequence[Any], fn: Callable, reason: str,
                  rejects: Callable[[Any], bool], column: str, value: Callable[[Any], Any] = float,
                  kind: str | None = None) -> None:
    """Run the batch function `fn` on the kept rows' `inputs` (only those of `kind`, if given),
    store `value(result)` in `column` and reject the rows where `rejects(result)`."""
    todo = [i for i, st in enumerate(table["status"]) if st == "kept" and (kind is None or table["kind"][i] == kind)]
    for i, result in zip(todo, fn([inputs[i] for i in todo]) if todo else []):
        table[column][i] = value(result)
        if rejects(result):
            table["status"][i], table["reason"][i] = "rejected", reason


def apply_models(rows: PartRows, cfg: ExtractConfig, scorers: Scorers) -> None:
    """The model-based filters, on the items that passed the cheap filters (cheapest first)."""
    s, f = rows.sentences, cfg.sentences
    if scorers.nsfw is not None and cfg.images.max_nsfw is not None:
        data = dict(zip(rows.blobs["image_id"], rows.blobs["data"]))
        _reject_where(rows.images, [data.get(i) for i in rows.images["image_id"]], scorers.nsfw,
                      "nsfw", lambda p: p > cfg.images.max_nsfw, column="nsfw")
    if scorers.language is not None and f.languages:
        _reject_where(s, s["text"], scorers.language, "language",
                      lambda r: r[0] not in (f.languages or ()) or r[1] < f.min_language_score,
                      column="language", value=lambda r: r[0])
    if scorers.perplexity is not None:
        _reject_where(s, s["text"], scorers.perplexity, "perplexity",  # prose only: captions are no prose
                      lambda p: not f.min_perplexity <= p <= f.max_perplexity, column="perplexity", kind="sentence")


def extract_documents(docs: Sequence[Document], cfg: ExtractConfig, scorers: Scorers | None = None) -> PartRows:
    """Split, filter and hash every item of `docs`. Positions count rows within a document,
    in reading order, across images and sentences."""
    rows = PartRows(documents=len(docs))
    for doc in docs:
        pos = 0
        for item in doc.items:
            if item.kind == "image":
                _image_row(rows, doc, pos, item, cfg)
                pos += 1
                if cfg.sentences.captions:
                    for kind, text in (("caption", item.caption), ("alt", item.alt)):
                        if text and not (kind == "alt" and item.caption and text in item.caption):
                            pos = _caption_row(rows, doc, pos, text, kind, cfg)
            elif item.text and item.role == "caption" and cfg.sentences.captions:
                pos = _caption_row(rows, doc, pos, item.text, "caption", cfg)
            elif item.text:
                pos = _sentence_rows(rows, doc, pos, item.text, cfg)
    if scorers is not None:
        apply_models(rows, cfg, scorers)
    return rows
