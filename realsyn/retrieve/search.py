"""Hierarchical nearest-sentence search on arrays (no paths): the retrieval of RealSyn §3.

Sentences are clustered with spherical k-means (faiss) and stored sorted by cluster, so every
cluster is a contiguous slice. Each image is compared with all centroids (one matrix product),
keeps its `nprobe` best clusters, and the images are grouped by cluster: the inner step is one
dense float32 product per cluster (images of c x sentences of c), followed by a partial sort.
Reading each cluster once per batch of images (instead of once per image, as an inverted-file
index does) is what makes it faster than faiss IVF at the same centroids and recall.

Rows of a result are padded with index -1 and similarity -inf when fewer than k texts qualify.
Embeddings are expected L2-normalised: inner product = cosine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import faiss
import numpy as np

from realsyn.centroids import (
    TopK,
    empty_topk,
    f32,
    grouped_topk,
    merge_topk,
    nearest_centroids,
    sort_by_group,
)


@dataclass(frozen=True)
class ClusterIndex:
    """Sentences sorted by k-means cluster: cluster c is `vectors[offsets[c]:offsets[c + 1]]`,
    and `order[r]` is the caller's row of sorted row r. `vectors` may be a read-only memmap."""

    centroids: np.ndarray  # (C, d) float32
    vectors: np.ndarray  # (n, d) float16 or float32 (widened block by block), sorted by cluster
    offsets: np.ndarray  # (C + 1,) int64
    order: np.ndarray  # (n,) int64

    @classmethod
    def build(cls, x: np.ndarray, centroids: np.ndarray, threads: int = 0) -> ClusterIndex:
        """Assign every row to its nearest centroid and sort. Memory: a sorted copy of x."""
        labels = nearest_centroids(x, centroids, 1, threads).idx[:, 0]
        order, offsets = sort_by_group(labels, len(centroids))
        return cls(f32(centroids), f32(x[order]), offsets, order)

    def search(self, q: np.ndarray, k: int = 3, nprobe: int = 1, threads: int = 0) -> tuple[TopK, np.ndarray]:
        """Hierarchical top-k of every query: (hits as the caller's rows, nearest cluster)."""
        if len(self.centroids) == 0:
            return empty_topk(len(q), k), np.full(len(q), -1, np.int32)
        probes = nearest_centroids(q, self.centroids, nprobe, threads).idx
        m, p = probes.shape
        hits = grouped_topk(q, np.repeat(np.arange(m), p), probes.ravel(), self.vectors, self.offsets, k, threads)
        idx, sims = (a.reshape(m, p * k) for a in hits)
        if p > 1:
            idx, sims = merge_topk(idx, sims, k)
        return TopK(np.where(idx >= 0, self.order[idx], -1), sims), probes[:, 0].astype(np.int32)


def context_bonus(same: np.ndarray, distance: np.ndarray, doc_bonus: float, near_bonus: float) -> np.ndarray:
    """Ranking bonus of texts from the image's own document: `doc_bonus` plus `near_bonus`
    divided by the distance in document items (at least 1); 0 for other documents' texts."""
    return np.where(same, doc_bonus + near_bonus / np.maximum(distance, 1), 0).astype(np.float32)


def document_topk(q: np.ndarray, q_doc: np.ndarray, base: np.ndarray, base_doc: np.ndarray,
                  k: int, threads: int = 0, q_pos: np.ndarray | None = None,
                  base_pos: np.ndarray | None = None, near_bonus: float = 0.0) -> TopK:
    """Top-k of every query among the base rows of its own document (one product per
    document); indices are rows of `base`. Documents are any comparable labels. With positions
    and `near_bonus`, rows are ranked by cosine + `context_bonus` (nearer text first); the
    returned sims are the raw cosines either way."""
    if len(base) == 0:
        return empty_topk(len(q), k)
    docs, codes = np.unique(np.concatenate([base_doc, q_doc]), return_inverse=True)
    b_code, q_code = codes[:len(base_doc)], codes[len(base_doc):]
    order, offsets = sort_by_group(b_code, len(docs))
    bonus = None
    if near_bonus and q_pos is not None and base_pos is not None:
        pos = np.asarray(base_pos)[order]

        def bonus(r: np.ndarray, a: int, b: int) -> np.ndarray:
            return context_bonus(np.ones(1, bool), np.abs(q_pos[r, None] - pos[None, a:b]), 0.0, near_bonus)
    hits = grouped_topk(q, np.arange(len(q)), q_code, f32(base[order]), offsets, k, threads, bonus)
    idx = np.where(hits.idx >= 0, order[np.maximum(hits.idx, 0)], -1)
    if bonus is None:
        return TopK(idx, hits.sims)
    raw = np.einsum("md,mkd->mk", f32(q), f32(base[np.maximum(idx, 0)]))
    return TopK(idx, np.where(idx >= 0, raw, -np.inf).astype(np.float32))


def hybrid_merge(glob: TopK, glob_bonus: np.ndarray, doc: TopK, doc_bonus: np.ndarray, k: int) -> TopK:
    """The k best of the global and the document lists, ranked by similarity plus each text's
    bonus (see `context_bonus`); a text in both lists counts once. Returned sims are the raw
    cosines (so with a bonus they need not be descending)."""
    idx = np.hstack([glob.idx, doc.idx])
    sims = np.hstack([glob.sims, doc.sims])
    score = np.where(idx >= 0, sims + np.hstack([glob_bonus, doc_bonus]), -np.inf)
    best = np.argsort(-score, axis=1, kind="stable")
    idx, sims, score = (np.take_along_axis(a, best, axis=1) for a in (idx, sims, score))
    w = idx.shape[1]
    earlier = np.triu(np.ones((w, w), bool), 1)  # earlier[i, j]: i comes before j
    dup = ((idx[:, :, None] == idx[:, None, :]) & earlier).any(axis=1) & (idx >= 0)
    score = np.where(dup, -np.inf, score)
    keep = np.argsort(-score, axis=1, kind="stable")[:, :k]
    idx, sims, score = (np.take_along_axis(a, keep, axis=1) for a in (idx, sims, score))
    valid = np.isfinite(score)
    return TopK(np.where(valid, idx, -1), np.where(valid, sims, -np.inf).astype(np.float32))


def drop_below(hits: TopK, min_sim: float | None) -> TopK:
    """Drop texts with similarity below `min_sim` (rows may get shorter); order is kept."""
    if min_sim is None:
        return hits
    keep = (hits.idx >= 0) & (hits.sims >= min_sim)
    first = np.argsort(~keep, axis=1, kind="stable")
    keep = np.take_along_axis(keep, first, axis=1)
    return TopK(np.where(keep, np.take_along_axis(hits.idx, first, axis=1), -1),
                np.where(keep, np.take_along_axis(hits.sims, first, axis=1), -np.inf).astype(np.float32))


def exact_topk(q: np.ndarray, base: np.ndarray, k: int, block: int = 1 << 20) -> TopK:
    """Exact inner-product top-k (faiss IndexFlatIP over blocks of `block` base rows, merged):
    the reference for recall. Memory: one block (float32) at a time."""
    best = empty_topk(len(q), k)
    qf = f32(q)
    for a in range(0, len(base), block):
        index = faiss.IndexFlatIP(base.shape[1])
        index.add(f32(base[a:a + block]))
        sims, idx = index.search(qf, k)
        idx = np.where(idx >= 0, idx + a, -1)
        best = merge_topk(np.hstack([best.idx, idx]), np.hstack([best.sims, np.where(idx >= 0, sims, -np.inf)]), k)
    return TopK(best.idx, best.sims.astype(np.float32))


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each row's exact top-k indices found in its approximate list."""
    if exact.size == 0:
        return 1.0
    found = ((approx[:, :, None] == exact[:, None, :]) & (exact[:, None, :] >= 0)).any(axis=1).sum()
    return float(found / max(1, (exact >= 0).sum()))


def similarity_spread(images: np.ndarray, texts: np.ndarray) -> float:
    """Standard deviation of the cosine between images and texts (rows L2-normalised): the unit
    in which an encoder's similarities differ. The bridge and a real CLIP differ several-fold in
    it, so ranking bonuses are set in this unit, not in raw cosine."""
    if not len(images) or not len(texts):
        return 1.0
    sims = images.astype(np.float32) @ texts.astype(np.float32).T
    return float(max(sims.std(), 1e-6))


@dataclass(frozen=True)
class Scope:
    """Which texts an image may get (`retrieve.scope`) and how same-document texts rank."""

    name: str  # global | document | hybrid
    k: int
    min_sim: float | None = None
    doc_bonus: float = 0.0  # in cosine units (the stage scales the config's spread units)
    near_bonus: float = 0.0


Context = Callable[[TopK], tuple[np.ndarray, np.ndarray]]
"""(m, k) flags "the text comes from the image's own document" and distances in document items
of a list of hits (the caller reads them from its tables)."""


def apply_scope(glob: TopK, doc: TopK | None, scope: Scope, context: Context) -> TopK:
    """The texts of each image under `scope`: `global` the pool's best, `document` its own
    document's best, `hybrid` both lists merged with `context_bonus` (a text in both counts once).
    `min_sim` drops weak texts from each list first, so they never crowd out the other's."""
    glob = drop_below(glob, scope.min_sim)
    if scope.name == "global" or doc is None:
        return glob
    doc = drop_below(doc, scope.min_sim)
    if scope.name == "document":
        return doc
    return hybrid_merge(glob, context_bonus(*context(glob), scope.doc_bonus, scope.near_bonus),
                        doc, context_bonus(*context(doc), scope.doc_bonus, scope.near_bonus), scope.k)
