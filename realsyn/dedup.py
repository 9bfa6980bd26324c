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


MAX_LABELS = 1 << 20  # label values per chunk pair (wider pairs share labels: compared anyway)


def chunk_labels(phash: np.ndarray, distance: int, values: int) -> np.ndarray:
    """(n, K) labels of 64-bit hashes: cut into m = t + 2 chunks of 64 // m bits, two hashes
    within t bits agree on at least two chunks, so each pair of chunks (K = m (m - 1) / 2) gives
    a label, k x values + (the two chunks' bits mod values). Any two hashes within t bits share a
    label; hashes that share one are compared, so a collision of the modulo costs time only."""
    m = distance + 2
    width = 64 // m
    u = phash.view(np.uint64)
    parts = [(u >> np.uint64(c * width)) & np.uint64((1 << width) - 1) for c in range(m)]
    pairs = [(c, d) for c in range(m) for d in range(c + 1, m)]
    out = np.empty((len(phash), len(pairs)), np.int64)
    for k, (c, d) in enumerate(pairs):
        out[:, k] = k * values + ((parts[c] << np.uint64(width)) | parts[d]) % np.uint64(values)
    return out


def label_values(n: int) -> int:
    """Values per chunk pair for `n` hashes: about one hash per value, 1024 to MAX_LABELS."""
    return int(min(MAX_LABELS, max(1024, 1 << int(np.ceil(np.log2(max(1, n)))))))


SMALL_GROUP = 64  # label groups up to this size are compared all at once, larger ones in blocks


def near_pairs(phash: np.ndarray, rows: np.ndarray, offsets: np.ndarray, distance: int, block: int = 1 << 22) -> np.ndarray:
    """(a, b) rows, a < b, within each group (`offsets`: entries sharing a label, rows in
    increasing order) whose hashes differ in at most `distance` bits; each pair once."""
    sizes = np.diff(offsets)
    found = []
    pos = np.arange(len(rows))
    end = np.repeat(offsets[1:], sizes)  # end of each entry's group
    small = np.repeat(sizes <= SMALL_GROUP, sizes)
    for k in range(1, int(sizes[sizes <= SMALL_GROUP].max(initial=0))):  # each entry with the one k later
        i = pos[small & (pos + k < end)]
        near = np.bitwise_count((phash[i] ^ phash[i + k]).view(np.uint64)) <= distance
        found.append(np.stack([rows[i[near]], rows[i[near] + k]], axis=1))
    for g in np.flatnonzero(sizes > SMALL_GROUP):
        a, e = int(offsets[g]), int(offsets[g + 1])
        h, r = phash[a:e], rows[a:e]
        step = max(1, block // len(h))
        for s in range(0, len(h), step):
            i, j = np.nonzero(np.bitwise_count((h[s:s + step, None] ^ h[None, :]).view(np.uint64)) <= distance)
            i += s
            later = i < j
            found.append(np.stack([r[i[later]], r[j[later]]], axis=1))
    return np.unique(np.concatenate(found), axis=0) if found else np.zeros((0, 2), np.int64)


def cluster_keep_first(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Union-find over pairs: for each item, the index of its group's first member."""
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    first = np.full(labels.max() + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(first, labels, np.arange(n))
    return first[labels]


def similar_pairs(emb: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i < j) of L2-normalised rows with cosine >= `threshold`: one exact faiss range
    search (n^2 d; embed calls it up to `semantic.EXACT_MAX` rows, its clustered search beyond)."""
    x = np.ascontiguousarray(emb, dtype=np.float32)
    n, d = x.shape
    if n < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    index = faiss.IndexFlatIP(d)
    index.add(x)
    lims, _, labels = index.range_search(x, float(threshold))
    rows = np.repeat(np.arange(n), np.diff(lims).astype(np.int64))
    keep = rows < labels
    return rows[keep], labels[keep].astype(np.int64)


def phash_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Differing bits of paired 64-bit hashes (int8)."""
    return np.unpackbits((a ^ b).view(np.uint8).reshape(len(a), 8), axis=1).sum(axis=1).astype(np.int8)


def semantic_duplicates(emb: np.ndarray, threshold: float, phash: np.ndarray | None = None,
                        max_phash: int = 64) -> np.ndarray:
    """For each row, the first row of its group of neighbours above `threshold` (itself when it
    is the one kept). With `phash` (int64 per row), a pair counts only if its perceptual hashes
    also differ in at most `max_phash` bits. Memory: the embeddings (n x d float32) plus the
    pairs found."""
    a, b = similar_pairs(emb, threshold)
    if phash is not None and len(a):
        keep = phash_bits(phash[a], phash[b]) <= max_phash
        a, b = a[keep], b[keep]
    return cluster_keep_first(len(emb), a, b)
