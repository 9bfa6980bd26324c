"""A folder of `.html` / `.htm` / `.xhtml` files: one document per file (per chapter for a book, a
page of more than 20,000 characters split at its most frequent heading level), images read from the folder."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

from realsyn.io.documents import Document
from realsyn.io.policy import DEFAULT, ReadPolicy, walk_files
from realsyn.io.readers.base import (
    base_name,
    doc_id,
    folder_lookup,
    memo,
    read_file,
    resolve_relative,
    skip,
    skip_links,
)
from realsyn.io.readers.html import page_items, split_chapters

HTML_SUFFIXES = (".html", ".htm", ".xhtml")


def _html_files(root: Path, policy: ReadPolicy = DEFAULT, links: list[Path] | None = None) -> Iterator[Path]:
    return (p for p in walk_files(root, policy, links) if p.suffix.lower() in HTML_SUFFIXES)


def has_html(root: Path) -> bool:
    """True if the folder holds at least one HTML file (at any depth)."""
    return any(True for _ in _html_files(root))


def read(path: Path, policy: ReadPolicy = DEFAULT) -> Iterator[Document]:
    """Files in sorted relative-path order; `source` is the posix path relative to the folder.
    Image paths resolve relative to each file (`/x.png` to the folder root) and never leave the
    folder (or `policy.roots`); http(s) images are url-only."""
    root = Path(path)
    name, lookup = base_name(root), folder_lookup(root, policy)
    links: list[Path] = []
    for rel in sorted(p.relative_to(root).as_posix() for p in _html_files(root, policy, links)):
        try:
            data = read_file(root / rel, root, policy)
        except OSError as exc:
            reason = getattr(exc, "reason", "unreadable")
            skip({"too_large": "oversized_document", "unreadable": "unreadable_document"}.get(reason, reason),
                 "skipping %s: %s", root / rel, exc)
            continue
        page = page_items(data, partial(resolve_relative, base=rel, lookup=memo(lookup)), policy, where=root / rel,
                          chapters=True)
        if page is None:
            continue
        chapters = split_chapters(page[1])
        if len(chapters) == 1:
            yield Document(doc_id(name, rel), rel, chapters[0], page[0])
            continue
        for k, items in enumerate(chapters):  # a book: one document per chapter
            yield Document(doc_id(name, f"{rel}#{k}"), f"{rel}#{k}", items, page[0])
    skip_links(links, lambda p: p.suffix.lower() in HTML_SUFFIXES)
