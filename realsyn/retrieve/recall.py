"""Recall of retrieve's search against exact search, and the automatic `nprobe` chosen from it.

The sample is `recall_sample` kept images drawn with the seed, read once and kept in
`retrieve/recall_queries.npy`. Its exact top-k over the sorted index (every block read once) and
the cluster of each hit are computed once and kept in `retrieve/recall.npz`. The search scores
every sentence of the clusters an image probes, so an exact hit is found at nprobe p exactly
when its cluster is among the image's p best clusters: recall at every nprobe follows from the
probes alone, before any search runs (ties apart).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from realsyn.buckets import load, save
from realsyn.centroids import TopK, best_cols, centroid_recall, empty_topk, seeded_rows
from realsyn.config import RetrieveConfig
from realsyn.retrieve.index import NAME, block_path, iter_blocks, open_centroids
from realsyn.retrieve.join import search
from realsyn.retrieve.search import exact_topk, recall_at_k
from realsyn.runtime.workspace import atomic_path
from realsyn.tables import EMBED, read_embeddings


def sample(work: Path, starts: np.ndarray, cfg: RetrieveConfig, seed: int) -> np.ndarray:
    """The embeddings of the sampled kept images (drawn among 4 x recall_sample rows, then the
    kept ones), float32; read from their parts once, then from `retrieve/recall_queries.npy`."""
    cached = work / NAME / "recall_queries.npy"
    if cached.exists():
        return load(cached, mmap=False)
    kept = load(work / NAME / "images_kept.npy")
    draw = seeded_rows(len(kept), min(len(kept), 4 * cfg.recall_sample), seed)
    rows = draw[np.asarray(kept[draw], bool)][:cfg.recall_sample]
    part = np.searchsorted(starts, rows, side="right") - 1
    got = [read_embeddings([EMBED["images"].path(work, int(p))], "image_id")[1][rows[part == p] - starts[p]]
           for p in np.unique(part)]
    q = np.concatenate(got).astype(np.float32) if got else np.zeros((0, 1), np.float32)
    save(q, cached)
    return q


def exact(out: Path, q: np.ndarray, k: int) -> tuple[TopK, np.ndarray]:
    """Exact top-k of the queries over every block (pool rows), and the cluster of each hit
    (-1 for none). Memory: the queries and one block."""
    best, clusters = empty_topk(len(q), k), np.full((len(q), k), -1, np.int64)
    for t, (first, base, base_rows) in enumerate(iter_blocks(out)):
        if not len(base):
            continue
        h = exact_topk(q, base, k, block=1 << 17)  # 2 x 128k x d float32 at a time
        offsets = load(block_path(out.parent, t, "offsets"), mmap=False)
        found = h.idx >= 0
        idx = np.where(found, np.asarray(base_rows)[np.maximum(h.idx, 0)], -1)
        cl = np.where(found, first + np.searchsorted(offsets, np.maximum(h.idx, 0), side="right") - 1, -1)
        sims = np.hstack([best.sims, h.sims])
        order = best_cols(sims, k)  # the k best so far, as merge_topk, carrying each hit's cluster
        best = TopK(np.take_along_axis(np.hstack([best.idx, idx]), order, axis=1), np.take_along_axis(sims, order, axis=1))
        clusters = np.take_along_axis(np.hstack([clusters, cl]), order, axis=1)
    return best, clusters


def truth(out: Path, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(pool rows, clusters) of the sample's exact top-k, computed once per index."""
    path = out / "recall.npz"
    if not path.exists():
        hits, clusters = exact(out, q, k)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, idx=hits.idx, clusters=clusters)
    with np.load(path, allow_pickle=False) as z:
        return z["idx"], z["clusters"]


def by_nprobe(out: Path, q: np.ndarray, cfg: RetrieveConfig, most: int, threads: int) -> list[float]:
    """recall@k of the search at nprobe 1..most on the sample (exact, from the probes)."""
    _, clusters = truth(out, q, cfg.k)
    probes = open_centroids(out, cfg).nearest(q, most, threads).idx
    valid = clusters >= 0
    if not valid.any():
        return [1.0] * most
    hit = (clusters[:, :, None] == probes[:, None, :]) & valid[:, :, None]  # (m, k, most)
    return [round(float(hit[:, :, :p].any(axis=2).sum() / valid.sum()), 4) for p in range(1, most + 1)]


def _nothing(out: Path, q: np.ndarray) -> bool:
    """Whether there is nothing to measure: no sampled image, or an index without sentences."""
    return not len(q) or int(load(out / "parts.npy", mmap=False)[-1]) == 0


def choose(work: Path, q: np.ndarray, cfg: RetrieveConfig, threads: int) -> dict:
    """The nprobe for the search: the configured one, or with `auto` the smallest whose recall
    reaches `target_recall` (at most `max_nprobe`); with the recall of each nprobe tried."""
    out = work / NAME
    if cfg.nprobe != "auto":
        return {"nprobe": cfg.nprobe}
    if _nothing(out, q):
        return {"nprobe": 1}
    recalls = by_nprobe(out, q, cfg, cfg.max_nprobe, threads)
    met = [p for p, r in enumerate(recalls, 1) if r >= cfg.target_recall]
    return {"nprobe": met[0] if met else cfg.max_nprobe, "nprobe_target_met": bool(met),
            "recall_by_nprobe": recalls[:met[0] if met else cfg.max_nprobe]}


def measure(work: Path, q: np.ndarray, cfg: RetrieveConfig, nprobe: int, threads: int) -> dict:
    """recall@k of the search (global scope, `nprobe`) against exact search on the sample, and
    of the centroid step against a scan where it is routed."""
    out = work / NAME
    if _nothing(out, q):
        return {"recall_at_k": None, "recall_images": 0}
    approx = search(out, q, cfg.model_copy(update={"nprobe": nprobe}), threads).idx
    found = {"recall_at_k": round(recall_at_k(approx, truth(out, q, cfg.k)[0]), 4), "recall_images": len(q)}
    routed = centroid_recall(q, open_centroids(out, cfg), threads)
    if routed is not None:  # the routed centroid step alone, against the flat scan
        found["centroid_recall"] = round(routed, 4)
    return found
