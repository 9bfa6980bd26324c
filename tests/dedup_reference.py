"""The former in-memory pHash dedup (faiss multi-hash range search, union-find): the reference the
bucketed extract dedup (`realsyn/extract/dedup.py`: `chunk_labels`, `near_pairs`) is tested against."""

from __future__ import annotations

import faiss
import numpy as np

from realsyn.dedup import cluster_keep_first


def _to_bits(hashes: np.ndarray) -> np.ndarray:
    """int64 hashes -> (n, 8) uint8 codes for faiss binary indexes."""
    return np.ascontiguousarray(hashes.astype("<i8")).view(np.uint8).reshape(-1, 8)


def near_duplicate_pairs(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i < j) of 64-bit hashes within `max_distance` bits, in memory.

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


def near_duplicates(hashes: np.ndarray, candidate: np.ndarray, max_distance: int) -> np.ndarray:
    """For each candidate row, the first row of its near-duplicate group (itself when it is the
    representative); -1 for non-candidates."""
    out = np.full(len(hashes), -1, dtype=np.int64)
    idx = np.flatnonzero(candidate)
    a, b = near_duplicate_pairs(hashes[idx], max_distance)
    out[idx] = idx[cluster_keep_first(len(idx), a, b)]
    return out
