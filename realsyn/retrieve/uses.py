"""`retrieve.max_uses`: one text is the first text (R1) of at most `max_uses` images.

The assignment is deterministic and greedy, in the spirit of MMC4's (each image gets the best
text still free): in round r, every image not yet settled proposes its r-th text; each text
accepts the proposals with the highest cosine (earlier images first among equals) up to the uses
it has left, and a refused image proposes its next text in round r + 1. After k rounds an image
refused by all its texts keeps its order (`max_uses_fallback`). The accepted text then moves to
the front of the image's list; the others keep their order, so a demoted text stays among the
image's texts, only not as R1.

Texts are identified by a 64-bit hash of their sentence id.
Memory in the driver, per image: one byte of state, an 8-byte chosen key and at most 16 bytes of
use counts (key and count of each accepted text), plus the proposals of one bucket of text keys
at a time (about 20 bytes each, buckets sized to `budget` bytes): the pairs columns are streamed
part by part, once per round and bucket. 198M images: about 5 GB.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from realsyn.runtime.workspace import write_table

_SETTLED = -1


def text_keys(ids: list[str]) -> np.ndarray:
    """64-bit keys of sentence ids (BLAKE2b; never 0, which means "none")."""
    keys = np.fromiter((int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little") for i in ids),
                       np.uint64, len(ids))
    return np.maximum(keys, np.uint64(1))


def accept(keys: np.ndarray, sims: np.ndarray, room: np.ndarray) -> np.ndarray:
    """Which proposals their text accepts: per key, the `room` best by similarity (earlier rows
    first among equals). `room` is per proposal: the uses its text has left."""
    order = np.lexsort((-sims, keys))  # stable: equal keys and sims keep row order
    k = keys[order]
    first = np.r_[True, k[1:] != k[:-1]] if len(k) else np.zeros(0, bool)
    start = np.maximum.accumulate(np.where(first, np.arange(len(k)), 0))
    ok = np.empty(len(keys), bool)
    ok[order] = (np.arange(len(k)) - start) < room[order]
    return ok


class Uses:
    """Uses per text key so far (sorted keys and counts; only texts that were accepted)."""

    def __init__(self) -> None:
        self.keys, self.counts = np.zeros(0, np.uint64), np.zeros(0, np.int64)

    def of(self, keys: np.ndarray) -> np.ndarray:
        if not len(self.keys):
            return np.zeros(len(keys), np.int64)
        at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return np.where(self.keys[at] == keys, self.counts[at], 0)

    def add(self, keys: np.ndarray) -> None:
        merged, inverse = np.unique(np.concatenate([self.keys, keys]), return_inverse=True)
        counts = np.zeros(len(merged), np.int64)
        np.add.at(counts, inverse[:len(self.keys)], self.counts)
        np.add.at(counts, inverse[len(self.keys):], 1)
        self.keys, self.counts = merged, counts


def _candidates(path: Path) -> tuple[pa.ListArray, np.ndarray, np.ndarray]:
    """(text_ids, sims flat, list offsets) of one pairs part."""
    t = pq.read_table(path, columns=["text_ids", "sims"])
    ids, sims = (t[c].combine_chunks() for c in ("text_ids", "sims"))
    offsets = ids.offsets.to_numpy() - ids.offsets[0].as_py()
    return ids, pc.list_flatten(sims).to_numpy(), offsets


def assign(paths: list[Path], max_uses: int, k: int, budget: int = 1 << 30) -> tuple[np.ndarray, dict]:
    """The chosen R1 key of every image of the pairs parts (0 = keep its order) and counts."""
    sizes = [pq.ParquetFile(p).metadata.num_rows for p in paths]
    starts = np.r_[0, np.cumsum(sizes)].astype(np.int64)
    state = np.zeros(int(starts[-1]), np.int8)  # the text an unsettled image proposes next
    chosen = np.zeros(int(starts[-1]), np.uint64)
    buckets = max(1, -(-int(starts[-1]) * 16 // budget))
    uses = Uses()
    for r in range(k):
        for b in range(buckets):
            keys, sims, rows = [], [], []
            for p, path in enumerate(paths):
                ids, flat, offsets = _candidates(path)
                lengths = np.diff(offsets)
                local = np.flatnonzero((state[starts[p]:starts[p + 1]] == r) & (lengths > r))
                key = text_keys(pc.list_flatten(ids).take(pa.array(offsets[local] + r)).to_pylist())
                mine = key % np.uint64(buckets) == b
                keys.append(key[mine])
                sims.append(flat[offsets[local[mine]] + r])
                rows.append(local[mine] + starts[p])
            key, sim, row = (np.concatenate(a) for a in (keys, sims, rows))
            ok = accept(key, sim, max_uses - uses.of(key))
            uses.add(key[ok])
            state[row[ok]], chosen[row[ok]] = _SETTLED, key[ok] if r else np.uint64(0)
            state[row[~ok]] = r + 1
    fallback = int((state > 0).sum())
    return chosen, {"max_uses_moved": int((chosen > 0).sum()), "max_uses_fallback": fallback,
                    "max_uses_rounds": k, "max_uses_buckets": buckets}


def move_to_front(table: pa.Table, chosen: np.ndarray) -> pa.Table:
    """Move each row's chosen text (by key; 0 = none) to the front of its list columns; the
    others keep their order. Idempotent: a chosen text already in front stays there."""
    ids = table["text_ids"].combine_chunks()
    offsets = ids.offsets.to_numpy() - ids.offsets[0].as_py()
    lengths = np.diff(offsets)
    flat_keys = text_keys(pc.list_flatten(ids).to_pylist())
    row_of = np.repeat(np.arange(len(lengths)), lengths)
    pos = np.arange(len(flat_keys)) - offsets[row_of]
    hit = (chosen[row_of] == flat_keys) & (chosen[row_of] > 0)
    c = np.zeros(len(lengths), np.int64)
    c[row_of[hit]] = pos[hit]  # the chosen text's position (0 when none or already first)
    cr = c[row_of]
    src = offsets[row_of] + np.where(pos == 0, cr, np.where(pos <= cr, pos - 1, pos))
    for name in ("text_ids", "texts", "sims", "same_doc"):
        col = table[name].combine_chunks()
        values = pc.list_flatten(col).take(pa.array(src))
        table = table.set_column(table.schema.get_field_index(name), name,
                                 pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values, type=col.type))
    return table


def apply(paths: list[Path], chosen: np.ndarray) -> None:
    """Rewrite the pairs parts whose images got a new R1 (atomically, one part at a time)."""
    lo = 0
    for path in paths:
        n = pq.ParquetFile(path).metadata.num_rows
        mine = chosen[lo:lo + n]
        lo += n
        if mine.any():
            write_table(move_to_front(pq.read_table(path), mine), path)
