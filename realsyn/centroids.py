"""k-means and nearest-centroid search on arrays (faiss k-means, BLAS products), shared by the
stages that cluster embeddings: retrieve (the sentence index), balance (image clusters).

Embeddings are expected L2-normalised: inner product = cosine.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, NamedTuple

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

from realsyn.runtime.executor import cpu_count

_SCORES_BYTES = 8 << 20  # centroid scores per batch (256..1024 rows): stays in cache for argmax


class TopK(NamedTuple):
    """Per query row: indices of the best base rows (-1 = none) and their similarities."""

    idx: np.ndarray  # (m, k) int64
    sims: np.ndarray  # (m, k) float32, -inf where idx is -1


@contextmanager
def faiss_threads(threads: int) -> Iterator[None]:
    """faiss's OpenMP threads for the block (0: every CPU), restored after it."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads or cpu_count())
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def empty_topk(m: int, k: int) -> TopK:
    return TopK(np.full((m, k), -1, np.int64), np.full((m, k), -np.inf, np.float32))


def auto_clusters(n: int, per_cluster: int) -> int:
    """About `per_cluster` sentences per cluster (paper: 2M clusters for 0.84B, ~420)."""
    return max(1, min(n, round(n / per_cluster)))


def seeded_rows(n: int, size: int, seed: int) -> np.ndarray:
    """`size` sorted row numbers of `n` drawn with the seed (all rows when size >= n): the one
    draw behind every seeded sample (k-means, recall, balance, report), so a sample read out of
    core is the one taken in memory."""
    if size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def train_kmeans(x: np.ndarray, clusters: int, *, niter: int = 20, max_train: int = 1 << 18,
                 seed: int = 0) -> np.ndarray:
    """Spherical k-means centroids (clusters x d float32), fitted on a seeded random sample of
    at most `max_train` rows and 256 per cluster. Memory: the sample (float32)."""
    n, d = x.shape
    clusters = max(1, min(clusters, n))
    size = min(max_train, 256 * clusters)
    sample = x if n <= size else x[seeded_rows(n, size, seed)]
    km = faiss.Kmeans(d, clusters, niter=niter, seed=seed, spherical=True, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=len(sample) + 1)
    km.train(f32(sample))
    assert km.centroids is not None  # set by train
    return f32(km.centroids)


ARGMAX_K = 8  # top_cols: up to this k, k passes of argmax (a SIMD scan each) instead of a partition


def top_cols(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and values of the k largest entries of each row (finite scores), best first;
    equal values in column order. Up to ARGMAX_K columns by repeated argmax (d = 384, 10k
    centroids, k = 2: about 1 ms per 256 rows against 20-120 ms for the partition, which cost
    more than the product itself)."""
    m, n = scores.shape
    if n > k and k <= ARGMAX_K:
        return _top_by_argmax(scores, k)
    if n <= k:
        cols = np.broadcast_to(np.arange(n), scores.shape)
    else:  # SIMD partition of the values finds each row's k-th best; ties need argpartition
        kth = np.partition(scores, n - k, axis=1)[:, n - k:n - k + 1]
        _, cols = np.nonzero(scores >= kth)
        cols = cols.reshape(m, k) if len(cols) == m * k else np.argpartition(scores, n - k, axis=1)[:, n - k:]
    vals = np.take_along_axis(scores, cols, axis=1)
    best = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(cols, best, axis=1), np.take_along_axis(vals, best, axis=1)


def _top_by_argmax(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`top_cols` by k argmax passes, each best column masked for the next (on a copy)."""
    work, rows = (scores.copy() if k > 1 else scores), np.arange(len(scores))
    cols = np.empty((len(scores), k), np.int64)
    for j in range(k):
        cols[:, j] = work.argmax(axis=1)
        if j + 1 < k:
            work[rows, cols[:, j]] = -np.inf
    return cols, np.take_along_axis(scores, cols, axis=1)


def nearest_centroids(x: np.ndarray, centroids: np.ndarray, nprobe: int = 1,
                      threads: int = 0) -> TopK:
    """The `nprobe` most similar centroids of every row, best first (one GEMM per batch)."""
    nprobe = min(nprobe, len(centroids))
    out = empty_topk(len(x), nprobe)
    c = f32(centroids)
    batch = max(256, min(1024, _SCORES_BYTES // (4 * max(1, len(c)))))
    buf = np.empty((min(batch, len(x)), len(c)), np.float32)  # reused: no page faults per batch
    with threadpool_limits(threads or cpu_count(), user_api="blas"):
        for a in range(0, len(x), batch):
            chunk = f32(x[a:a + batch])
            scores = np.matmul(chunk, c.T, out=buf[:len(chunk)])
            if nprobe == 1:
                best = scores.argmax(axis=1)[:, None]
                out.idx[a:a + batch], out.sims[a:a + batch] = best, np.take_along_axis(scores, best, axis=1)
            else:
                out.idx[a:a + batch], out.sims[a:a + batch] = top_cols(scores, nprobe)
    return out


def sort_by_group(groups: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """(order, offsets): rows `order[offsets[g]:offsets[g + 1]]` are those of group g, in their
    original order."""
    order = np.argsort(groups, kind="stable")
    offsets = np.zeros(n_groups + 1, np.int64)
    np.cumsum(np.bincount(groups, minlength=n_groups), out=offsets[1:])
    return order, offsets


Bonus = Callable[[np.ndarray, int, int], np.ndarray]  # (query rows, a, b) -> scores added to base[a:b]


def grouped_topk(q: np.ndarray, rows: np.ndarray, groups: np.ndarray, base: np.ndarray,
                 offsets: np.ndarray, k: int, threads: int = 0, bonus: Bonus | None = None) -> TopK:
    """For each pair j, the top-k rows of `base[offsets[g]:offsets[g + 1]]` (g = groups[j])
    for the query `q[rows[j]]`; indices are rows of `base`. Pairs are grouped so each group
    costs one dense product; groups run on `threads` threads (BLAS single-threaded inside).
    With `bonus`, rows are ranked by similarity + bonus and the returned sims include it."""
    out = empty_topk(len(rows), k)
    order = np.argsort(groups, kind="stable")
    g = groups[order]
    cut = np.flatnonzero(g[1:] != g[:-1]) + 1
    blocks = [(s, e) for s, e in zip(np.r_[0, cut], np.r_[cut, len(g)]) if e > s
              and offsets[g[s] + 1] > offsets[g[s]]]

    def work(part: list[tuple[int, int]]) -> None:
        for s, e in part:
            a, b = offsets[g[s]], offsets[g[s] + 1]
            scores = f32(q[rows[order[s:e]]]) @ f32(base[a:b]).T
            if bonus is not None:
                scores += bonus(rows[order[s:e]], a, b)
            cols, vals = top_cols(scores, k)
            dest = order[s:e]
            out.idx[dest, :cols.shape[1]] = cols + a
            out.sims[dest, :cols.shape[1]] = vals

    threads = max(1, min(threads or cpu_count(), len(blocks)))
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, [blocks[i::threads] for i in range(threads)]))
    return out


def best_cols(sims: np.ndarray, k: int) -> np.ndarray:
    """Columns of the k best of each row (m x w), best first; equal similarities keep column order."""
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def merge_topk(idx: np.ndarray, sims: np.ndarray, k: int) -> TopK:
    """The k best of each row of candidate lists (m x w), by similarity, best first."""
    best = best_cols(sims, k)
    return TopK(np.take_along_axis(idx, best, axis=1), np.take_along_axis(sims, best, axis=1))


FLAT_TRAIN_MAX = 1024  # index auto: plain k-means up to this many clusters, two-level beyond
CELL_ROUTE_MIN = 16384  # nearest-centroid search: a BLAS scan up to this many centroids, through cells beyond
CLUSTERS_PER_CELL = 16  # ... of about this many clusters: a row is compared with the C / 16 cell centroids, then
# with the clusters of its best cells (d = 384, 10k clusters, one core: 11 us per row against 89 for the scan,
# the scan's nearest centroid for 94%; 625 cells fit this data's 2,000 topics, sqrt(C) = 100 cells found 38%)
FLAT_ROUTE_MAX = 65536  # past this many centroids, an HNSW graph over them instead
# (measured at d = 384 on one core, 10k centroids: scan 86 us/row; HNSW M 32, ef 32: 113 us/row, recall 0.995)
REFINE_ITERS = 5  # Lloyd iterations after the per-cell fits
REFINE_ROWS = 1 << 18  # ... over at most this many rows of the sample (the first of a seeded draw)
_HNSW_M, _HNSW_EF_CONSTRUCTION = 32, 80


def spherical_means(x: np.ndarray, labels: np.ndarray, previous: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """The normalised mean of each cluster's rows (a cluster without rows keeps `previous`);
    summed in a fixed order (sorted labels, fixed chunks), so the result is deterministic."""
    sums = np.zeros(previous.shape, np.float32)
    order = np.argsort(labels, kind="stable")
    for a in range(0, len(order), chunk):
        rows = order[a:a + chunk]
        lab = labels[rows]
        starts = np.r_[0, np.flatnonzero(lab[1:] != lab[:-1]) + 1]
        sums[lab[starts]] += np.add.reduceat(f32(x[rows]), starts, axis=0)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return f32(np.where(norms > 0, sums / np.maximum(norms, 1e-12), previous))


def hnsw_router(centroids: np.ndarray) -> faiss.Index:
    """An HNSW graph over the centroids (inner product). Built on one thread, so the graph, and
    every search on it, is the same on every run."""
    index = faiss.IndexHNSWFlat(centroids.shape[1], _HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = _HNSW_EF_CONSTRUCTION
    with faiss_threads(1):
        index.add(f32(centroids))
    return index


@dataclass(frozen=True)
class CentroidIndex:
    """k-means centroids grouped by coarse cell, with their nearest-centroid search.

    Cell g's clusters are `centroids[cells[g]:cells[g + 1]]`; a cluster's id is its row. Cells
    keep nearby clusters at nearby ids, so a contiguous range of clusters (a block of the sorted
    index) is one region of the space. Nearest-centroid search is a BLAS scan up to
    CELL_ROUTE_MIN centroids; up to FLAT_ROUTE_MAX it goes through the cells: each row is
    compared with the cell centroids (`coarse`, about C / CLUSTERS_PER_CELL), then with the
    clusters of its `probe` best cells, about C / 16 + 16 x probe products instead of C; beyond,
    an HNSW graph over the centroids (faiss's quantizer for millions of centroids), whose cost
    grows with log C, `ef` its search breadth. A route's agreement with the scan is measured
    (`centroid_recall`); retrieve's recall against exact search includes it.
    """

    centroids: np.ndarray  # (C, d) float32, grouped by cell
    cells: np.ndarray  # (G + 1,) int64
    router: faiss.Index | None = None  # HNSW over the centroids, or None
    ef: int = 32
    coarse: np.ndarray | None = None  # (G, d) float32 cell centroids to route through, or None
    probe: int = 1  # cells searched per row (at least k for the k nearest)

    @classmethod
    def train(cls, sample: np.ndarray, clusters: int, *, mode: str = "auto", niter: int = 20,
              seed: int = 0, ef: int = 32, refine: int = REFINE_ITERS) -> CentroidIndex:
        """Centroids fitted on `sample` (a bounded seeded sample of the pool).

        `flat` (and `auto` up to FLAT_TRAIN_MAX clusters): one spherical k-means, one cell.
        `hierarchical`: coarse k-means (about sqrt(C) cells, on at most REFINE_ROWS rows), a fine
        k-means in each cell with clusters in proportion to its share (each seeded by the seed and
        the cell), then `refine` Lloyd iterations over at most REFINE_ROWS rows of the sample with
        the index's own search, which moves the fine
        centroids across cell borders (on the standard synthetic embeddings, 1M sentences and
        2.5k clusters: recall@3 0.87 before, 0.98 after; flat k-means 0.95, at twice the time);
        finally each cluster joins the cell of its nearest coarse centroid."""
        n = len(sample)
        clusters = max(1, min(clusters, n))
        if mode == "flat" or (mode == "auto" and clusters <= FLAT_TRAIN_MAX):
            cent = train_kmeans(sample, clusters, niter=niter, max_train=n, seed=seed)
            return cls.of(cent, np.array([0, len(cent)], np.int64), ef)
        cells = max(1, min(round(np.sqrt(clusters)), clusters))
        coarse = train_kmeans(sample, cells, niter=niter, max_train=REFINE_ROWS, seed=seed)
        cell = nearest_centroids(sample, coarse, 1).idx[:, 0]
        sizes = np.bincount(cell, minlength=len(coarse))
        want = np.minimum(np.maximum(1, np.round(clusters * sizes / max(1, n))).astype(np.int64), np.maximum(sizes, 1))
        fine = np.concatenate([
            train_kmeans(sample[cell == g], int(want[g]), niter=niter, max_train=int(sizes[g]), seed=seed + 1 + g)
            if sizes[g] else coarse[g:g + 1] for g in range(len(coarse))])
        some = sample[np.sort(np.random.default_rng(seed).permutation(n)[:REFINE_ROWS])] if n > REFINE_ROWS else sample
        for _ in range(refine):
            labels = cls.of(fine, np.array([0, len(fine)], np.int64), ef).nearest(some, 1).idx[:, 0]
            fine = spherical_means(some, labels, fine)
        routed = CELL_ROUTE_MIN < len(fine) <= FLAT_ROUTE_MAX
        if routed:  # cells to route through: finer than the fitting cells (see CLUSTERS_PER_CELL)
            coarse = train_kmeans(some, len(fine) // CLUSTERS_PER_CELL, niter=niter, max_train=len(some), seed=seed)
        order, offsets = sort_by_group(nearest_centroids(fine, coarse, 1).idx[:, 0], len(coarse))
        used = np.diff(offsets) > 0  # a cell without clusters is left out
        offsets = np.r_[0, offsets[1:][used]]
        return cls.of(fine[order], offsets, ef, coarse=coarse[used] if routed else None)

    @classmethod
    def of(cls, centroids: np.ndarray, cells: np.ndarray, ef: int = 32, router: faiss.Index | None = None,
           coarse: np.ndarray | None = None, probe: int = 1) -> CentroidIndex:
        """The index of given centroids; builds the HNSW router when there are many."""
        centroids = f32(centroids)
        if router is None and len(centroids) > FLAT_ROUTE_MAX:
            router = hnsw_router(centroids)
        return cls(centroids, np.asarray(cells, np.int64), router, ef, None if coarse is None else f32(coarse), probe)

    def nearest(self, x: np.ndarray, k: int = 1, threads: int = 0) -> TopK:
        """The `k` nearest centroids of every row, best first."""
        k = min(k, len(self.centroids))
        if self.router is None and self.coarse is not None:
            return self._through_cells(x, k, threads)
        if self.router is None:
            return nearest_centroids(x, self.centroids, k, threads)
        out = empty_topk(len(x), k)
        params = faiss.SearchParametersHNSW(efSearch=max(self.ef, k))  # type: ignore[attr-defined]  # not in the stubs
        with faiss_threads(threads):
            for a in range(0, len(x), 1 << 16):
                sims, idx = self.router.search(f32(x[a:a + (1 << 16)]), k, params=params)
                out.idx[a:a + len(idx)], out.sims[a:a + len(idx)] = idx, np.where(idx >= 0, sims, -np.inf)
        return out

    def _through_cells(self, x: np.ndarray, k: int, threads: int, batch: int = 1 << 16) -> TopK:
        """The best `k` centroids among those of each row's `max(probe, k)` best cells."""
        assert self.coarse is not None
        p = min(max(self.probe, k), len(self.coarse))
        out = empty_topk(len(x), k)
        for a in range(0, len(x), batch):
            chunk = f32(x[a:a + batch])
            m = len(chunk)
            cells = nearest_centroids(chunk, self.coarse, p, threads).idx
            hits = grouped_topk(chunk, np.repeat(np.arange(m), p), cells.ravel(), self.centroids, self.cells, k, threads)
            best = merge_topk(hits.idx.reshape(m, p * k), hits.sims.reshape(m, p * k), k)
            out.idx[a:a + m], out.sims[a:a + m] = best.idx[:, :k], best.sims[:, :k]
        return out


def centroid_recall(x: np.ndarray, index: CentroidIndex, threads: int = 0) -> float | None:
    """Share of rows whose routed nearest centroid is their exact nearest (a flat scan); None
    when the index scans (exact by construction)."""
    if (index.router is None and index.coarse is None) or not len(x):
        return None
    exact = nearest_centroids(x, index.centroids, 1, threads).idx[:, 0]
    return float((index.nearest(x, 1, threads).idx[:, 0] == exact).mean())
