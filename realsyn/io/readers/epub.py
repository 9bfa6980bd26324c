"""EPUB books (`.epub` zip or unpacked folder): one document per spine item (chapter), in order.

A chapter, not the book, is the document: "same document" in retrieval then means the text around
an image, not anything in a 300-page book."""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from urllib.parse import unquote, urlsplit

from lxml import etree

from realsyn.errors import InputError
from realsyn.io.documents import Document
from realsyn.io.policy import DEFAULT, ReadPolicy
from realsyn.io.readers.base import (
    WHOLE,
    FileRefused,
    Lookup,
    Shard,
    base_name,
    by_size,
    doc_id,
    folder_lookup,
    local_path,
    memo,
    norm,
    resolve_relative,
    skip,
)
from realsyn.io.readers.html import page_items

CONTAINER = "META-INF/container.xml"
CONTENT_TYPES = ("application/xhtml+xml", "text/html")


def _xml(data: bytes | None, what: str, path: Path) -> etree._Element:
    if data is None:
        raise InputError(f"cannot read EPUB {path}: {what} not found")
    try:
        return etree.fromstring(data, etree.XMLParser(resolve_entities=False, no_network=True))
    except etree.XMLSyntaxError as exc:
        raise InputError(f"cannot read EPUB {path}: bad {what} ({exc})") from exc


def _package(path: Path, lookup: Lookup) -> tuple[str, etree._Element]:
    """(OPF path, OPF root) of the first rootfile named in the container."""
    container = _xml(lookup(CONTAINER), CONTAINER, path)
    rootfile = next((r.get("full-path") for r in container.iter("{*}rootfile") if r.get("full-path")), None)
    opf_path = local_path(unquote(rootfile or ""), "") if rootfile else None
    if not opf_path:
        raise InputError(f"cannot read EPUB {path}: no rootfile in {CONTAINER}")
    return opf_path, _xml(lookup(opf_path), opf_path, path)


def _spine(opf_path: str, opf: etree._Element) -> list[str]:
    """Paths of the XHTML spine documents, in reading order (one listed twice is read once)."""
    manifest = {i.get("id"): i for i in opf.iterfind("{*}manifest/{*}item")}
    paths = []
    for ref in opf.iterfind("{*}spine/{*}itemref"):
        item = manifest.get(ref.get("idref"))
        if item is None or (item.get("media-type") or "").strip().lower() not in CONTENT_TYPES:
            continue
        if p := local_path(unquote(urlsplit(item.get("href") or "").path), opf_path):
            paths.append(p)
    return list(dict.fromkeys(paths))


def _book(path: Path, name: str, lookup: Lookup, policy: ReadPolicy, shard: Shard) -> Iterator[Document]:
    """One document per spine item (a chapter) of the shard's range, in reading order; spine items
    without text or images are passed over. The book's title is every chapter's title."""
    lookup = memo(lookup)  # an image (or page) referenced many times is read once
    opf_path, opf = _package(path, lookup)
    title = norm(opf.findtext("{*}metadata/{http://purl.org/dc/elements/1.1/}title")) or None
    for doc_path in _spine(opf_path, opf)[shard.start:shard.stop]:
        try:
            data = lookup(doc_path)
        except (OSError, zipfile.BadZipFile, ValueError, RuntimeError) as exc:
            reason = "oversized_document" if getattr(exc, "reason", "") == "too_large" else "unreadable_document"
            skip(reason, "%s: cannot read %s (%s)", path, doc_path, exc)
            continue
        if data is None:
            skip("missing_document", "%s: spine document %s not found", path, doc_path)
            continue
        page = page_items(data, partial(resolve_relative, base=doc_path, lookup=lookup), policy, where=f"{path}:{doc_path}")
        if page is not None and page[1]:
            yield Document(doc_id(name, doc_path), doc_path, page[1], title or page[0])


def _name(path: Path) -> str:
    """The book's name in doc_ids, without `.epub`: a zipped book and its unpacked folder give identical documents."""
    name = base_name(path)
    return name[:-5] if name.lower().endswith(".epub") else name


def _open(path: Path, policy: ReadPolicy) -> tuple[zipfile.ZipFile | None, Lookup, Callable[[str], int]]:
    """(the zip or None for a folder, a lookup of its members, the size of a member: 0 if absent)."""
    if path.is_dir():
        return None, folder_lookup(path, policy), lambda m: (path / m).stat().st_size if (path / m).is_file() else 0
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"cannot open EPUB {path}: {exc}") from exc
    names = set(zf.namelist())
    return (zf, partial(_zip_member, zf, names, path, policy.max_item_bytes),
            lambda m: zf.getinfo(m).file_size if m in names else 0)


def plan(path: Path, policy: ReadPolicy, target: int, docs: int) -> Iterator[Shard]:
    """Spine ranges of about `target` bytes of chapter files (from the package document and the
    zip directory or file sizes)."""
    zf, lookup, size = _open(path, policy)
    try:
        opf_path, opf = _package(path, lookup)
        spans = list(by_size([size(p) for p in _spine(opf_path, opf)], target))
    finally:
        if zf is not None:
            zf.close()
    for a, b in spans:
        yield Shard(path, "epub", a, b)


def read(path: Path, policy: ReadPolicy = DEFAULT, shard: Shard = WHOLE) -> Iterator[Document]:
    """The book's chapters (of the shard's spine range) as Documents (source = the spine item's path)."""
    path = Path(path)
    zf, lookup, _ = _open(path, policy)
    try:
        yield from _book(path, _name(path), lookup, policy, shard)
    finally:
        if zf is not None:
            zf.close()


def _zip_member(zf: zipfile.ZipFile, names: set[str], path: Path, cap: int, member: str) -> bytes | None:
    """A member's bytes, None when absent; one that inflates beyond `cap` bytes is refused
    (checked on the declared size, and on the bytes inflated, which never exceed it)."""
    if member not in names:
        return None
    if zf.getinfo(member).file_size > cap:
        raise FileRefused("too_large", path / member)
    with zf.open(member) as fh:
        data = fh.read(cap + 1)
    if len(data) > cap:
        raise FileRefused("too_large", path / member)
    return data
