"""OBELICS-style `.parquet`: parallel `texts` / `images` lists (one of the two null at each position)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq

from realsyn.errors import InputError
from realsyn.io.arrow import TOO_LARGE, largest_page, to_records
from realsyn.io.documents import Document, Item
from realsyn.io.policy import DEFAULT, ReadPolicy
from realsyn.io.readers.base import (
    WHOLE,
    Seen,
    Shard,
    base_name,
    by_size,
    data_uri_item,
    doc_id,
    file_item,
    is_remote,
    log,
    norm,
    skip,
    text_item,
    within_budget,
)

COLUMNS = ("texts", "images", "url", "metadata", "general_metadata")
BATCH_ROWS = 16  # rows may carry image bytes: keep batches small


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def image_item(value: Any, folder: Path, policy: ReadPolicy = DEFAULT) -> Item | None:
    """An image entry -> item: http(s) URL (url only), `data:` URI, local path (absolute, relative
    to `folder`, `file://` or percent-encoded), raw bytes (empty ones too), or an HF datasets
    `{bytes, path}` struct. A local path is read only if its real path lies inside `folder` or
    `policy.roots` (else `outside_input`; `missing` if absent, `not_a_file` for a device)."""
    if value is TOO_LARGE:
        return Item("image", error="too_large")
    if isinstance(value, (bytes, bytearray)):
        return Item("image", data=bytes(value))  # b"" too: the extract stage rejects it as `empty`
    if isinstance(value, dict):
        data = value.get("bytes")
        return image_item(data if data is not None else value.get("path"), folder, policy)
    if not isinstance(value, str):
        if value is not None:
            log.warning("unsupported image entry of type %s", type(value).__name__)
        return None
    src = value.strip()
    if not src:
        return None
    if is_remote(src):
        return Item("image", url=src)
    if src[:5].lower() == "data:":
        return data_uri_item(src)
    if src[:7].lower() == "file://":
        url = urlsplit(src)
        src = unquote(url.path if url.netloc.lower() in ("", "localhost") else url.netloc + url.path)
        if not src:
            return Item("image", error="missing")
    item = Item("image", error="missing")
    for cand in dict.fromkeys((src, unquote(src))):
        item = file_item(folder / cand, folder, policy)  # an absolute `cand` replaces `folder`
        if item.error != "missing":
            item.path = cand if item.data is not None else None
            break
    return item


def _locator(rec: dict, row: int) -> str:
    general = _json(rec.get("general_metadata"))
    for url in (rec.get("url"), general.get("url") if isinstance(general, dict) else None):
        if isinstance(url, str) and url:
            return url
    return f"row {row}"


def _items(rec: dict, folder: Path, policy: ReadPolicy) -> list[Item]:
    """Items by position: the text if there is one, then the image if there is one."""
    texts, images = rec.get("texts") or [], rec.get("images") or []
    meta = _json(rec.get("metadata"))
    meta = meta if isinstance(meta, list) else []
    items: list[Item] = []
    for i in range(max(len(texts), len(images))):
        text = texts[i] if i < len(texts) else None
        if isinstance(text, str) and (t := text_item(text)) is not None:
            items.append(t)
        image = image_item(images[i], folder, policy) if i < len(images) else None
        if image is not None:
            if i < len(meta) and isinstance(meta[i], dict):
                image.alt = norm(meta[i].get("alt_text")) or None
            items.append(image)
    return items


def _check_schema(pf: pq.ParquetFile, path: Path) -> list[str]:
    """The columns to read; InputError unless `texts` and `images` are list columns."""
    schema = pf.schema_arrow
    for col in ("texts", "images"):
        if col not in schema.names:
            raise InputError(f"{path}: not an OBELICS-style parquet (needs list columns 'texts' and 'images')")
        t = schema.field(col).type
        if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
            raise InputError(f"{path}: not an OBELICS-style parquet (column '{col}' is {t}, needs a list)")
    return [c for c in COLUMNS if c in schema.names]


def _byte_leaves(pf: pq.ParquetFile, columns: list[str]) -> list[str]:
    """Paths of the string/binary leaves of `columns`, read as dictionaries so that a value
    repeated in many cells is held (and converted) once."""
    return [c.path for c in (pf.schema.column(i) for i in range(len(pf.schema)))
            if c.physical_type == "BYTE_ARRAY" and c.path.split(".")[0] in columns]


def _open(path: Path) -> tuple[pq.ParquetFile, list[str]]:
    """The file (string leaves read as dictionaries) and the columns to read; InputError if it is not OBELICS-style."""
    try:
        pf = pq.ParquetFile(path)
        columns = _check_schema(pf, path)
        return pq.ParquetFile(path, read_dictionary=_byte_leaves(pf, columns)), columns
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"cannot read parquet file {path}: {exc}") from exc


def plan(path: Path, policy: ReadPolicy, target: int, docs: int) -> Iterator[Shard]:
    """Row ranges of about `target` uncompressed bytes: whole row groups, or slices of a large one."""
    meta = _open(path)[0].metadata
    row = 0
    groups = [meta.row_group(g) for g in range(meta.num_row_groups)]
    for a, b in by_size([g.total_byte_size for g in groups], target):
        rows = sum(g.num_rows for g in groups[a:b])
        k = max(1, min(rows, -(-sum(g.total_byte_size for g in groups[a:b]) // target)))
        for j in range(k):
            yield Shard(path, "obelics", row + rows * j // k, row + rows * (j + 1) // k)
        row += rows


def read(path: Path, policy: ReadPolicy = DEFAULT, shard: Shard = WHOLE) -> Iterator[Document]:
    """Rows in file order (those of the shard's row range), streamed in small batches. doc_id from
    the `url` column, else `general_metadata.url`, else the row number; a repeated url is skipped
    (within the range: extract drops repeats across ranges). A cell over `policy.max_item_bytes`
    is never converted (an image gets `too_large`, a text drops the document as
    `oversized_document`), and nor is a document whose text exceeds `policy.max_document_bytes`."""
    path = Path(path)
    pf, columns = _open(path)
    name, seen, row = base_name(path), Seen(path), 0
    stop = pf.metadata.num_rows if shard.stop is None else shard.stop
    try:
        with path.open("rb") as fh:
            for g in range(pf.metadata.num_row_groups):
                meta = pf.metadata.row_group(g)
                if row + meta.num_rows <= shard.start or row >= stop:
                    row += meta.num_rows
                    continue
                if not 0 <= largest_page(fh, meta) <= 2 * policy.max_item_bytes:
                    mine = range(max(row, shard.start), min(row + meta.num_rows, stop))
                    for r in mine:
                        skip("oversized_row_group", "%s row %d: skipping, its row group has a page that inflates "
                             "beyond 2 x extract.max_item_mib (or an unreadable page header)", path, r, level=logging.DEBUG)
                    log.warning("%s: skipped %d rows of row group %d: a page inflates beyond the cap", path, len(mine), g)
                    row += meta.num_rows
                    continue
                for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=columns, row_groups=[g]):
                    if row >= stop:
                        break
                    if row + batch.num_rows <= shard.start:
                        row += batch.num_rows
                        continue
                    for rec in to_records(batch, policy.max_item_bytes):
                        row += 1
                        if shard.start < row <= stop and (doc := _document(rec, row - 1, name, seen, path, policy)) is not None:
                            yield doc
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"cannot read parquet file {path} (row {row}): {exc}") from exc


def _document(rec: dict, row: int, name: str, seen: Seen, path: Path, policy: ReadPolicy) -> Document | None:
    locator = _locator(rec, row)
    did = doc_id(name, locator)
    if not seen.first(did, locator):
        return None
    items = _items(rec, path.parent, policy) if TOO_LARGE not in (rec.get("texts") or ()) else None
    if items is None or not within_budget(items, policy):
        skip("oversized_document", "%s row %d: skipping, text over the byte caps (extract.max_*_mib)", path, row)
        return None
    return Document(did, locator, items)
