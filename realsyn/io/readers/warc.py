"""`.warc` / `.warc.gz`: HTML responses are documents; their images come from image responses of
the same archive, found in a first pass (URL -> record offset) and read back by seeking."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urljoin

from warcio.archiveiterator import ArchiveIterator
from warcio.exceptions import ArchiveLoadFailed
from warcio.recordloader import ArcWarcRecord

from realsyn.errors import InputError
from realsyn.io.documents import Document, Item
from realsyn.io.policy import DEFAULT, ReadPolicy
from realsyn.io.readers.base import WHOLE, Seen, Shard, base_name, canonical_url, doc_id, is_remote, log, skip
from realsyn.io.readers.html import page_items

HTML_TYPES = ("text/html", "application/xhtml+xml")
_ERRORS = (ArchiveLoadFailed, EOFError, OSError, ValueError, zlib.error)


def _records(fh: BinaryIO, path: Path) -> Iterator[tuple[ArchiveIterator, ArcWarcRecord]]:
    """(iterator, record) pairs; an unreadable start is an InputError, a damaged tail a warning.
    (`iterator.get_record_offset()` skips the record's content, so only call it when that is not needed.)"""
    it, n = ArchiveIterator(fh), 0
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
        skip("damaged_stream_tail", "%s: damaged after record %d (%s); stopping there", path, n, exc)


def _response(rec: ArcWarcRecord) -> tuple[str, str, str | None] | None:
    """(target URL, mime type, charset) of a status-200 HTTP response record, else None."""
    if rec.rec_type != "response" or rec.http_headers is None or rec.http_headers.get_statuscode() != "200":
        return None
    url = (rec.rec_headers.get_header("WARC-Target-URI") or "").strip().strip("<>")
    mime, _, params = (rec.http_headers.get_header("Content-Type") or "").partition(";")
    charset = next((v.strip(" \"'") for k, _, v in (p.partition("=") for p in params.split(";"))
                    if k.strip().lower() == "charset"), None)
    return (canonical_url(url), mime.strip().lower(), charset) if url else None


def _image_offsets(path: Path) -> dict[str, int]:
    """First pass: URL -> offset of the first 200 `image/*` response record for it."""
    offsets: dict[str, int] = {}
    with path.open("rb") as fh:
        for it, rec in _records(fh, path):
            if (r := _response(rec)) and r[1].startswith("image/"):
                offsets.setdefault(r[0], it.get_record_offset())
    return offsets


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
    """The whole archive (one shard: its pages' images may lie anywhere in it). Status-200 HTML responses in archive order (`revisit` and other records ignored); a URL
    captured twice keeps its first capture. doc_id from the target URL. A page over
    `policy.max_document_bytes` is skipped, an image over `policy.max_item_bytes` is `too_large`."""
    path = Path(path)
    offsets = _image_offsets(path)
    name, seen = base_name(path), Seen(path)
    with path.open("rb") as fh, path.open("rb") as images:
        for _, rec in _records(fh, path):
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
