"""Kiwix `.zim` archives: one document per HTML article; images are read from the archive."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

from libzim.reader import Archive

from realsyn.errors import InputError
from realsyn.io.documents import Document
from realsyn.io.policy import DEFAULT, ReadPolicy
from realsyn.io.readers.base import WHOLE, FileRefused, Shard, base_name, doc_id, memo, resolve_relative, skip
from realsyn.io.readers.html import page_items


def _open(path: Path) -> Archive:
    try:
        return Archive(str(path))
    except Exception as exc:  # libzim raises RuntimeError and friends with the reason
        raise InputError(f"cannot open ZIM archive {path}: {exc}") from exc


def plan(path: Path, policy: ReadPolicy, target: int, docs: int) -> Iterator[Shard]:
    """Entry ranges holding about `docs` articles each (from the header's counts)."""
    archive = _open(path)
    n = archive.entry_count
    step = max(1, docs * n // max(1, archive.article_count))
    for start in range(0, max(n, 1), step):
        yield Shard(path, "zim", start, min(start + step, n))


def read(path: Path, policy: ReadPolicy = DEFAULT, shard: Shard = WHOLE) -> Iterator[Document]:
    """Non-redirect `text/html` entries in archive order (those of the shard's entry range):
    `A/...` in old-scheme archives, every content (`C`) entry in new-scheme ones. Image paths are
    resolved relative to the article path. An entry over `policy.max_item_bytes` is refused
    (`too_large`) before its content is read."""
    archive = _open(path)
    name, new_scheme = base_name(path), archive.has_new_namespace_scheme

    def lookup(p: str) -> bytes | None:
        try:
            item = archive.get_entry_by_path(p).get_item()  # follows redirects
        except KeyError:
            return None
        if item.size > policy.max_item_bytes:
            raise FileRefused("too_large", f"{path}:{p}")
        return bytes(item.content)

    stop = archive.entry_count if shard.stop is None else min(shard.stop, archive.entry_count)
    for i in range(shard.start, stop):  # new scheme: user (C) entries only; old: all entries
        try:
            entry = archive._get_entry_by_id(i)
            if entry.is_redirect or not (new_scheme or entry.path.startswith(("A/", "C/"))):
                continue
            item = entry.get_item()
            if item.mimetype.split(";")[0].strip().lower() != "text/html":
                continue
            if item.size > policy.max_document_bytes:
                skip("oversized_document", "%s: skipping entry %s of %d bytes (extract.max_document_mib)",
                     path, entry.path, item.size)
                continue
            content = bytes(item.content)
        except Exception as exc:  # noqa: BLE001 - a damaged cluster (libzim: RuntimeError) spoils its entries only
            skip("unreadable_document", "%s: skipping entry %d, unreadable (%s)", path, i, exc)
            continue
        page = page_items(content, partial(resolve_relative, base=entry.path, lookup=memo(lookup)), policy,
                          where=f"{path}:{entry.path}")
        if page is not None:
            yield Document(doc_id(name, entry.path), entry.path, page[1], entry.title or page[0])
