"""embed's semantic dedup, SemDeDup's way, on a bounded driver.

Rows are one modality's embeddings in part order; in each group of rows whose cosine is at least
the threshold (optionally gated by pHash), the first row is kept. Up to EXACT_MAX rows one exact
search runs in the driver (n x d float32, at most 30 MB at d = 384). Beyond, the work is executor
tasks (local or Ray), each phase resumable by its files under `embed/semantic-KIND/`:

1. sample: tasks read a seeded sample (at most 262,144 rows, 256 per cluster) into `sample/`;
   one task (`buckets.fit`) fits a `CentroidIndex` of about sqrt(n) clusters (`clusters_for`)
   and cuts the clusters into blocks of about BLOCK_ROWS rows (`centroids.npy`, `cells.npy`,
   `router.npy`, `blocks.npy`);
2. assign: one task per group of parts writes its rows sorted by cluster (`assign/s-J.*`);
3. pairs: one task per block gathers its rows and compares every row with the rows of its own
   cluster (SemDeDup: near-duplicates share a cluster), writing the pairs above the threshold
   and their pHash distance (`pairs/b-T.npy`);
4. the driver groups the pairs with union-find (memory: the pairs found and the rows in them),
   measures the pair recall against exact search for a seeded sample of RECALL_SAMPLE rows (one
   task per group of parts), and writes the status table streaming part by part.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from threadpoolctl import threadpool_limits

from realsyn.buckets import (
    Fit,
    Groups,
    done,
    embed_part,
    fit_index,
    gather,
    load,
    open_index,
    read_rows,
    remove,
    save,
    write_sorted,
)
from realsyn.centroids import f32, seeded_rows
from realsyn.dedup import cluster_keep_first, phash_bits, semantic_duplicates
from realsyn.runtime.context import Context
from realsyn.runtime.workspace import atomic_path
from realsyn.tables import EMBED, EMBED_DEDUP, EXTRACT_IMAGES, read_embeddings

EXACT_MAX = 20_000  # rows: one exact search in the driver up to here (its cost is n^2 d: 78 s at 125k rows, d = 384)
BLOCK_ROWS = 500_000  # rows per pairs task
ROWS_PER_TASK = 200_000  # rows per assign task
MAX_TRAIN = 1 << 18  # k-means sample
RECALL_SAMPLE = 1000  # rows whose exact neighbours measure the pair recall
_SCORES = 64 << 20  # bytes of one score matrix (rows of a cluster compared at once)


@dataclass(frozen=True)
class Gate:
    """pHash gate: a pair counts only when its pHashes differ in at most `bits` bits."""

    bits: int


def _prefix(work: Path, kind: str, *names: str) -> Path:
    return work / "embed" / f"semantic-{kind}" / "/".join(names)


def phashes(work: Path, part: int) -> np.ndarray:
    """pHash (int64, 0 when missing) of one part's kept images, in embed row order."""
    return EXTRACT_IMAGES.kept(work, part, ["phash"])["phash"].fill_null(0).to_numpy().astype(np.int64)


def cluster_pairs(x: np.ndarray, offsets: np.ndarray, threshold: float, threads: int = 1
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i < j) of rows of `x` in the same cluster (`offsets`) with cosine >= threshold."""
    found: list[tuple[np.ndarray, np.ndarray]] = []
    with threadpool_limits(threads, user_api="blas"):
        for c in np.flatnonzero(np.diff(offsets) > 1):  # clusters with a pair to compare
            a, e = int(offsets[c]), int(offsets[c + 1])
            base, chunk = f32(x[a:e]), max(1, min(2048, _SCORES // (4 * (e - a))))
            for s in range(0, e - a - 1, chunk):
                scores = base[s:s + chunk] @ base[s:].T
                i, j = np.nonzero(scores >= threshold)
                keep = j > i  # j is relative to s: the upper triangle, self excluded
                found.append((a + s + i[keep], a + s + j[keep]))
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate([f[0] for f in found]).astype(np.int64), np.concatenate([f[1] for f in found]).astype(np.int64)


@dataclass(frozen=True)
class _Assign:
    index: int
    kind: str
    parts: tuple[int, ...]
    starts: tuple[int, ...]
    work: Path
    gate: bool
    threads: int


def _assign(task: _Assign) -> int:
    """Phase 2 for one group of parts."""
    root = _prefix(task.work, task.kind)
    index = open_index(root)
    x = np.concatenate([embed_part(task.work, task.kind, i, s)[1] for i, s in zip(task.parts, task.starts)])
    rows = np.arange(task.starts[0], task.starts[0] + len(x), dtype=np.int64)
    labels = index.nearest(x, 1, task.threads).idx[:, 0]
    extra = {"phash": np.concatenate([phashes(task.work, i) for i in task.parts])} if task.gate else {}
    write_sorted(_prefix(task.work, task.kind, "assign", f"s-{task.index:05d}"), x, rows, labels,
                 load(root / "blocks.npy", mmap=False), **extra)
    return len(x)


@dataclass(frozen=True)
class _Pairs:
    index: int  # block
    kind: str
    sources: int
    work: Path
    threshold: float
    gate: bool
    threads: int


def _pairs(task: _Pairs) -> int:
    """Phase 3 for one block: (row a, row b, pHash bits) of every pair found, a < b."""
    root = _prefix(task.work, task.kind)
    sources = [_prefix(task.work, task.kind, "assign", f"s-{j:05d}") for j in range(task.sources)]
    x, rows, offsets, extra = gather(sources, load(root / "blocks.npy", mmap=False), task.index,
                                     ("phash",) if task.gate else ())
    i, j = cluster_pairs(x, offsets, task.threshold, task.threads)
    bits = phash_bits(extra["phash"][i], extra["phash"][j]) if task.gate else np.zeros(len(i), np.int8)
    a, b = np.minimum(rows[i], rows[j]), np.maximum(rows[i], rows[j])
    save(np.stack([a, b, bits.astype(np.int64)], axis=1), root / "pairs" / f"b-{task.index:05d}.npy")
    return len(rows)


@dataclass(frozen=True)
class _Exact:
    index: int
    kind: str
    parts: tuple[int, ...]
    starts: tuple[int, ...]
    work: Path
    queries: np.ndarray  # (s, d) the sampled rows
    rows: np.ndarray  # their row numbers
    threshold: float
    threads: int


def _exact(task: _Exact) -> tuple[np.ndarray, np.ndarray]:
    """(sample row, row) of every pair of a sampled row and a row of these parts above the
    threshold (itself excluded)."""
    q = f32(task.queries)
    found_a, found_b = [], []
    with threadpool_limits(task.threads, user_api="blas"):
        for i, start in zip(task.parts, task.starts):
            emb = f32(embed_part(task.work, task.kind, i, start)[1])
            s, r = np.nonzero(q @ emb.T >= task.threshold)
            found_a.append(task.rows[s])
            found_b.append(r + start)
    a, b = np.concatenate(found_a).astype(np.int64), np.concatenate(found_b).astype(np.int64)
    return a[a != b], b[a != b]


def _key(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    return np.minimum(a, b) * n + np.maximum(a, b)


def _recall(ctx: Context, kind: str, groups: Groups, starts: np.ndarray, threshold: float,
            pairs: np.ndarray) -> float | None:
    """Share of the exact pairs of a seeded sample of rows that the cluster search found (None
    when the sample has no pair above the threshold)."""
    n = int(starts[-1])
    rows = seeded_rows(n, RECALL_SAMPLE, ctx.cfg.runtime.seed + 1)
    (queries,) = read_rows(ctx, kind, groups, starts, starts, [rows])
    threads = ctx.executor.threads_for(len(groups.parts))
    tasks = [_Exact(j, kind, parts, groups.starts(j, starts), ctx.ws.root, queries, rows, threshold, threads)
             for j, parts in enumerate(groups.parts)]
    exact = list(ctx.executor.map(_exact, tasks))
    a, b = np.concatenate([e[0] for e in exact]), np.concatenate([e[1] for e in exact])
    if not len(a):
        return None
    return round(float(np.isin(_key(a, b, n), _key(pairs[:, 0], pairs[:, 1], n)).mean()), 4)


def clusters_for(n: int) -> int:
    """About sqrt(n) clusters of sqrt(n) rows: assigning the rows (n x C products) and comparing
    each row with its cluster (n x n / C) then cost the same, about n^1.5 x d in all; at the
    paper's 0.84B sentences, 29k clusters. Larger clusters also miss fewer pairs."""
    return max(1, round(np.sqrt(n)))


def _train(ctx: Context, kind: str, groups: Groups, starts: np.ndarray) -> None:
    """Phase 1 (skipped when `blocks.npy` exists)."""
    root = _prefix(ctx.ws.root, kind)
    if (root / "blocks.npy").exists():
        return
    n, seed = int(starts[-1]), ctx.cfg.runtime.seed
    clusters = clusters_for(n)
    read_rows(ctx, kind, groups, starts, starts, [seeded_rows(n, min(MAX_TRAIN, 256 * clusters), seed)], spill=root)
    fit_index(ctx, Fit(root, len(groups.parts), clusters, n, BLOCK_ROWS, seed=seed), f"embed: dedup {kind}: k-means")


def clustered_pairs(ctx: Context, kind: str, starts: np.ndarray, threshold: float, gate: Gate | None
                    ) -> tuple[np.ndarray, dict]:
    """Phases 1-3 and the recall: the pairs (a, b) kept by the gate, and the figures."""
    root, started = _prefix(ctx.ws.root, kind), time.time()
    groups = Groups.of(starts, ROWS_PER_TASK)
    _train(ctx, kind, groups, starts)
    blocks = load(root / "blocks.npy", mmap=False)
    todo = [j for j in range(len(groups.parts)) if not done(_prefix(ctx.ws.root, kind, "assign", f"s-{j:05d}"))]
    each = ctx.executor.threads_for(len(todo))
    ctx.executor.run(_assign, [_Assign(j, kind, groups.parts[j], groups.starts(j, starts), ctx.ws.root, gate is not None, each)
                               for j in todo], f"embed: dedup {kind}: assign", kind)
    todo = [t for t in range(len(blocks) - 1) if not (root / "pairs" / f"b-{t:05d}.npy").exists()]
    each = ctx.executor.threads_for(len(todo))
    ctx.executor.run(_pairs, [_Pairs(t, kind, len(groups.parts), ctx.ws.root, threshold, gate is not None, each)
                              for t in todo], f"embed: dedup {kind}: pairs", kind)
    found = np.concatenate([load(root / "pairs" / f"b-{t:05d}.npy", mmap=False).reshape(-1, 3)
                            for t in range(len(blocks) - 1)])
    info = {"method": "clusters", "clusters": len(load(root / "centroids.npy")), "blocks": len(blocks) - 1,
            "pair_recall": _recall(ctx, kind, groups, starts, threshold, found)}
    info["seconds"] = round(time.time() - started, 3)
    kept = found[found[:, 2] <= gate.bits] if gate is not None else found
    return kept[:, :2], info


def _exact_pairs(ctx: Context, kind: str, n_parts: int, threshold: float, gate: Gate | None) -> np.ndarray:
    """All pairs (a, b) above the threshold, in the driver (at most EXACT_MAX rows)."""
    _, emb = read_embeddings([EMBED[kind].path(ctx.ws.root, i) for i in range(n_parts)], EMBED[kind].id or "")
    group = semantic_duplicates(emb, threshold,
                                np.concatenate([phashes(ctx.ws.root, i) for i in range(n_parts)] or [np.zeros(0, np.int64)])
                                if gate is not None else None, gate.bits if gate is not None else 64)
    dup = np.flatnonzero(group != np.arange(len(group)))
    return np.stack([group[dup], dup], axis=1)


def keep_first(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(duplicate rows, sorted; the row each duplicates): union-find over the rows in `pairs`
    only, so memory follows the pairs, not the pool."""
    nodes = np.unique(pairs)
    if not len(nodes):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    local = np.searchsorted(nodes, pairs)
    first = nodes[cluster_keep_first(len(nodes), local[:, 0], local[:, 1])]
    dup = first != nodes
    return nodes[dup], first[dup]


def _pick(names: list[pa.Array], firsts: np.ndarray, at: np.ndarray) -> pa.Array:
    """The strings at positions `at` of the concatenation of `names` (array j starts at
    `firsts[j]`), in the order of `at`; each array is read alone, never concatenated."""
    chunk = np.searchsorted(firsts, at, side="right") - 1
    order = np.argsort(chunk, kind="stable")
    used, begin = np.unique(chunk[order], return_index=True)
    end = np.append(begin[1:], len(order))
    pieces = [names[j].take(pa.array(at[order[a:e]] - firsts[j])) for j, a, e in zip(used, begin, end)]
    picked = pa.concat_arrays(pieces) if pieces else pa.array([], pa.string())
    return picked.take(pa.array(np.argsort(order)))


def write_status(ctx: Context, kind: str, n_parts: int, dups: np.ndarray, of: np.ndarray) -> Counter:
    """`embed/dedup_KIND.parquet`, streamed part by part. The ids of kept rows that others
    duplicate are taken from their part as it passes (a row's original comes before it) and held
    as arrow strings, one array per part: memory follows the duplicates, about 30 bytes each."""
    table, id_col = EMBED_DEDUP[kind], EMBED[kind].id or ""
    wanted, names, firsts = np.unique(of), list[pa.Array](), list[int]()
    schema = pa.schema([(id_col, pa.string()), ("status", pa.string()), ("reason", pa.string()), ("dup_of", pa.string())])
    start = 0
    with atomic_path(table.path(ctx.ws.root)) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as w:
        for i in range(n_parts):
            ids = pq.read_table(EMBED[kind].path(ctx.ws.root, i), columns=[id_col])[id_col].combine_chunks()
            a, e = np.searchsorted(wanted, [start, start + len(ids)])
            names.append(ids.take(pa.array(wanted[a:e] - start)))
            firsts.append(int(a))
            lo, hi = np.searchsorted(dups, [start, start + len(ids)])
            is_dup = np.zeros(len(ids), bool)
            is_dup[dups[lo:hi] - start] = True
            originals = _pick(names, np.array(firsts), np.searchsorted(wanted, of[lo:hi]))
            place = np.zeros(len(ids), np.int64)  # a duplicate's place in `originals`
            place[dups[lo:hi] - start] = np.arange(hi - lo)
            w.write_table(pa.table({id_col: ids,
                                    "status": pa.array(np.where(is_dup, "rejected", "kept"), pa.string()),
                                    "reason": pa.array(np.full(len(ids), "semantic_duplicate"), pa.string(), mask=~is_dup),
                                    "dup_of": originals.take(pa.array(place, mask=~is_dup))}, schema=schema))
            start += len(ids)
    return Counter({"kept": start - len(dups), "rejected:semantic_duplicate": len(dups)})


def dedup(ctx: Context, kind: str, starts: np.ndarray, threshold: float, gate: Gate | None) -> tuple[Counter, dict]:
    """Semantic dedup of one modality (`threshold` > 1: off); returns the counts and how it ran."""
    n, n_parts = int(starts[-1]), len(starts) - 1
    if threshold > 1:
        pairs, info = np.zeros((0, 2), np.int64), {"method": "off"}
    elif n <= EXACT_MAX:
        pairs, info = _exact_pairs(ctx, kind, n_parts, threshold, gate), {"method": "exact"}
    else:
        pairs, info = clustered_pairs(ctx, kind, starts, threshold, gate)
    counts = write_status(ctx, kind, n_parts, *keep_first(pairs))
    remove(ctx.ws.dir("embed"), f"semantic-{kind}")
    return counts, info
