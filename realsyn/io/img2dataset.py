"""img2dataset output as an image source: the URL-only images of OBELICS and MMC4 documents taken
from the shards their users already downloaded, bytes as the shard holds them.

img2dataset writes per shard NNNNN a metadata table `NNNNN.parquet` (every URL of the shard with
`url`, `key`, `status` and `error_message`) and `NNNNN_stats.json`, and the images in
`NNNNN.tar` (output format `webdataset`: members `KEY.jpg`), in a `jpg` column of
`NNNNN.parquet` itself (`parquet`) or as files `NNNNN/KEY.jpg` (`files`).

The index, `WORK/sources/ID/` (ID hashes the folders and their files' names, sizes and times), is
built once by executor tasks:
1. a task per shard reads its metadata (and the tar's member headers) and writes its URLs bucketed
   by the top bits of a 128-bit hash of the canonical URL (`buckets.write_sorted`), each with
   where its bytes are (shard, offset, size) or its error message (`s-NNNNN.json` per shard);
2. a task per bucket sorts its URLs by hash into `b-TTTTT.keys.npy` (the high 64 bits) and
   `b-TTTTT.recs.npy` (the low 64 bits, shard, offset, size, error), a URL found in several shards
   kept once (its first success, else its first record).
A lookup memory-maps the bucket files of the URLs asked for (a binary search each) and reads the
bytes from the shards. Memory: a task holds one shard's metadata or one bucket (about 4M URLs of
40 bytes); a lookup holds the bytes it returns.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow.parquet as pq

from realsyn.buckets import done, gather, load, local, save, top_bits, write_sorted
from realsyn.errors import InputError
from realsyn.io.documents import Document
from realsyn.io.readers.base import canonical_url
from realsyn.runtime.executor import Executor
from realsyn.runtime.workspace import fingerprint, write_json

ROWS_PER_BUCKET = 1 << 22
SHARD = re.compile(r"^\d+\.parquet$")
RECORD = np.dtype([("lo", "<i8"), ("source", "<i4"), ("offset", "<i8"), ("size", "<i8"), ("error", "<i4")])
NOT_AN_IMAGE = (".txt", ".json")


def url_hash(urls: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """(high, low) 64 bits of a 128-bit hash of each canonical URL, as int64."""
    digests = b"".join(hashlib.blake2b(canonical_url(u).encode(), digest_size=16).digest() for u in urls)
    both = np.frombuffer(digests, dtype=">u8").astype(np.uint64).view(np.int64).reshape(-1, 2)
    return both[:, 0].copy(), both[:, 1].copy()


def shards(folders: list[Path]) -> list[Path]:
    """The metadata tables (`NNNNN.parquet`) of img2dataset output folders, in folder then shard order."""
    found = []
    for folder in folders:
        mine = sorted(p for p in _folder(folder).iterdir() if SHARD.match(p.name))
        if not mine:
            raise InputError(f"image source {folder}: no img2dataset shard (NNNNN.parquet) in it")
        found += mine
    return found


def index_id(folders: list[Path]) -> str:
    """What keys the index: each folder's top-level files (shard tables, tars, stats) by name, size
    and time; a `files`-format shard's images are not visited (there may be hundreds of millions)."""
    return fingerprint([p for f in folders for p in sorted(_folder(f).iterdir()) if p.is_file()])


def _folder(path: Path) -> Path:
    if not Path(path).is_dir():
        raise InputError(f"image source {path}: not a folder (extract.images.sources: img2dataset output folders)")
    return Path(path)


@dataclass(frozen=True)
class ShardTask:
    index: int
    path: Path  # the shard's metadata table
    out: Path
    bits: int


def _where(path: Path, keys: list[str], columns: list[str]) -> tuple[str, dict[str, tuple[int, int]], list[str]]:
    """The shard's format, (offset, size) of each key with bytes (tar member data; parquet row;
    index in the file list), and the file list (`files` format)."""
    tar, folder = path.with_suffix(".tar"), path.with_suffix("")
    if tar.is_file():
        with tarfile.open(tar) as tf:
            return "webdataset", {m.name.rsplit(".", 1)[0]: (m.offset_data, m.size) for m in tf
                                  if m.isfile() and not m.name.endswith(NOT_AN_IMAGE)}, []
    if "jpg" in columns:
        return "parquet", {k: (row, -1) for row, k in enumerate(keys)}, []
    if folder.is_dir():
        files = sorted(p.name for p in folder.iterdir() if not p.name.endswith(NOT_AN_IMAGE))
        return "files", {n.rsplit(".", 1)[0]: (i, -1) for i, n in enumerate(files)}, files
    raise InputError(f"image source {path}: no {tar.name}, no jpg column, no {folder.name}/ folder (img2dataset "
                     "output format webdataset, parquet or files)")


def index_shard(task: ShardTask) -> int:
    """Step 1 for one shard: its URLs bucketed, and `s-NNNNN.json` (format, files, error messages)."""
    pf = pq.ParquetFile(task.path)
    columns = pf.schema_arrow.names
    if "url" not in columns or "key" not in columns:
        raise InputError(f"image source {task.path}: not img2dataset metadata (needs columns url and key)")
    t = pf.read(columns=[c for c in ("url", "key", "status", "error_message") if c in columns])
    urls, keys = t.column("url").to_pylist(), t.column("key").to_pylist()
    status = t.column("status").to_pylist() if "status" in columns else ["success"] * len(urls)
    messages = t.column("error_message").to_pylist() if "error_message" in columns else [None] * len(urls)
    fmt, where, files = _where(task.path, keys, columns)
    errors: dict[str, int] = {}
    rows = [(u, *where[k], -1) if s == "success" and k in where else
            (u, 0, 0, errors.setdefault(m or s or "failed", len(errors)))
            for u, k, s, m in zip(urls, keys, status, messages) if isinstance(u, str) and u]
    write_json({"shard": str(task.path), "format": fmt, "files": files, "errors": list(errors)},
               task.out / f"s-{task.index:05d}.json")
    hi, lo = url_hash(r[0] for r in rows)
    arr = np.array([r[1:] for r in rows], dtype=np.int64).reshape(-1, 3)
    write_sorted(task.out / f"p-{task.index:05d}", hi, lo, top_bits(hi, task.bits), np.arange((1 << task.bits) + 1),
                 source=np.full(len(hi), task.index, np.int32), offset=arr[:, 0], size=arr[:, 1],
                 error=arr[:, 2].astype(np.int32))
    return len(rows)


@dataclass(frozen=True)
class BucketTask:
    index: int
    out: Path
    shards: int
    bits: int


def index_bucket(task: BucketTask) -> int:
    """Step 2 for one bucket: its URLs sorted by hash, each once."""
    prefixes = [task.out / f"p-{i:05d}" for i in range(task.shards)]
    hi, lo, _, extra = gather(prefixes, np.arange((1 << task.bits) + 1), task.index, ("source", "offset", "size", "error"))
    order = np.lexsort((np.arange(len(hi)), extra["error"] >= 0, lo, hi))  # per URL: successes first, then shard order
    hi, lo = hi[order], lo[order]
    first = np.r_[True, (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])] if len(hi) else np.zeros(0, bool)
    recs = np.zeros(int(first.sum()), RECORD)
    recs["lo"] = lo[first]
    for name in ("source", "offset", "size", "error"):
        recs[name] = extra[name][order][first]
    save(recs, task.out / f"b-{task.index:05d}.recs.npy")
    save(hi[first], task.out / f"b-{task.index:05d}.keys.npy")
    return len(recs)


def build(executor: Executor, folders: list[Path], root: Path) -> Path:
    """The index of `folders` under `root` (WORK/sources), built by tasks unless done."""
    out = root / index_id(folders)
    if (out / "index.json").exists():
        return out
    found = shards(folders)
    total = sum(pq.read_metadata(p).num_rows for p in found)
    bits = int(np.ceil(np.log2(max(1, total / ROWS_PER_BUCKET))))
    executor.run(index_shard, [ShardTask(i, p, out, bits) for i, p in enumerate(found) if not done(out / f"p-{i:05d}")],
           "extract: index image sources", "shards")
    executor.run(index_bucket, [BucketTask(t, out, len(found), bits) for t in range(1 << bits)
                                if not (out / f"b-{t:05d}.keys.npy").exists()], "extract: index image sources: buckets", "buckets")
    for p in out.glob("p-*.npy"):
        p.unlink()
    write_json({"bits": bits, "shards": len(found), "urls": total, "folders": [str(f) for f in folders]}, out / "index.json")
    return out


@dataclass
class Found:
    """A URL img2dataset fetched (`data`) or recorded as failed (`error`: its error_message)."""

    data: bytes | None = None
    error: str | None = None


class Index:
    """Lookups in a built index (files opened per lookup; with a URL workspace on a Ray cluster,
    fetched from the store where another node built them). The shards themselves must be
    readable at the same path on every node."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.bits = json.loads(local(self.root / "index.json").read_text())["bits"]
        self._shards: dict[int, dict] = {}

    def _shard(self, i: int) -> dict:
        if i not in self._shards:
            self._shards[i] = json.loads(local(self.root / f"s-{i:05d}.json").read_text())
        return self._shards[i]

    def find(self, urls: list[str]) -> dict[str, Found]:
        """The URLs of `urls` the index holds."""
        if not urls:
            return {}
        hi, lo = url_hash(urls)
        bucket = top_bits(hi, self.bits)
        hits: list[tuple[str, np.void]] = []
        for b in np.unique(bucket):
            keys = load(self.root / f"b-{b:05d}.keys.npy")
            recs = load(self.root / f"b-{b:05d}.recs.npy")
            for j in np.flatnonzero(bucket == b):
                k = int(np.searchsorted(keys, hi[j]))
                while k < len(keys) and keys[k] == hi[j] and recs[k]["lo"] != lo[j]:
                    k += 1
                if k < len(keys) and keys[k] == hi[j]:
                    hits.append((urls[j], recs[k]))
        return {u: self._found(r) for u, r in hits}

    def _found(self, rec: np.void) -> Found:
        shard = self._shard(int(rec["source"]))
        if int(rec["error"]) >= 0:
            return Found(error=shard["errors"][int(rec["error"])])
        path, offset = Path(shard["shard"]), int(rec["offset"])
        if shard["format"] == "webdataset":
            with open(path.with_suffix(".tar"), "rb") as fh:
                fh.seek(offset)
                return Found(data=fh.read(int(rec["size"])))
        if shard["format"] == "files":
            return Found(data=(path.with_suffix("") / shard["files"][offset]).read_bytes())
        return Found(data=_parquet_cell(path, offset))


def _parquet_cell(path: Path, row: int) -> bytes | None:
    """The `jpg` cell of one row of a parquet-format shard (its row group read)."""
    pf = pq.ParquetFile(path)
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if row < n:
            return pf.read_row_group(g, columns=["jpg"]).column(0)[row].as_py()
        row -= n
    return None


def fill(docs: list[Document], index: Index) -> None:
    """Give the URL-only images of `docs` the bytes the index holds; a URL img2dataset failed on is
    rejected as `not_downloaded` with its error message as `detail`; one absent is left as it is
    (downloaded when download is on)."""
    items = [i for d in docs for i in d.items if i.kind == "image" and i.data is None and i.url and not i.error]
    found = index.find(list(dict.fromkeys(i.url for i in items if i.url)))
    for item in items:
        if (f := found.get(item.url or "")) is not None:
            item.data, item.error, item.detail = f.data, None if f.data is not None else "not_downloaded", f.error
