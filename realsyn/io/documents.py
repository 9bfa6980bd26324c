"""The one document model every reader yields: ordered text and image items with a stable id."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal


def stable_id(*parts: str, length: int = 16) -> str:
    """A short hex id that depends only on `parts` (same on every machine and run)."""
    h = hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:length]


@dataclass
class Item:
    """One item of a document, in reading order.

    A text item carries `text` (a paragraph or a run of prose, not yet split into sentences).
    An image item carries `data` (the raw bytes) when the image was found inside the input, else
    only `url`; `error` says why bytes are missing when the reader could not get them
    (e.g. `missing` for a reference to a file that is not in the archive).
    `alt` and `caption` are the image's alt text and figure caption, when the source has them.
    A text item with `role='caption'` was marked up as a caption (a `p.caption`, a "Fig. 3." line)
    that no image claimed.
    """

    kind: Literal["text", "image"]
    text: str | None = None
    data: bytes | None = None
    url: str | None = None
    alt: str | None = None
    caption: str | None = None
    error: str | None = None
    role: str | None = None
    path: str | None = None
    """Where a local image was found: its path inside the input (archive member, file)."""
    detail: str | None = None
    """More about `error` where a source gave it (img2dataset's `error_message`)."""


@dataclass
class Document:
    """A document: `doc_id` is stable (derived from the input file name and the locator inside it),
    `source` is the locator (URL, archive path or file path) kept for provenance."""

    doc_id: str
    source: str
    items: list[Item] = field(default_factory=list)
    title: str | None = None
