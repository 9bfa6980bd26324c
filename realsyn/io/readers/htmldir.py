"""A folder of `.html` / `.htm` / `.xhtml` files: one document per file, images read from the folder."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

from realsyn.io.documents import Document
from realsyn.io.readers.base import base_name, doc_id, folder_lookup, read_file, resolve_relative, skip
from realsyn.io.readers.html import html_to_items

HTML_SUFFIXES = (".html", ".htm", ".xhtml")


def _html_files(root: Path) -> Iterator[Path]:
    return (p for p in root.rglob("*") if p.suffix.lower() in HTML_SUFFIXES and p.is_file())


def has_html(root: Path) -> bool:
    """True if the folder holds at least one HTML file (at any depth)."""
    return any(True for _ in _html_files(root))


def read(path: Path) -> Iterator[Document]:
    """Files in sorted relative-path order; `source` is the posix path relative to the folder.
    Image paths resolve relative to each file (`/x.png` to the folder root) and never leave the
    folder; http(s) images are url-only."""
    root = Path(path)
    name, lookup = base_name(root), folder_lookup(root)
    for rel in sorted(p.relative_to(root).as_posix() for p in _html_files(root)):
        try:
            data = read_file(root / rel, root)
        except OSError as exc:
            skip("unreadable_document", "skipping unreadable %s: %s", root / rel, exc)
            continue
        title, items = html_to_items(data, partial(resolve_relative, base=rel, lookup=lookup))
        yield Document(doc_id(name, rel), rel, items, title)
