"""MMC4 `.jsonl` / `.jsonl.gz`: sentences as text items, each image right after its matched sentence."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from realsyn.errors import InputError
from realsyn.io.documents import Document, Item
from realsyn.io.policy import DEFAULT, ReadPolicy
from realsyn.io.readers.base import Seen, base_name, doc_id, skip, text_item, within_budget

MAX_LINE_BYTES = 64 << 20
"""Longest JSON line read (64 MiB, far above any real MMC4 document); a longer one, such as a
decompression bomb, is read past in 1 MiB pieces, never held, and skipped as `oversized_line`."""


def _bounded(fh: BinaryIO | gzip.GzipFile, limit: int) -> Iterator[bytes | None]:
    """The lines of `fh`; None for a line longer than `limit` bytes."""
    while line := fh.readline(limit + 1):
        if len(line) <= limit:
            yield line
            continue
        while line and not line.endswith(b"\n"):
            line = fh.readline(1 << 20)
        yield None


def _lines(path: Path) -> Iterator[tuple[int, bytes | None]]:
    """(line number, line or None if oversized) pairs; a truncated or damaged gzip stream ends
    them with a warning."""
    n = 0
    try:
        with (gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb")) as fh:
            for n, line in enumerate(_bounded(fh, MAX_LINE_BYTES), 1):
                yield n, line
    except EOFError:
        skip("damaged_stream_tail", "%s: gzip stream truncated after line %d; stopping there", path, n)
    except (gzip.BadGzipFile, zlib.error) as exc:
        if n == 0:
            raise InputError(f"cannot read {path}: not a valid gzip file ({exc})") from exc
        skip("damaged_stream_tail", "%s: damaged gzip stream after line %d (%s); stopping there", path, n, exc)


def _items(doc: dict) -> list[Item]:
    """Text items in order, each followed by the images matched to it; unmatched images at the end."""
    texts = doc.get("text_list") or []
    after: dict[int, list[Item]] = {}
    for info in doc.get("image_info") or []:
        url = info.get("raw_url") if isinstance(info, dict) else None
        if not isinstance(url, str) or not url.strip():
            continue
        idx = info.get("matched_text_index")
        ok = isinstance(idx, int) and not isinstance(idx, bool) and 0 <= idx < len(texts)
        after.setdefault(idx if ok else -1, []).append(Item("image", url=url.strip()))
    items: list[Item] = []
    for i, text in enumerate(texts):
        if (t := text_item(text if isinstance(text, str) else None)) is not None:
            items.append(t)
        items.extend(after.get(i, []))
    return items + after.get(-1, [])


def read(path: Path, policy: ReadPolicy = DEFAULT) -> Iterator[Document]:
    """One document per JSON line, in file order; doc_id from the `url` (else the line number).
    Malformed lines are skipped with a warning; a repeated url is skipped, and so is a document
    whose text exceeds `policy.max_document_bytes`."""
    path = Path(path)
    name, seen = base_name(path), Seen(path)
    for n, line in _lines(path):
        if line is None:
            skip("oversized_line", "%s line %d: skipping a line over %d bytes", path, n, MAX_LINE_BYTES)
            continue
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError as exc:  # includes bad UTF-8
            skip("malformed_json", "%s line %d: skipping malformed JSON (%s)", path, n, exc)
            continue
        if not isinstance(doc, dict) or not isinstance(doc.get("text_list") or [], list) \
                or not isinstance(doc.get("image_info") or [], list):
            skip("not_a_document", "%s line %d: skipping, not an MMC4 document", path, n)
            continue
        url = doc.get("url")
        locator = url if isinstance(url, str) and url else f"line {n}"
        did = doc_id(name, locator)
        if not seen.first(did, locator):
            continue
        items = _items(doc)
        if within_budget(items, policy):
            yield Document(did, locator, items)
        else:
            skip("oversized_document", "%s line %d: skipping, text over extract.max_document_mib", path, n)
