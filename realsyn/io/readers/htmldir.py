"""A folder of `.html` / `.htm` / `.xhtml` files: one document per file (per chapter for a book, a
page of more than 20,000 characters split at its most frequent heading level), images read from the folder."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

from realsyn.io.documents import Document
from realsyn.io.policy import DEFAULT, ReadPolicy, walk_files
from realsyn.io.readers.base import (
    WHOLE,
    Shard,
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
MAX_SLICES = 16


def _html_files(root: Path, policy: ReadPolicy = DEFAULT, links: list[Path] | None = None) -> Iterator[Path]:
    return (p for p in walk_files(root, policy, links) if p.suffix.lower() in HTML_SUFFIXES)


def has_html(root: Path) -> bool:
    """True if the folder holds at least one HTML file (at any depth)."""
    return any(True for _ in _html_files(root))


def _files(root: Path, policy: ReadPolicy) -> list[str]:
    """The HTML files' posix paths relative to `root`, sorted; symbolic links out of it are counted."""
    links: list[Path] = []
    files = sorted(p.relative_to(root).as_posix() for p in _html_files(root, policy, links))
    skip_links(links, lambda p: p.suffix.lower() in HTML_SUFFIXES)
    return files


def plan(path: Path, policy: ReadPolicy, target: int, docs: int) -> Iterator[Shard]:
    """Runs of files of about `target` bytes and at most `docs` files; a file over `target` bytes
    (a book) alone, in ceil(size / target) slices of its chapters (at most MAX_SLICES: each
    slice's task parses the whole file)."""
    root = Path(path)
    files = _files(root, policy)
    run: list[str] = []
    total = 0
    for f in files:
        size = (root / f).stat().st_size
        if size > target:
            if run:
                yield Shard(root, "htmldir", files=tuple(run))
                run, total = [], 0
            k = min(MAX_SLICES, -(-size // target))
            yield from (Shard(root, "htmldir", files=(f,), slice=(j, k)) for j in range(k))
            continue
        run.append(f)
        total += size
        if total >= target or len(run) == docs:
            yield Shard(root, "htmldir", files=tuple(run))
            run, total = [], 0
    if run or not files:
        yield Shard(root, "htmldir", files=tuple(run))


def read(path: Path, policy: ReadPolicy = DEFAULT, shard: Shard = WHOLE) -> Iterator[Document]:
    """The shard's files (all by default) in sorted relative-path order; `source` is the posix
    path relative to the folder. Image paths resolve relative to each file (`/x.png` to the folder
    root) and never leave the folder (or `policy.roots`); http(s) images are url-only."""
    root = Path(path)
    name, lookup = base_name(root), folder_lookup(root, policy)
    for rel in shard.files or _files(root, policy):
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
        j, k = shard.slice
        for i in (i for i in range(len(chapters)) if i * k // len(chapters) == j):
            locator = rel if len(chapters) == 1 else f"{rel}#{i}"  # a book: one document per chapter
            yield Document(doc_id(name, locator), locator, chapters[i], page[0])
