"""EPUB books (`.epub` zip or unpacked folder): one document per book, spine documents in order."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from urllib.parse import unquote, urlsplit

from lxml import etree

from realsyn.io.documents import Document, Item
from realsyn.io.readers import InputError
from realsyn.io.readers.base import (MAX_FILE_BYTES, FileRefused, Lookup, base_name, doc_id, folder_lookup, local_path,
                                     norm, resolve_relative, skip)
from realsyn.io.readers.html import html_to_items

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
    """Paths of the XHTML spine documents, in reading order."""
    manifest = {i.get("id"): i for i in opf.iterfind("{*}manifest/{*}item")}
    paths = []
    for ref in opf.iterfind("{*}spine/{*}itemref"):
        item = manifest.get(ref.get("idref"))
        if item is None or (item.get("media-type") or "").strip().lower() not in CONTENT_TYPES:
            continue
        if p := local_path(unquote(urlsplit(item.get("href") or "").path), opf_path):
            paths.append(p)
    return paths


def _book(path: Path, name: str, lookup: Lookup) -> Document:
    opf_path, opf = _package(path, lookup)
    title = norm(opf.findtext("{*}metadata/{http://purl.org/dc/elements/1.1/}title")) or None
    items: list[Item] = []
    for doc_path in _spine(opf_path, opf):
        try:
            data = lookup(doc_path)
        except (OSError, zipfile.BadZipFile, ValueError, RuntimeError) as exc:
            skip("unreadable_document", "%s: cannot read %s (%s)", path, doc_path, exc)
            continue
        if data is None:
            skip("missing_document", "%s: spine document %s not found", path, doc_path)
            continue
        page_title, page_items = html_to_items(data, partial(resolve_relative, base=doc_path, lookup=lookup))
        title = title or page_title
        items.extend(page_items)
    return Document(doc_id(name, opf_path), opf_path, items, title)


def read(path: Path) -> Iterator[Document]:
    """The book as one Document (source = the OPF path). Its doc_id uses the name without `.epub`,
    so a zipped book and its unpacked folder give identical documents."""
    path = Path(path)
    name = base_name(path)
    name = name[:-5] if name.lower().endswith(".epub") else name
    if path.is_dir():
        yield _book(path, name, folder_lookup(path))
        return
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"cannot open EPUB {path}: {exc}") from exc
    with zf:
        names = set(zf.namelist())
        yield _book(path, name, partial(_zip_member, zf, names, path))


def _zip_member(zf: zipfile.ZipFile, names: set[str], path: Path, member: str) -> bytes | None:
    """A member's bytes, None when absent; one that inflates beyond MAX_FILE_BYTES is refused."""
    if member not in names:
        return None
    if zf.getinfo(member).file_size > MAX_FILE_BYTES:
        raise FileRefused("too_large", path / member)
    return zf.read(member)
