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
from realsyn.io.readers.base import WHOLE, Seen, Shard, base_name, doc_id, skip, text_item, within_budget

MAX_LINE_BYTES = 64 << 20
"""Longest JSON line read (64 MiB, far above any real MMC4 document); a longer one, such as a
decompression bomb, is read past in 1 MiB pieces, never held, and skipped as `oversized_line`."""


def _bounded(fh: BinaryIO | gzip.GzipFile, limit: int, offset: int, stop: int | None) -> Iterator[tuple[int, bytes | None]]:
    """(offset, line) of the lines of `fh` that start before `stop`; None for a line longer than `limit` bytes."""
    while (stop is None or offset < stop) and (line := fh.readline(limit + 1)):
        start, offset = offset, offset + len(line)
        if len(line) <= limit:
            yield start, line
            continue
        offset += 0 if line.endswith(b"\n") else _skip_line(fh)
        yield start, None


def _lines(path: Path, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, bytes | None]]:
    """(byte offset, line or None if oversized) of the lines that start in [start, stop) (a plain
    file; a gzip file is read whole); a truncated or damaged gzip stream ends them with a warning."""
    at: int | None = None  # the last line's offset
    try:
        with (gzip.open(path, "rb") if _gzip(path) else path.open("rb")) as fh:
            begin = start - 1 + _skip_line(fh, start - 1) if start > 0 else 0  # that line belongs to the range before
            for at, line in _bounded(fh, MAX_LINE_BYTES, begin, stop):
                yield at, line
    except EOFError:
        skip("damaged_stream_tail", "%s: gzip stream truncated after byte %d; stopping there", path, at or 0)
    except (gzip.BadGzipFile, zlib.error) as exc:
        if at is None:
            raise InputError(f"cannot read {path}: not a valid gzip file ({exc})") from exc
        skip("damaged_stream_tail", "%s: damaged gzip stream after byte %d (%s); stopping there", path, at, exc)


def _skip_line(fh: BinaryIO | gzip.GzipFile, seek: int | None = None) -> int:
    """Read past the rest of the current line (after seeking to `seek`) in 1 MiB pieces; the bytes read."""
    if seek is not None:
        fh.seek(seek)
    read = 0
    while piece := fh.readline(1 << 20):
        read += len(piece)
        if piece.endswith(b"\n"):
            break
    return read


def _gzip(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


def plan(path: Path, policy: ReadPolicy, target: int, docs: int) -> Iterator[Shard]:
    """Byte ranges of about `target` bytes (a line belongs to the range it starts in); a gzip file whole."""
    size = path.stat().st_size
    if _gzip(path) or size <= target:
        yield Shard(path, "mmc4")
        return
    for start in range(0, size, target):
        yield Shard(path, "mmc4", start, min(start + target, size))


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


def read(path: Path, policy: ReadPolicy = DEFAULT, shard: Shard = WHOLE) -> Iterator[Document]:
    """One document per JSON line (of the shard's byte range), in file order; doc_id from the
    `url` (else the line's byte offset). Malformed lines are skipped with a warning; a repeated
    url is skipped (within the range: extract drops repeats across ranges), and so is a document
    whose text exceeds `policy.max_document_bytes`."""
    path = Path(path)
    name, seen = base_name(path), Seen(path)
    for n, line in _lines(path, shard.start, shard.stop):
        if line is None:
            skip("oversized_line", "%s byte %d: skipping a line over %d bytes", path, n, MAX_LINE_BYTES)
            continue
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError as exc:  # includes bad UTF-8
            skip("malformed_json", "%s byte %d: skipping malformed JSON (%s)", path, n, exc)
            continue
        if not isinstance(doc, dict) or not isinstance(doc.get("text_list") or [], list) \
                or not isinstance(doc.get("image_info") or [], list):
            skip("not_a_document", "%s byte %d: skipping, not an MMC4 document", path, n)
            continue
        url = doc.get("url")
        locator = url if isinstance(url, str) and url else f"byte {n}"
        did = doc_id(name, locator)
        if not seen.first(did, locator):
            continue
        items = _items(doc)
        if within_budget(items, policy):
            yield Document(did, locator, items)
        else:
            skip("oversized_document", "%s byte %d: skipping, text over extract.max_document_mib", path, n)
