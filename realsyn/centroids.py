"""k-means and nearest-centroid search on arrays (faiss k-means, BLAS products), shared by the
stages that cluster embeddings: retrieve (the sentence index), balance (image clusters).

Embeddings are expected L2-normalised: inner product = cosine.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
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


def f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def empty_topk(m: int, k: int) -> TopK:
    return TopK(np.full((m, k), -1, np.int64), np.full((m, k), -np.inf, np.float32))


def auto_clusters(n: int, per_cluster: int) -> int:
    """About `per_cluster` sentences per cluster (paper: 2M clusters for 0.84B, ~420)."""
    return max(1, min(n, round(n / per_cluster)))


def train_kmeans(x: np.ndarray, clusters: int, *, niter: int = 20, max_train: int = 1 << 18,
                 seed: int = 0) -> np.ndarray:
    """Spherical k-means centroids (clusters x d float32), fitted on a seeded random sample of
    at most `max_train` rows and 256 per cluster. Memory: the sample (float32)."""
    n, d = x.shape
    clusters = max(1, min(clusters, n))
    size = min(max_train, 256 * clusters)
    rng = np.random.default_rng(seed)
    sample = x if n <= size else x[np.sort(rng.choice(n, size, replace=False))]
    km = faiss.Kmeans(d, clusters, niter=niter, seed=seed, spherical=True, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=len(sample) + 1)
    km.train(f32(sample))
    assert km.centroids is not None  # set by train
    return f32(km.centroids)


def top_cols(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and values of the k largest entries of each row, best first."""
    m, n = scores.shape
    if n <= k:
        cols = np.broadcast_to(np.arange(n), scores.shape)
    else:  # SIMD partition of the values finds each row's k-th best; ties need argpartition
        kth = np.partition(scores, n - k, axis=1)[:, n - k:n - k + 1]
        _, cols = np.nonzero(scores >= kth)
        cols = cols.reshape(m, k) if len(cols) == m * k else np.argpartition(scores, n - k, axis=1)[:, n - k:]
    vals = np.take_along_axis(scores, cols, axis=1)
    best = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(cols, best, axis=1), np.take_along_axis(vals, best, axis=1)


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


def merge_topk(idx: np.ndarray, sims: np.ndarray, k: int) -> TopK:
    """The k best of each row of candidate lists (m x w), by similarity, best first."""
    best = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return TopK(np.take_along_axis(idx, best, axis=1), np.take_along_axis(sims, best, axis=1))


@dataclass(frozen=True)
class Hierarchy:
    """Two-level k-means for many clusters: `coarse` cells (about sqrt(C)) and `fine` clusters
    inside each cell; cell g's fine centroids are `fine[offsets[g]:offsets[g + 1]]`, and a fine
    cluster's id is its row in `fine`. Nearest-centroid search compares a row with the cells, then
    with the fine centroids of its `probe` best cells: about sqrt(C) + probe * C / sqrt(C) products
    per row instead of C (the flat scan), which is what keeps assignment linear in the pool at the
    paper's 2M clusters."""

    coarse: np.ndarray  # (G, d) float32
    fine: np.ndarray  # (C, d) float32, grouped by cell
    offsets: np.ndarray  # (G + 1,) int64

    @classmethod
    def train(cls, sample: np.ndarray, clusters: int, *, cells: int = 0, niter: int = 20, seed: int = 0) -> Hierarchy:
        """Coarse k-means on `sample` (a bounded seeded sample of the pool), then in each cell a
        fine k-means on its members with clusters in proportion to the cell's share (at least
        one). Each cell's fit is independent (seeded by the seed and the cell), so cells can be
        fitted as separate tasks."""
        n = len(sample)
        clusters = max(1, min(clusters, n))
        cells = max(1, min(cells or round(np.sqrt(clusters)), clusters))
        coarse = train_kmeans(sample, cells, niter=niter, max_train=n, seed=seed)
        cell = nearest_centroids(sample, coarse, 1).idx[:, 0]
        sizes = np.bincount(cell, minlength=len(coarse))
        want = np.maximum(1, np.round(clusters * sizes / max(1, n))).astype(np.int64)
        want = np.minimum(want, np.maximum(sizes, 1))
        fine = [train_kmeans(sample[cell == g], int(want[g]), niter=niter, max_train=int(sizes[g]), seed=seed + 1 + g)
                if sizes[g] else coarse[g:g + 1] for g in range(len(coarse))]
        offsets = np.r_[0, np.cumsum([len(f) for f in fine])].astype(np.int64)
        return cls(f32(coarse), f32(np.concatenate(fine)), offsets)

    def nearest(self, x: np.ndarray, k: int = 1, probe: int = 1, threads: int = 0) -> TopK:
        """The `k` nearest fine centroids of every row, best first, searching its `probe` best cells."""
        cells = nearest_centroids(x, self.coarse, probe, threads).idx
        m, p = cells.shape
        hits = grouped_topk(x, np.repeat(np.arange(m), p), cells.ravel(), self.fine, self.offsets, k, threads)
        idx, sims = (a.reshape(m, p * k) for a in hits)
        return merge_topk(idx, sims, k)


def centroid_recall(x: np.ndarray, hierarchy: Hierarchy, probe: int, threads: int = 0) -> float:
    """Share of rows whose hierarchical nearest centroid is their exact nearest (flat scan)."""
    if not len(x):
        return 1.0
    exact = nearest_centroids(x, hierarchy.fine, 1, threads).idx[:, 0]
    return float((hierarchy.nearest(x, 1, probe, threads).idx[:, 0] == exact).mean())


def use_hierarchy(mode: str, clusters: int) -> bool:
    """Whether index `mode` (auto | flat | hierarchical) means the two-level index for `clusters`.
    `auto` is the flat scan for now: on the standard synthetic embeddings at d = 384 (2M
    sentences, 5k clusters, images across the modality gap) the two-level index with probe 4 found
    the nearest centroid for only 57% of images (recall@3 0.44 against 0.96 flat), so it is used
    only when asked for, with its `centroid_recall` in the manifest, until the probe is tuned."""
    return mode == "hierarchical"
