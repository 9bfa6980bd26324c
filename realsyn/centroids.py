"""k-means and nearest-centroid search on arrays (faiss k-means, BLAS products), shared by the
stages that cluster embeddings: retrieve (the sentence index), balance (image clusters).

Embeddings are expected L2-normalised: inner product = cosine.
"""

from __future__ import annotations

from typing import NamedTuple

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
