"""`.warc` / `.warc.gz`: HTML responses are documents; their images come from image responses of
the same archive, found in a first pass (URL -> record offset) and read back by seeking. The
planner's pass also records the pages' offsets, so tasks read runs of pages by byte range."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urljoin

import pyarrow as pa
import pyarrow.parquet as pq
from warcio.archiveiterator import ArchiveIterator
from warcio.exceptions import ArchiveLoadFailed
from warcio.recordloader import ArcWarcRecord

from realsyn.errors import InputError
from realsyn.io.documents import Document, Item, stable_id
from realsyn.io.policy import DEFAULT, ReadPolicy
from realsyn.io.readers.base import WHOLE, Seen, Shard, base_name, by_size, canonical_url, doc_id, is_remote, log, skip
from realsyn.io.readers.html import page_items
from realsyn.runtime.workspace import write_table

HTML_TYPES = ("text/html", "application/xhtml+xml")
_ERRORS = (ArchiveLoadFailed, EOFError, OSError, ValueError, zlib.error)


def _records(fh: BinaryIO, path: Path, note: bool = True) -> Iterator[tuple[ArchiveIterator, ArcWarcRecord]]:
    """(iterator, record) pairs; an unreadable start is an InputError, a damaged tail a warning
    (counted as a skip only with `note`: the reading pass, not the index pass before it).
    (`iterator.get_record_offset()` skips the record's content, so only call it when that is not needed.)"""
    it, n, rec = ArchiveIterator(fh), 0, None
    try:
        for rec in it:
            if n == 0 and not rec.format.startswith("warc"):
                raise InputError(f"cannot read WARC file {path}: it does not start with a WARC record")
            yield it, rec
            n += 1
    except InputError:
        raise
    except _ERRORS as exc:
        if n == 0:
            raise InputError(f"cannot read WARC file {path}: {exc}") from exc
        if note:
            skip("damaged_stream_tail", "%s: damaged after record %d (%s); stopping there", path, n, exc)
        return
    missing = getattr(rec.raw_stream, "limit", 0) if rec is not None else 0  # warcio ends a cut file quietly
    if note and missing:
        skip("damaged_stream_tail", "%s: cut inside record %d (%d bytes missing); stopping there", path, n, missing)


def _response(rec: ArcWarcRecord) -> tuple[str, str, str | None] | None:
    """(target URL, mime type, charset) of a status-200 HTTP response record, else None."""
    if rec.rec_type != "response" or rec.http_headers is None or rec.http_headers.get_statuscode() != "200":
        return None
    url = (rec.rec_headers.get_header("WARC-Target-URI") or "").strip().strip("<>")
    mime, _, params = (rec.http_headers.get_header("Content-Type") or "").partition(";")
    charset = next((v.strip(" \"'") for k, _, v in (p.partition("=") for p in params.split(";"))
                    if k.strip().lower() == "charset"), None)
    return (canonical_url(url), mime.strip().lower(), charset) if url else None


def _scan(path: Path) -> tuple[list[int], dict[str, int]]:
    """One pass over the records: the offsets of the status-200 HTML responses, and URL -> offset
    of the first 200 `image/*` response for it."""
    pages, images = list[int](), dict[str, int]()
    with path.open("rb") as fh:
        for it, rec in _records(fh, path, note=False):
            if r := _response(rec):
                if r[1] in HTML_TYPES:
                    pages.append(it.get_record_offset())
                elif r[1].startswith("image/"):
                    images.setdefault(r[0], it.get_record_offset())
    return pages, images


def plan(path: Path, target: int, scratch: Path | None) -> Iterator[Shard]:
    """Runs of pages of about `target` bytes, as record byte ranges, from one pass over the archive
    (`_scan`, done once: its result is kept in `scratch` as the shards' `index`, where the tasks
    find their pages' images, which may lie anywhere in the archive). Whole when the file is
    smaller than `target` or there is no `scratch`."""
    size = path.stat().st_size
    if scratch is None or size <= target:
        yield Shard(path, "warc")
        return
    index = scratch / f"{stable_id(str(path.resolve()), str(size), str(path.stat().st_mtime_ns))}.parquet"
    if not index.exists():
        pages, images = _scan(path)
        table = pa.table({"kind": ["page"] * len(pages) + ["image"] * len(images),
                          "url": [""] * len(pages) + list(images), "offset": pages + list(images.values())})
        write_table(table, index)  # atomic (a task sees the whole index or none); pushed to a URL workspace's store
    t = pq.read_table(index, filters=[("kind", "==", "page")], columns=["offset"])
    pages = t["offset"].to_pylist()
    ends = pages[1:] + [size]
    for a, e in by_size([end - start for start, end in zip(pages, ends)], target):
        yield Shard(path, "warc", pages[a] if a else 0, pages[e] if e < len(pages) else None, index=str(index))


def _image_offsets(path: Path, index: str) -> dict[str, int]:
    """URL -> offset of the archive's images: from the planner's index, else one pass."""
    if not index:
        return _scan(path)[1]
    t = pq.read_table(index, filters=[("kind", "==", "image")], columns=["url", "offset"])
    return dict(zip(t["url"].to_pylist(), t["offset"].to_pylist()))


def _content(rec: ArcWarcRecord, cap: int) -> bytes | None:
    """The record's payload (transfer and content encodings undone), None when it exceeds `cap`
    bytes: at most cap + 1 bytes are ever inflated."""
    data = rec.content_stream().read(cap + 1)
    return None if len(data) > cap else data


def _resolve(src: str, page: str, offsets: dict[str, int], fh: BinaryIO, cap: int, seen: dict[str, Item]) -> Item | None:
    """Absolute URL of `src`; bytes when the archive has that image (read once per page: `seen`),
    else url only."""
    try:
        url = canonical_url(urljoin(page, src.strip()))
    except ValueError:
        return None
    if not is_remote(url):
        return None
    if url not in seen:
        seen[url] = Item("image", url=url)
        if url in offsets:
            try:
                fh.seek(offsets[url])
                data = _content(next(ArchiveIterator(fh)), cap)
                seen[url] = Item("image", url=url, data=data, error="too_large" if data is None else None)
            except (*_ERRORS, StopIteration) as exc:
                log.warning("cannot read archived image %s: %s", url, exc)
    hit = seen[url]
    return Item("image", data=hit.data, url=url, error=hit.error)


def read(path: Path, policy: ReadPolicy = DEFAULT, shard: Shard = WHOLE) -> Iterator[Document]:
    """Status-200 HTML responses in archive order (`revisit` and other records ignored), those of
    the records in [shard.start, shard.stop) for a shard; a URL captured twice keeps its first
    capture (across shards: extract's repeated-documents step). doc_id from the target URL. A
    page over `policy.max_document_bytes` is skipped, an image over `policy.max_item_bytes` is
    `too_large`."""
    path = Path(path)
    offsets = _image_offsets(path, shard.index)
    name, seen = base_name(path), Seen(path)
    with path.open("rb") as fh, path.open("rb") as images:
        fh.seek(shard.start)
        for it, rec in _records(fh, path):
            if shard.stop is not None and it.offset >= shard.stop:  # the record starts the next shard
                break
            r = _response(rec)
            if not r or r[1] not in HTML_TYPES:
                continue
            url, _, charset = r
            did = doc_id(name, url)
            if not seen.first(did, url):
                continue
            try:
                html = _content(rec, policy.max_document_bytes)
            except _ERRORS as exc:
                skip("unreadable_document", "%s: skipping %s, unreadable body (%s)", path, url, exc)
                continue
            if html is None:
                skip("oversized_document", "%s: skipping %s, body over extract.max_document_mib", path, url)
                continue
            resolve = partial(_resolve, page=url, offsets=offsets, fh=images, cap=policy.max_item_bytes, seen={})
            page = page_items(html, resolve, policy, charset, where=url, web=True)
            if page is not None:
                yield Document(did, url, page[1], page[0])
