"""Deduplication over compact arrays (global steps of extract and embed): exact keys, 64-bit
perceptual hashes, embedding neighbours above a cosine threshold, grouped with union-find.

Items are given in their global order (part, then row); in every group of duplicates the first
one is kept, so the choice is deterministic. Memory: 8 bytes per item for the hashes, plus the
near-duplicate pairs found.
"""

from __future__ import annotations

import faiss
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def first_occurrence(keys: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """For each candidate row, the index of the first candidate row with the same key
    (itself when it is the first); -1 for non-candidates."""
    out = np.full(len(keys), -1, dtype=np.int64)
    idx = np.flatnonzero(candidate)
    if len(idx) == 0:
        return out
    _, first, inverse = np.unique(keys[idx], return_index=True, return_inverse=True)
    out[idx] = idx[first][inverse.ravel()]
    return out


def _to_bits(hashes: np.ndarray) -> np.ndarray:
    """int64 hashes -> (n, 8) uint8 codes for faiss binary indexes."""
    return np.ascontiguousarray(hashes.astype("<i8")).view(np.uint8).reshape(-1, 8)


def near_duplicate_pairs(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i < j) of 64-bit hashes within `max_distance` bits.

    A faiss multi-hash index splits the code into max_distance + 1 chunks: two codes within the
    distance agree exactly on at least one chunk (pigeonhole), so the range search is exact.
    """
    n = len(hashes)
    if n < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    codes = _to_bits(hashes)
    nhash = max_distance + 1
    index = faiss.IndexBinaryMultiHash(64, nhash, 64 // nhash)
    index.add(codes)
    lims, _, labels = index.range_search(codes, max_distance + 1)  # radius is exclusive
    rows = np.repeat(np.arange(n), np.diff(lims).astype(np.int64))
    keep = rows < labels
    return rows[keep], labels[keep].astype(np.int64)


def cluster_keep_first(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Union-find over pairs: for each item, the index of its group's first member."""
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    first = np.full(labels.max() + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(first, labels, np.arange(n))
    return first[labels]


def near_duplicates(hashes: np.ndarray, candidate: np.ndarray, max_distance: int) -> np.ndarray:
    """For each candidate row, the first row of its near-duplicate group (itself when it is the
    representative); -1 for non-candidates."""
    out = np.full(len(hashes), -1, dtype=np.int64)
    idx = np.flatnonzero(candidate)
    a, b = near_duplicate_pairs(hashes[idx], max_distance)
    out[idx] = idx[cluster_keep_first(len(idx), a, b)]
    return out


def similar_pairs(emb: np.ndarray, threshold: float, exact_limit: int = 200_000,
                  per_list: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i < j) of L2-normalised rows with cosine >= `threshold`.

    Up to `exact_limit` rows the search is exact (faiss flat inner product). Beyond, rows are
    clustered with faiss k-means (about `per_list` rows per cluster, as SemDeDup does) and each
    row is compared with the rows of its own cluster only: near-duplicates almost always share
    a cluster, and the cost drops from n^2 to n * per_list.
    """
    x = np.ascontiguousarray(emb, dtype=np.float32)
    n, d = x.shape
    if n < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    index: faiss.Index
    if n <= exact_limit:
        index = faiss.IndexFlatIP(d)
    else:
        quantizer = faiss.IndexFlatIP(d)
        ivf = faiss.IndexIVFFlat(quantizer, d, max(1, n // per_list), faiss.METRIC_INNER_PRODUCT)
        ivf.cp.seed = seed
        ivf.train(x)
        ivf.nprobe = 1
        index = ivf
    index.add(x)
    lims, _, labels = index.range_search(x, float(threshold))
    rows = np.repeat(np.arange(n), np.diff(lims).astype(np.int64))
    keep = rows < labels
    return rows[keep], labels[keep].astype(np.int64)


def phash_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Differing bits of paired 64-bit hashes (int8)."""
    return np.unpackbits((a ^ b).view(np.uint8).reshape(len(a), 8), axis=1).sum(axis=1).astype(np.int8)


def semantic_duplicates(emb: np.ndarray, threshold: float, seed: int = 0, phash: np.ndarray | None = None,
                        max_phash: int = 64) -> np.ndarray:
    """For each row, the first row of its group of neighbours above `threshold` (itself when it
    is the one kept). With `phash` (int64 per row), a pair counts only if its perceptual hashes
    also differ in at most `max_phash` bits. Memory: the embeddings (n x d float32) plus the
    pairs found."""
    a, b = similar_pairs(emb, threshold, seed=seed)
    if phash is not None and len(a):
        keep = phash_bits(phash[a], phash[b]) <= max_phash
        a, b = a[keep], b[keep]
    return cluster_keep_first(len(emb), a, b)
