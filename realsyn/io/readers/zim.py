"""Kiwix `.zim` archives: one document per HTML article; images are read from the archive."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

from libzim.reader import Archive

from realsyn.io.documents import Document
from realsyn.io.readers import InputError
from realsyn.io.readers.base import base_name, doc_id, resolve_relative, skip
from realsyn.io.readers.html import html_to_items


def _open(path: Path) -> Archive:
    try:
        return Archive(str(path))
    except Exception as exc:  # libzim raises RuntimeError and friends with the reason
        raise InputError(f"cannot open ZIM archive {path}: {exc}") from exc


def read(path: Path) -> Iterator[Document]:
    """Non-redirect `text/html` entries in archive order: `A/...` in old-scheme archives, every
    content (`C`) entry in new-scheme ones. Image paths are resolved relative to the article path."""
    archive = _open(path)
    name, new_scheme = base_name(path), archive.has_new_namespace_scheme

    def lookup(p: str) -> bytes | None:
        try:
            return bytes(archive.get_entry_by_path(p).get_item().content)  # follows redirects
        except KeyError:
            return None

    for i in range(archive.entry_count):  # new scheme: user (C) entries only; old: all entries
        try:
            entry = archive._get_entry_by_id(i)
            if entry.is_redirect or not (new_scheme or entry.path.startswith(("A/", "C/"))):
                continue
            item = entry.get_item()
            if item.mimetype.split(";")[0].strip().lower() != "text/html":
                continue
            content = bytes(item.content)
        except Exception as exc:  # noqa: BLE001 - a damaged cluster (libzim: RuntimeError) spoils its entries only
            skip("unreadable_document", "%s: skipping entry %d, unreadable (%s)", path, i, exc)
            continue
        title, items = html_to_items(content, partial(resolve_relative, base=entry.path, lookup=lookup))
        yield Document(doc_id(name, entry.path), entry.path, items, entry.title or title)
