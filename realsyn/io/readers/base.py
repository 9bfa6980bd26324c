"""Helpers shared by the readers: ids, text items, and image items from data URIs, relative paths and files."""

from __future__ import annotations

import base64
import binascii
import logging
import os
import posixpath
import stat
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, unquote_to_bytes, urlsplit

from realsyn.io.documents import Item, stable_id
from realsyn.io.policy import DEFAULT, ReadPolicy

log = logging.getLogger("realsyn.io.readers")

SKIPPED: Counter[str] = Counter()
"""Documents (or the rest of a stream) the readers of this process skipped, by reason; the extract
stage reports the difference over its reading pass in the manifest (`documents_skipped`)."""


@dataclass(frozen=True)
class Shard:
    """A piece of one input that a task opens and reads by itself: planned from metadata alone
    (sizes, counts), it never carries content. `start`/`stop` are in the format's unit (ZIM
    entry, JSONL byte, parquet row, EPUB spine item; None: to the end); an HTML folder's shard
    names its `files`, and a long file is split into `slice` (k, K): the k-th of K runs of its
    chapters, each run read by a task that parses the whole file (a skipped file is counted by
    the slice k = 0 only). A WARC's shard is a byte range of records (`start`, `stop`: record
    offsets) and names the `index` of its archive's image records."""

    path: Path
    format: str
    start: int = 0
    stop: int | None = None
    files: tuple[str, ...] = ()
    slice: tuple[int, int] = (0, 1)
    index: str = ""  # a file the planner wrote for the tasks (a WARC's image offsets), "" if none


WHOLE = Shard(Path(), "")
"""The whole input (a reader given no shard reads everything)."""


def by_size(sizes: list[int], target: int) -> Iterator[tuple[int, int]]:
    """Consecutive runs [a, b) of units whose sizes add up to about `target` bytes (at least one unit each)."""
    a, total = 0, 0
    for i, size in enumerate(sizes):
        total += size
        if total >= target:
            yield a, i + 1
            a, total = i + 1, 0
    if a < len(sizes) or not sizes:
        yield a, len(sizes)


def skip(reason: str, message: str, *args: object, level: int = logging.WARNING) -> None:
    """Log a skipped document (or damaged stream tail) and count it under `reason`."""
    log.log(level, message, *args)
    SKIPPED[reason] += 1


Lookup = Callable[[str], "bytes | None"]
"""Bytes of a file given its normalised posix path inside an input (folder, zip, ZIM), None if absent."""
Resolver = Callable[[str], "Item | None"]
"""Image item for an `<img src>` value, None to drop the reference (unsupported scheme, empty src)."""

_READ_ERRORS = (OSError, ValueError, RuntimeError, EOFError, zipfile.BadZipFile, zlib.error)


def norm(text: str | None) -> str:
    """Collapse every run of whitespace (including NBSP) into one space and strip."""
    return " ".join(text.split()) if text else ""


def text_item(text: str | None) -> Item | None:
    """A text item with normalised text, None when nothing is left."""
    t = norm(text)
    return Item("text", text=t) if t else None


def base_name(path: Path) -> str:
    """The input's own name (not its folder), the first part of every doc_id."""
    return Path(os.path.abspath(path)).name


def doc_id(name: str, locator: str) -> str:
    """The document id: a hash of the input's base name and the locator inside it."""
    return stable_id(name, locator)


class Seen:
    """Remembers the doc ids already yielded (as ints, a few dozen bytes each), so that a repeated
    locator (a re-crawled URL, a duplicated line) is skipped and doc ids stay unique."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._ids: set[int] = set()

    def first(self, did: str, locator: str) -> bool:
        key = int(did, 16)
        if key in self._ids:
            skip("repeated_document", "%s: skipping repeated document %s", self._path, locator, level=logging.INFO)
            return False
        self._ids.add(key)
        return True


def is_remote(src: str) -> bool:
    return src[:8].lower().startswith(("http://", "https://"))


_URL_SAFE = "/:@!$&'()*+,;=-._~"


def canonical_url(url: str) -> str:
    """A URL in one spelling for matching: no fragment, lower-case scheme and host, default port
    dropped, the path and query percent-encoded the same way (`%2C` and `,` match)."""
    try:
        parts = urlsplit(url.strip())
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        return url
    scheme = parts.scheme.lower()
    netloc = host if port is None or (scheme, port) in (("http", 80), ("https", 443)) else f"{host}:{port}"
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    path = quote(unquote(parts.path), safe=_URL_SAFE) or "/"
    query = quote(unquote(parts.query), safe=_URL_SAFE + "?")
    return f"{scheme}://{netloc}{path}" + (f"?{query}" if parts.query else "")


def data_uri_item(uri: str) -> Item:
    """Decode a `data:` URI (base64 or percent-encoded) into an image item."""
    head, sep, payload = uri.partition(",")
    try:
        if head.lower().endswith(";base64"):
            b64 = "".join(unquote(payload).split())
            data = base64.b64decode(b64 + "=" * (-len(b64) % 4))
        else:
            data = unquote_to_bytes(payload)
    except (binascii.Error, ValueError):
        data = b""
    return Item("image", data=data) if sep and data else Item("image", error="bad_data_uri")


def local_path(path: str, base: str) -> str | None:
    """Normalised posix path of `path` (relative to the file `base`, or to the root when it starts
    with `/`), None if it leaves the root."""
    joined = path if path.startswith("/") else posixpath.join(posixpath.dirname(base), path)
    p = posixpath.normpath(joined.lstrip("/"))
    return None if p in (".", "..") or p.startswith("../") else p


def resolve_relative(src: str, base: str, lookup: Lookup) -> Item | None:
    """Resolve `src` found in the file at posix path `base` (relative to the input root).

    http(s) and protocol-relative URLs give url-only items; other schemes are dropped; a path
    (relative to `base`, or to the root when it starts with `/`) is read with `lookup`, giving
    `data`, or `error='missing'` when it is absent, `outside_input` when it leaves the root.
    """
    src = src.strip()
    if src.startswith("//"):
        return Item("image", url="https:" + src)
    try:
        parts = urlsplit(src)
    except ValueError:
        return None
    if parts.scheme:
        return Item("image", url=src) if parts.scheme.lower() in ("http", "https") else None
    if not parts.path:
        return None
    cands = list(dict.fromkeys((local_path(unquote(parts.path), base), local_path(parts.path, base))))
    for cand in filter(None, cands):
        try:
            data = lookup(cand)
        except FileRefused as exc:
            return Item("image", error=exc.reason)
        except _READ_ERRORS as exc:
            log.warning("cannot read %s: %s", cand, exc)
            return Item("image", error="unreadable")
        if data is not None:
            return Item("image", data=data, path=cand)
    return Item("image", error="outside_input" if None in cands else "missing")


class FileRefused(OSError):
    """A local file or archive member that is not read: not a regular file, over the byte cap, or
    outside the input. `reason` is the item error (`not_a_file`, `too_large`, `outside_input`)."""

    def __init__(self, reason: str, path: Path | str):
        super().__init__(f"{path}: {reason}")
        self.reason = reason


def read_file(path: Path, root: Path | None = None, policy: ReadPolicy = DEFAULT) -> bytes:
    """The bytes of a regular file of at most `policy.max_item_bytes` (never a device, FIFO or
    socket: `/dev/zero` would never end). With `root`, its real path must lie inside `root` or
    one of `policy.roots` (else `outside_input`)."""
    if root is not None and not policy.inside(path, root):
        raise FileRefused("outside_input", path)
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):
        raise FileRefused("not_a_file", path)
    if st.st_size > policy.max_item_bytes:
        raise FileRefused("too_large", path)
    with path.open("rb") as fh:  # read at most the cap: the file may grow while it is read
        data = fh.read(policy.max_item_bytes + 1)
    if len(data) > policy.max_item_bytes:
        raise FileRefused("too_large", path)
    return data


def folder_lookup(root: Path, policy: ReadPolicy = DEFAULT) -> Lookup:
    """A lookup of files under the folder `root` (their real paths may not leave it)."""
    def lookup(rel: str) -> bytes | None:
        p = root / rel
        return read_file(p, root, policy) if p.is_file() else None
    return lookup


def memo(lookup: Lookup) -> Lookup:
    """`lookup` reading each path once (its bytes, absence or refusal are remembered): a member
    referenced many times costs one read and one copy. Make one per document."""
    done: dict[str, bytes | None | FileRefused] = {}

    def cached(rel: str) -> bytes | None:
        if rel not in done:
            try:
                done[rel] = lookup(rel)
            except FileRefused as exc:
                done[rel] = exc
        value = done[rel]
        if isinstance(value, FileRefused):
            raise value
        return value
    return cached


def skip_links(links: list[Path], wanted: Callable[[Path], bool]) -> None:
    """Count the symbolic links out of an input that a walk passed over (`walk_files`), those
    to a folder or to a file the reader would have read, as `outside_input`."""
    for link in sorted(links):
        if link.is_dir() or wanted(link):
            skip("outside_input", "%s: not following symbolic link out of the input (extract.follow_symlinks)", link)


def file_item(path: Path, root: Path, policy: ReadPolicy = DEFAULT) -> Item:
    """An image item with the bytes of the local file `path`, which must lie inside `root` or one
    of `policy.roots`: `error='missing'` when it does not exist, `outside_input` / `not_a_file` /
    `too_large` when it is refused (see `read_file`), `unreadable` on other errors."""
    try:
        return Item("image", data=read_file(path, root, policy))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return Item("image", error="missing")
    except FileRefused as exc:
        return Item("image", error=exc.reason)
    except OSError as exc:
        log.warning("cannot read %s: %s", path, exc)
        return Item("image", error="unreadable")


def within_budget(items: list[Item], policy: ReadPolicy) -> bool:
    """Whether the document's text fits `policy.max_document_bytes` (characters counted)."""
    return sum(len(i.text) for i in items if i.text) <= policy.max_document_bytes
