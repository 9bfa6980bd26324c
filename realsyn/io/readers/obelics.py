"""OBELICS-style `.parquet`: parallel `texts` / `images` lists (one of the two null at each position)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq

from realsyn.io.documents import Document, Item
from realsyn.io.readers import InputError
from realsyn.io.readers.base import Seen, base_name, data_uri_item, doc_id, file_item, is_remote, log, norm, text_item

COLUMNS = ("texts", "images", "url", "metadata", "general_metadata")
BATCH_ROWS = 16  # rows may carry image bytes: keep batches small


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def image_item(value: Any, folder: Path) -> Item | None:
    """An image entry -> item: http(s) URL (url only), `data:` URI, local path (absolute or relative
    to `folder`; `error='missing'` if absent, `not_a_file` for a device such as /dev/zero), raw
    bytes (empty ones too), or an HF datasets `{bytes, path}` struct."""
    if isinstance(value, (bytes, bytearray)):
        return Item("image", data=bytes(value))  # b"" too: the extract stage rejects it as `empty`
    if isinstance(value, dict):
        data = value.get("bytes")
        return image_item(data if data is not None else value.get("path"), folder)
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
        src = unquote(urlsplit(src).path)
    return file_item(folder / src)  # an absolute `src` replaces `folder`


def _locator(rec: dict, row: int) -> str:
    general = _json(rec.get("general_metadata"))
    for url in (rec.get("url"), general.get("url") if isinstance(general, dict) else None):
        if isinstance(url, str) and url:
            return url
    return f"row {row}"


def _items(rec: dict, folder: Path) -> list[Item]:
    """Items by position: the text if there is one, then the image if there is one."""
    texts, images = rec.get("texts") or [], rec.get("images") or []
    meta = _json(rec.get("metadata"))
    meta = meta if isinstance(meta, list) else []
    items: list[Item] = []
    for i in range(max(len(texts), len(images))):
        text = texts[i] if i < len(texts) else None
        if isinstance(text, str) and (t := text_item(text)) is not None:
            items.append(t)
        image = image_item(images[i], folder) if i < len(images) else None
        if image is not None:
            if i < len(meta) and isinstance(meta[i], dict):
                image.alt = norm(meta[i].get("alt_text")) or None
            items.append(image)
    return items


def read(path: Path) -> Iterator[Document]:
    """Rows in file order, streamed in small batches. doc_id from the `url` column, else
    `general_metadata.url`, else the row number; a repeated url is skipped."""
    path = Path(path)
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"cannot read parquet file {path}: {exc}") from exc
    names = set(pf.schema_arrow.names)
    if not {"texts", "images"} <= names:
        raise InputError(f"{path}: not an OBELICS-style parquet (needs list columns 'texts' and 'images')")
    name, seen, row = base_name(path), Seen(path), 0
    try:
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=[c for c in COLUMNS if c in names]):
            for rec in batch.to_pylist():
                locator = _locator(rec, row)
                row += 1
                did = doc_id(name, locator)
                if seen.first(did, locator):
                    yield Document(did, locator, _items(rec, path.parent))
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"cannot read parquet file {path} (row {row}): {exc}") from exc
