"""Embeddings bucketed by cluster, out of core: the shared machinery of retrieve's sentence index
and embed's semantic dedup.

A pool of rows (embed parts, in order) is cut into `Groups` of consecutive parts, one task each.
A task finds each row's cluster and writes its rows sorted by cluster (`write_sorted`), with the
row range of every block (a range of consecutive clusters, `plan_blocks`). A block task then reads
its slice of every group's output (`gather`) and sorts it by cluster. Files are .npy, written
atomically (`save`), and read memory-mapped (`load`); with a URL workspace on a Ray cluster a file
another node wrote is downloaded first (`local`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq
from threadpoolctl import threadpool_limits

from realsyn.centroids import CentroidIndex, faiss_threads, sort_by_group
from realsyn.runtime import mirror
from realsyn.runtime.context import Context
from realsyn.runtime.executor import cpu_count
from realsyn.runtime.workspace import atomic_path
from realsyn.tables import EMBED, read_embeddings


def save(arr: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr)


def local(path: Path) -> Path:
    """`path`; with a URL workspace on a Ray cluster, downloaded first when another node wrote it."""
    if (m := mirror.active()) is not None:
        m.fetch(path)
    return path


def load(path: Path, mmap: bool = True) -> np.ndarray:
    """An .npy file (a read-only memmap unless `mmap` is False; a plain load when empty)."""
    path = local(path)
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError:
        return np.load(path, allow_pickle=False)


def remove(out: Path, *folders: str) -> None:
    """Delete intermediate folders (and, with a URL workspace, their copies in the store)."""
    for name in folders:
        shutil.rmtree(out / name, ignore_errors=True)
    if (m := mirror.active()) is not None:
        for name in folders:
            m.sync_up_path(out / name)


def part_sizes(work: Path, kind: str, n_parts: int) -> np.ndarray:
    """Rows of each embed part (from parquet metadata), as start offsets (n_parts + 1)."""
    sizes = [pq.ParquetFile(EMBED[kind].path(work, i)).metadata.num_rows for i in range(n_parts)]
    return np.r_[0, np.cumsum(sizes)].astype(np.int64)


@dataclass(frozen=True)
class Groups:
    """Consecutive parts in groups of about `size` items: group j is parts[j] (a tuple)."""

    parts: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, starts: np.ndarray, size: int) -> Groups:
        groups: list[list[int]] = []
        filled = size
        for i in range(len(starts) - 1):
            if filled >= size:
                groups.append([])
                filled = 0
            groups[-1].append(i)
            filled += int(starts[i + 1] - starts[i])
        return cls(tuple(tuple(g) for g in groups))

    def starts(self, j: int, first: np.ndarray) -> tuple[int, ...]:
        """`first[i]` of each part i of group j (e.g. its first embed row)."""
        return tuple(int(first[i]) for i in self.parts[j])


def embed_part(work: Path, kind: str, index: int, start: int, kept: Path | None = None
               ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Ids, embeddings (embed dtype) and the flags of one embed part's rows in the pool: from the
    `kept` flags file (bool per embed row, `start` = the part's first row), or all True."""
    # local(): embed's own dedup tasks read parts that other nodes wrote in the same stage
    ids, emb = read_embeddings([local(EMBED[kind].path(work, index))], EMBED[kind].id or "", None)
    mask = np.ones(len(ids), bool) if kept is None else np.asarray(load(kept)[start:start + len(ids)])
    return ids, emb, mask


@dataclass(frozen=True)
class RowsTask:
    index: int
    kind: str
    parts: tuple[int, ...]
    starts: tuple[int, ...]  # first embed row of each part
    pool: tuple[int, ...]  # first pool row of each part, and the end
    work: Path
    rows: tuple[np.ndarray, ...]  # wanted pool rows (sorted) of each request, within these parts
    kept: Path | None
    spill: Path | None  # the first request's rows go to `sample_piece(spill, index)`, not to the driver


def _read_rows(task: RowsTask) -> tuple[int, list[np.ndarray]]:
    """(task index, the wanted pool rows of the task's parts per request, in the embed dtype)."""
    got: list[list[np.ndarray]] = [[] for _ in task.rows]
    for k, (i, start) in enumerate(zip(task.parts, task.starts)):
        lo, hi = task.pool[k], task.pool[k + 1]
        _, emb, mask = embed_part(task.work, task.kind, i, start, task.kept)
        kept = emb[mask]
        for out, rows in zip(got, task.rows):
            out.append(kept[rows[(rows >= lo) & (rows < hi)] - lo])
    arrays = [np.concatenate(g) for g in got]
    if task.spill is not None:
        save(arrays[0], sample_piece(task.spill, task.index))
        arrays[0] = arrays[0][:0]
    return task.index, arrays


def read_rows(ctx: Context, kind: str, groups: Groups, starts: np.ndarray, pool: np.ndarray,
              wanted: list[np.ndarray], kept: Path | None = None, spill: Path | None = None) -> list[np.ndarray]:
    """Each array of sorted pool rows, read by one task per group of parts, in row order and the
    embed dtype. The pool is the rows flagged in `kept` (every row when None); `starts` and
    `pool` give each part's first embed row and first pool row. With `spill`, the first request
    is written as one sample piece per group for `fit` (its array comes back empty)."""
    tasks = [RowsTask(j, kind, parts, groups.starts(j, starts), (*groups.starts(j, pool), int(pool[parts[-1] + 1])),
                      ctx.ws.root, tuple(w[(w >= pool[parts[0]]) & (w < pool[parts[-1] + 1])] for w in wanted), kept,
                      spill)
             for j, parts in enumerate(groups.parts)]
    results = dict(ctx.executor.map(_read_rows, tasks))
    return [np.concatenate([results[j][s] for j in range(len(tasks))]) if tasks
            else np.zeros((0, 1), np.float32) for s in range(len(wanted))]


def sample_piece(folder: Path, j: int) -> Path:
    """Task j's share of a k-means sample, for `fit`."""
    return folder / "sample" / f"g-{j:05d}.npy"


@dataclass(frozen=True)
class Fit:
    """The k-means of a sample spilled in `pieces` files under `folder` (`sample_piece`), the
    index and its blocks written to `folder`."""

    folder: Path
    pieces: int
    clusters: int
    rows: int  # rows of the pool the blocks are sized for
    per_block: int  # pool rows per block
    mode: str = "auto"
    niter: int = 20
    seed: int = 0
    ef: int = 32
    threads: int = 0


def fit(task: Fit) -> int:
    """A task: train the `CentroidIndex` on the sample and write it (`save_index`) and the
    blocks (`blocks.npy`, last: marks the fit done); returns the sample's rows. So the sample
    (at most max_train x d, float32 while training) lives in a worker, never in the driver."""
    pieces = [load(sample_piece(task.folder, j), mmap=False) for j in range(task.pieces)]
    sample = np.concatenate([p for p in pieces if len(p)])
    del pieces
    threads = task.threads or cpu_count()
    with faiss_threads(threads), threadpool_limits(threads, user_api="blas"):  # same k-means on any number of threads
        index = CentroidIndex.train(sample, task.clusters, mode=task.mode, niter=task.niter, seed=task.seed, ef=task.ef)
    save_index(index, task.folder)
    save(plan_blocks(index, sample, task.rows, task.per_block, threads), task.folder / "blocks.npy")
    return len(sample)


def fit_index(ctx: Context, task: Fit, desc: str) -> None:
    """Run `fit` as one executor task (on a worker: on Ray, any node), then drop the sample."""
    ctx.executor.run(fit, [replace(task, threads=ctx.executor.threads_for(1))], desc, "rows")
    remove(task.folder, "sample")


def save_index(index: CentroidIndex, folder: Path) -> None:
    """`centroids.npy`, `cells.npy`, with an HNSW router `router.npy` (serialised), with cells
    to route through `coarse.npy`."""
    if index.router is not None:
        save(faiss.serialize_index(index.router), folder / "router.npy")
    if index.coarse is not None:
        save(index.coarse, folder / "coarse.npy")
    save(index.cells, folder / "cells.npy")
    save(index.centroids, folder / "centroids.npy")


def open_index(folder: Path, ef: int = 32) -> CentroidIndex:
    """The index `save_index` wrote."""
    router = faiss.deserialize_index(load(folder / "router.npy", mmap=False)) if (folder / "router.npy").exists() else None
    coarse = load(folder / "coarse.npy", mmap=False) if (folder / "coarse.npy").exists() else None
    return CentroidIndex(load(folder / "centroids.npy", mmap=False), load(folder / "cells.npy", mmap=False), router, ef, coarse)


def plan_blocks(index: CentroidIndex, sample: np.ndarray, n: int, per_block: int, threads: int = 0) -> np.ndarray:
    """Consecutive cluster ranges of about `per_block` of the pool's `n` rows, estimated from
    the clusters of (at most 65,536 rows of) the sample: block T is clusters
    [blocks[T], blocks[T + 1])."""
    labels = index.nearest(sample[::max(1, len(sample) // 65536)], 1, threads).idx[:, 0] if len(sample) else np.zeros(0, np.int64)
    clusters = len(index.centroids)
    counts = np.bincount(labels, minlength=clusters) * (n / max(1, len(labels)))
    cum = np.cumsum(counts)
    cuts = np.searchsorted(cum, np.arange(per_block, cum[-1] if len(cum) else 0, per_block), side="right") + 1
    return np.unique(np.r_[0, cuts, clusters].clip(0, clusters)).astype(np.int64)


def _file(prefix: Path, what: str) -> Path:
    return prefix.with_name(f"{prefix.name}.{what}.npy")


def top_bits(keys: np.ndarray, bits: int) -> np.ndarray:
    """The bucket of each int64 key: its top `bits` bits (all 0 when `bits` is 0)."""
    return (keys.view(np.uint64) >> np.uint64(64 - bits)).astype(np.int64) if bits else np.zeros(len(keys), np.int64)


def done(prefix: Path) -> bool:
    """Whether `write_sorted` finished for this prefix."""
    return _file(prefix, "bounds").exists()


def write_sorted(prefix: Path, x: np.ndarray, rows: np.ndarray, labels: np.ndarray, blocks: np.ndarray,
                 **extra: np.ndarray) -> None:
    """One group's rows sorted by cluster (stable: row order within a cluster), as
    `prefix.{vectors,rows,labels,<extra>,bounds}.npy`; `bounds[T]:bounds[T + 1]` are block T's
    rows. `bounds` is written last and marks the group done."""
    order = np.argsort(labels, kind="stable")
    save(x[order], _file(prefix, "vectors"))
    save(rows[order], _file(prefix, "rows"))
    save(labels[order].astype(np.int32), _file(prefix, "labels"))
    for name, values in extra.items():
        save(values[order], _file(prefix, name))
    save(np.searchsorted(labels[order], blocks).astype(np.int64), _file(prefix, "bounds"))


def gather(prefixes: list[Path], blocks: np.ndarray, t: int, extra: tuple[str, ...] = ()
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Block t's rows from every group's `write_sorted` output, sorted by cluster (group order,
    then row order within a cluster): (vectors, rows, offsets of each of the block's clusters,
    the extra arrays). Memory: the block, twice."""
    lo, hi = int(blocks[t]), int(blocks[t + 1])
    got: dict[str, list[np.ndarray]] = {name: [] for name in ("vectors", "rows", "labels", *extra)}
    for prefix in prefixes:
        b = load(_file(prefix, "bounds"), mmap=False)
        a, e = int(b[t]), int(b[t + 1])
        for name, out in got.items():
            out.append(np.array(load(_file(prefix, name))[a:e]))
    order, offsets = sort_by_group(np.concatenate(got["labels"]).astype(np.int64) - lo, hi - lo)
    return (np.concatenate(got["vectors"])[order], np.concatenate(got["rows"])[order], offsets,
            {name: np.concatenate(got[name])[order] for name in extra})
