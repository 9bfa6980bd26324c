"""extract's global dedup as bucketed executor tasks: no process holds an array of the pool.

Items are numbered in global order (part, then row); in every group of duplicates the first is
kept, as `realsyn.dedup`'s in-memory functions decide (the tests hold the two against each
other). Keys: an image's exact key is its id's first 16 hex digits (the id hashes its bytes), a
sentence's its `text_hash`; an image's perceptual key is its 64-bit pHash. Phases, files under
`extract/_dedup/`, each a set of tasks whose outputs mark them done:

1. keys: per raw part, the kept items' exact keys, written sorted by bucket (the key's top
   bits) with `buckets.write_sorted`;
2. exact: per bucket, each key's first row: pairs (row, first);
3. chunks: per raw image part, each kept image that is not an exact duplicate gets a label per
   pair of chunks of its pHash (t + 2 chunks, t = `phash_distance`): two hashes within t bits
   agree exactly on at least two chunks (pigeonhole), so every near pair shares a label;
4. near: per bucket, the images sharing a chunk value are compared: pairs within t bits;
5. the driver runs union-find over the rows that appear in near pairs, looks up the ids of the
   kept rows the duplicates point to (a task per part), and a task per part writes the final
   table with each duplicate's reason and `dup_of`.

Memory: a task holds one part or one bucket (about ROWS_PER_BUCKET entries of 20 bytes); the
driver holds the duplicate pairs (16 bytes each) and the ids of the kept rows they point to.
Work: with t = 4, 15 labels per image of 20 bits each, so a label is shared by about
n / 2^20 images and each image is compared with about 15 n / 2^20 others (5k at the paper's
336M images).
"""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from realsyn.buckets import done, gather, load, save, top_bits, write_sorted
from realsyn.dedup import chunk_labels, cluster_keep_first, first_occurrence, label_values, near_pairs
from realsyn.runtime.context import Context
from realsyn.runtime.workspace import part_name, write_table

ROWS_PER_BUCKET = 1 << 22  # entries per bucket task (key, row, label: 20 bytes each)
ID_COLUMN = {"images": "image_id", "sentences": "sentence_id"}


def raw(out: Path, table: str, i: int) -> Path:
    return out / "_raw" / table / part_name(i)


def _folder(out: Path, table: str, phase: str) -> Path:
    return out / "_dedup" / table / phase


def _bits(n: int) -> int:
    """Bits of bucket number for `n` entries: buckets of at most ROWS_PER_BUCKET on average."""
    return int(np.ceil(np.log2(max(1, n / ROWS_PER_BUCKET))))


def exact_key(table: pa.Table, kind: str) -> np.ndarray:
    """The exact dedup key of each row (int64)."""
    if kind == "sentences":
        return table.column("text_hash").to_numpy()
    return hex_key(table.column("image_id"))


def hex_key(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """An id's key: its first 16 hex digits (int64); image ids hash the bytes, doc ids the locator."""
    return np.array([int(s[:16], 16) for s in ids.to_pylist()], dtype=np.uint64).view(np.int64)


@dataclass(frozen=True)
class KeysTask:
    index: int  # raw part
    kind: str
    out: Path
    start: int  # global row of the part's first row
    bits: int  # bucket bits


def keys(task: KeysTask) -> int:
    """Phase 1 for one part: its kept rows' exact keys bucketed by their top bits."""
    t = pq.read_table(raw(task.out, task.kind, task.index), columns=["image_id" if task.kind == "images" else "text_hash",
                                                                       "status"])
    kept = pc.equal(t.column("status"), "kept").to_numpy(zero_copy_only=False)
    key = exact_key(t, task.kind)[kept]
    rows = np.flatnonzero(kept) + task.start
    bucket = top_bits(key, task.bits)
    write_sorted(_folder(task.out, task.kind, "keys") / f"p-{task.index:05d}", key, rows, bucket, np.arange((1 << task.bits) + 1))
    return len(key)


@dataclass(frozen=True)
class BucketTask:
    index: int  # bucket
    kind: str
    phase: str  # "keys" (exact) or "chunks" (near)
    out: Path
    parts: int
    bounds: np.ndarray  # label bounds of the buckets
    distance: int = 0  # near: most differing bits


def _pairs_path(out: Path, kind: str, phase: str, t: int) -> Path:
    return _folder(out, kind, f"{phase}-pairs") / f"b-{t:05d}.npy"


def bucket_pairs(task: BucketTask) -> int:
    """Phases 2 and 4 for one bucket: (row, first row) of its exact duplicates, or (row, row)
    of its pHash pairs within `distance` bits."""
    prefixes = [_folder(task.out, task.kind, task.phase) / f"p-{i:05d}" for i in range(task.parts)]
    x, rows, offsets, _ = gather(prefixes, task.bounds, task.index)  # x: exact keys, or pHashes
    if task.phase == "keys":
        first = first_occurrence(x, np.ones(len(x), bool))
        dup = first != np.arange(len(x))
        pairs = np.stack([rows[dup], rows[first[dup]]], axis=1)
    else:
        pairs = near_pairs(x, rows, offsets, task.distance)
    save(pairs.astype(np.int64).reshape(-1, 2), _pairs_path(task.out, task.kind, task.phase, task.index))
    return len(rows)


@dataclass(frozen=True)
class ChunksTask:
    index: int  # raw image part
    out: Path
    start: int
    distance: int
    values: int  # label values per chunk pair
    bounds: np.ndarray  # label bounds of the buckets
    dups: np.ndarray  # global rows of this part that are exact duplicates


def chunks(task: ChunksTask) -> int:
    """Phase 3 for one image part: an entry per (candidate image, pHash chunk), bucketed."""
    t = pq.read_table(raw(task.out, "images", task.index), columns=["phash", "status"])
    kept = pc.equal(t.column("status"), "kept").to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(kept) + task.start
    cand = ~np.isin(rows, task.dups)
    rows, phash = rows[cand], t.column("phash").fill_null(0).to_numpy()[kept][cand]
    labels = chunk_labels(phash, task.distance, task.values)
    n = labels.shape[1]
    write_sorted(_folder(task.out, "images", "chunks") / f"p-{task.index:05d}", np.repeat(phash, n), np.repeat(rows, n),
                 labels.ravel(), task.bounds)
    return len(rows)


def _load_pairs(out: Path, kind: str, phase: str, n: int) -> np.ndarray:
    got = [load(_pairs_path(out, kind, phase, t), mmap=False) for t in range(n)]
    return np.concatenate(got) if got else np.zeros((0, 2), np.int64)


@dataclass(frozen=True)
class IdsTask:
    index: int
    kind: str
    out: Path
    local: np.ndarray  # rows of the part


def ids_of(task: IdsTask) -> tuple[int, list[str]]:
    column = ID_COLUMN[task.kind]
    t = pq.read_table(raw(task.out, task.kind, task.index), columns=[column])
    return task.index, t.column(column).take(pa.array(task.local)).to_pylist()


@dataclass(frozen=True)
class FinalTask:
    index: int
    kind: str
    out: Path
    local: np.ndarray  # duplicate rows of the part
    reasons: tuple[str, ...]
    dup_of: tuple[str, ...]


def finalize(task: FinalTask) -> tuple[int, Counter]:
    """The final table of one part: its duplicates rejected with their reason and `dup_of`."""
    t = pq.read_table(raw(task.out, task.kind, task.index))
    status = np.array(t.column("status").to_pylist(), dtype=object)
    reason = np.array(t.column("reason").to_pylist(), dtype=object)
    dup_of = np.full(len(t), None, dtype=object)
    if len(task.local):
        status[task.local] = "rejected"
        reason[task.local] = list(task.reasons)
        dup_of[task.local] = list(task.dup_of)
    t = t.set_column(t.schema.get_field_index("status"), "status", pa.array(status, pa.string()))
    t = t.set_column(t.schema.get_field_index("reason"), "reason", pa.array(reason, pa.string()))
    t = t.append_column("dup_of", pa.array(dup_of, pa.string()))
    write_table(t, task.out / task.kind / part_name(task.index))
    return task.index, Counter(f"{s}:{r}" if r else s for s, r in zip(status, reason))


def deduplicate(ctx: Context, out: Path, kind: str, n_parts: int, distance: int | None) -> Counter:
    """The whole dedup of one table (`distance`: pHash bits for images' near duplicates, None
    for none); returns the final status counts."""
    starts = np.r_[0, np.cumsum([pq.read_metadata(raw(out, kind, i)).num_rows for i in range(n_parts)])].astype(np.int64)
    bits = _bits(int(starts[-1]))
    ex = ctx.executor
    ex.run(keys, [KeysTask(i, kind, out, int(starts[i]), bits) for i in range(n_parts)
                  if not done(_folder(out, kind, "keys") / f"p-{i:05d}")], f"extract: dedup {kind}: keys", "items")
    buckets = 1 << bits
    ex.run(bucket_pairs, [BucketTask(t, kind, "keys", out, n_parts, np.arange(buckets + 1)) for t in range(buckets)
                          if not _pairs_path(out, kind, "keys", t).exists()], f"extract: dedup {kind}: exact", "items")
    exact = _load_pairs(out, kind, "keys", buckets)
    dup_rows, first = exact[:, 0], exact[:, 1]
    reasons = np.full(len(dup_rows), "duplicate", dtype=object)
    if distance is not None:
        near = _near(ctx, out, starts, np.sort(dup_rows), distance)
        dup_rows, first = np.r_[dup_rows, near[:, 0]], np.r_[first, near[:, 1]]
        reasons = np.r_[reasons, np.full(len(near), "near_duplicate", dtype=object)]
    order = np.argsort(dup_rows, kind="stable")
    dup_rows, first, reasons = dup_rows[order], first[order], reasons[order]
    ids = _ids(ctx, out, kind, starts, first)
    part = np.searchsorted(starts, dup_rows, side="right") - 1
    counts: Counter = Counter()
    tasks = [FinalTask(i, kind, out, dup_rows[part == i] - starts[i], tuple(reasons[part == i]),
                       tuple(ids[j] for j in first[part == i])) for i in range(n_parts)]
    for _, c in ex.map(finalize, tasks):
        counts.update(c)
    shutil.rmtree(out / "_dedup" / kind, ignore_errors=True)
    return counts


@dataclass(frozen=True)
class DocsTask:
    index: int  # raw part
    out: Path
    bits: int


def doc_keys(task: DocsTask) -> int:
    """Per raw part of a byte or row range: its documents' keys, bucketed by their top bits, the part as the row."""
    ids = pc.unique(pa.chunked_array([pq.read_table(raw(task.out, t, task.index), columns=["doc_id"]).column(0).combine_chunks()
                                      for t in ("images", "sentences")], pa.string()))
    key = hex_key(ids)
    bucket = top_bits(key, task.bits)
    write_sorted(_folder(task.out, "docs", "keys") / f"p-{task.index:05d}", key, np.full(len(key), task.index), bucket,
                 np.arange((1 << task.bits) + 1))
    return len(key)


@dataclass(frozen=True)
class RepeatsTask:
    index: int  # bucket
    out: Path
    bits: int


def repeats(task: RepeatsTask) -> int:
    """Per bucket: (part, key) of every document found again in a later part than its first."""
    parts = load(_folder(task.out, "docs", "parts.npy"), mmap=False)
    prefixes = [_folder(task.out, "docs", "keys") / f"p-{i:05d}" for i in parts]
    keys, parts, _, _ = gather(prefixes, np.arange((1 << task.bits) + 1), task.index)
    dup = first_occurrence(keys, np.ones(len(keys), bool)) != np.arange(len(keys))
    save(np.stack([parts[dup], keys[dup]], axis=1).astype(np.int64).reshape(-1, 2), _pairs_path(task.out, "docs", "keys", task.index))
    return len(keys)


@dataclass(frozen=True)
class DropTask:
    index: int  # raw part
    out: Path
    keys: np.ndarray  # documents to drop


def drop(task: DropTask) -> int:
    """Remove the rows of the repeated documents from one raw part (and the bytes only they held)."""
    for table in ("sentences", "images"):
        t = pq.read_table(raw(task.out, table, task.index))
        gone = np.isin(hex_key(t.column("doc_id")), task.keys)
        if gone.any():
            t = t.filter(pa.array(~gone))
            write_table(t, raw(task.out, table, task.index))
    blobs_path = task.out / "blobs" / part_name(task.index)
    blobs = pq.read_table(blobs_path)
    keep = pc.is_in(blobs.column("image_id"), t.column("image_id"))  # t: the images
    if not pc.all(keep).as_py():
        write_table(blobs.filter(keep), blobs_path)
    return len(task.keys)


def repeated_documents(ctx: Context, out: Path, parts: list[int], docs_per_part: int) -> int:
    """Drop documents that a later byte or row range of the same file repeats (`parts`: the parts
    of such ranges; the first occurrence is kept, as a whole-file read keeps it). Returns their
    number."""
    if len(parts) < 2:
        return 0
    bits, folder = _bits(len(parts) * docs_per_part), _folder(out, "docs", "keys")
    save(np.asarray(parts, np.int64), _folder(out, "docs", "parts.npy"))
    ctx.executor.run(doc_keys, [DocsTask(i, out, bits) for i in parts if not done(folder / f"p-{i:05d}")],
                     "extract: repeated documents: keys", "documents")
    ctx.executor.run(repeats, [RepeatsTask(t, out, bits) for t in range(1 << bits)
                               if not _pairs_path(out, "docs", "keys", t).exists()], "extract: repeated documents", "documents")
    found = _load_pairs(out, "docs", "keys", 1 << bits)
    ctx.executor.run(drop, [DropTask(int(i), out, found[found[:, 0] == i, 1]) for i in np.unique(found[:, 0])],
                     "extract: repeated documents: drop", "documents")
    return len(found)


def _near(ctx: Context, out: Path, starts: np.ndarray, dups: np.ndarray, distance: int) -> np.ndarray:
    """(row, first row of its group) of every image in a near-duplicate group but its first."""
    n_parts = len(starts) - 1
    values, m = label_values(int(starts[-1])), distance + 2
    entries = m * (m - 1) // 2 * int(starts[-1])
    bounds = np.unique(np.linspace(0, m * (m - 1) // 2 * values, (1 << _bits(entries)) + 1).astype(np.int64))
    folder = _folder(out, "images", "chunks")
    ctx.executor.run(chunks, [ChunksTask(i, out, int(starts[i]), distance, values, bounds,
                                         dups[(dups >= starts[i]) & (dups < starts[i + 1])])
                              for i in range(n_parts) if not done(folder / f"p-{i:05d}")],
                     "extract: dedup images: pHash chunks", "images")
    n_buckets = len(bounds) - 1
    ctx.executor.run(bucket_pairs, [BucketTask(t, "images", "chunks", out, n_parts, bounds, distance) for t in range(n_buckets)
                                    if not _pairs_path(out, "images", "chunks", t).exists()],
                     "extract: dedup images: near", "entries")
    pairs = np.unique(_load_pairs(out, "images", "chunks", n_buckets), axis=0)
    if not len(pairs):
        return np.zeros((0, 2), np.int64)
    rows, local = np.unique(pairs, return_inverse=True)
    local = local.reshape(-1, 2)
    first = rows[cluster_keep_first(len(rows), local[:, 0], local[:, 1])]
    moved = first != rows
    return np.stack([rows[moved], first[moved]], axis=1)


def _ids(ctx: Context, out: Path, kind: str, starts: np.ndarray, rows: np.ndarray) -> dict[int, str]:
    """The id of each of `rows` (global), read by a task per part that holds some."""
    wanted = np.unique(rows)
    part = np.searchsorted(starts, wanted, side="right") - 1
    tasks = [IdsTask(int(i), kind, out, wanted[part == i] - starts[i]) for i in np.unique(part)]
    found: dict[int, str] = {}
    for i, ids in ctx.executor.map(ids_of, tasks):
        found.update(zip((wanted[part == i]).tolist(), ids))
    return found
