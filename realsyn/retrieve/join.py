"""retrieve's search as a bucketed join over the blocks of the sorted index (`index.py`).

1. route: one task per group of image parts (the pairs tasks' groups) finds each kept image's
   `nprobe` nearest clusters and writes, per (image, block it probes), the image's vector and
   its probes in that block: `queries/q-J.{vectors,rows,probes,first,bounds}.npy`, sorted by
   block.
2. join: one task per block (and run of image groups) reads the block once and scores all the
   images that probe it, one dense product per cluster (`grouped_topk`): `join/T-J.npz`, the
   top-k pool rows and cosines of each (image, block).
3. `gather` (in the pairs task of group J) merges an image's lists from the blocks it probed.

Memory: a join task holds one block and its queries; a route task its images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from realsyn.buckets import load, local, save
from realsyn.centroids import TopK, empty_topk, grouped_topk, merge_topk
from realsyn.config import RetrieveConfig
from realsyn.retrieve.index import NAME, block_path, iter_blocks, kept_part, open_centroids
from realsyn.runtime.workspace import atomic_path


def _query_path(work: Path, j: int, what: str) -> Path:
    return work / NAME / "queries" / f"q-{j:05d}.{what}.npy"


def _join_path(work: Path, t: int, j: int) -> Path:
    return work / NAME / "join" / f"{t:05d}-{j:05d}.npz"


def search_block(q: np.ndarray, probes: np.ndarray, base: np.ndarray, offsets: np.ndarray,
                 base_rows: np.ndarray, k: int, threads: int = 0) -> TopK:
    """Top-k of each query among the clusters it probes in one block: `probes` (m, p) are
    cluster ids local to the block (-1: not in it); hits are `base_rows` entries."""
    m, p = probes.shape
    valid = (probes >= 0).ravel()
    hits = grouped_topk(q, np.repeat(np.arange(m), p)[valid], probes.ravel()[valid], base, offsets, k, threads)
    out = empty_topk(m * p, k)
    out.idx[valid], out.sims[valid] = hits.idx, hits.sims
    idx, sims = out.idx.reshape(m, p * k), out.sims.reshape(m, p * k)
    if p > 1:
        idx, sims = merge_topk(idx, sims, k)
    return TopK(np.where(idx >= 0, np.asarray(base_rows)[np.maximum(idx, 0)], -1), sims)


def merge_lists(rows: np.ndarray, idx: np.ndarray, sims: np.ndarray, m: int, k: int) -> TopK:
    """The k best of each of `m` queries from lists (row, k hits) in any number per query, in
    the given order for equal similarities."""
    out = empty_topk(m, k)
    if not len(rows):
        return out
    order = np.argsort(rows, kind="stable")
    rows, idx, sims = rows[order], idx[order], sims[order]
    first = np.r_[0, np.flatnonzero(rows[1:] != rows[:-1]) + 1]
    slot = np.arange(len(rows)) - np.repeat(first, np.diff(np.r_[first, len(rows)]))
    width = int(slot.max()) + 1
    cand = empty_topk(m, width * k)
    cols = slot[:, None] * k + np.arange(k)
    cand.idx[rows[:, None], cols], cand.sims[rows[:, None], cols] = idx, sims
    return merge_topk(cand.idx, cand.sims, k) if width > 1 else cand


@dataclass(frozen=True)
class RouteTask:
    index: int  # image group J
    parts: tuple[int, ...]
    starts: tuple[int, ...]  # first embed row of each part
    work: Path
    cfg: RetrieveConfig
    threads: int


def images_of(work: Path, parts: tuple[int, ...], starts: tuple[int, ...]) -> np.ndarray:
    """The kept image embeddings of some parts, in order (embed dtype)."""
    got = []
    for i, start in zip(parts, starts):
        _, emb, mask = kept_part(work, "images", i, start)
        got.append(emb[mask])
    return np.concatenate(got)


def route(task: RouteTask) -> int:
    """Phase 1 for one image group: its (image, block) queries sorted by block."""
    out = task.work / NAME
    q = images_of(task.work, task.parts, task.starts)
    blocks = load(out / "blocks.npy", mmap=False)
    m, n_blocks = len(q), len(blocks) - 1
    probes = open_centroids(out, task.cfg).nearest(q, int(task.cfg.nprobe), task.threads).idx if m and n_blocks else np.zeros((m, 1), np.int64)
    block = np.searchsorted(blocks, probes, side="right") - 1
    keys = np.unique((block * m + np.arange(m)[:, None]).ravel()) if m and n_blocks else np.zeros(0, np.int64)
    rows, blk = keys % max(1, m), keys // max(1, m)
    mine = np.where(block[rows] == blk[:, None], probes[rows] - blocks[blk][:, None], -1)
    save(q[rows], _query_path(task.work, task.index, "vectors"))
    save(rows, _query_path(task.work, task.index, "rows"))
    save(mine, _query_path(task.work, task.index, "probes"))
    save(probes[:, 0].astype(np.int32) if m and n_blocks else np.full(m, -1, np.int32), _query_path(task.work, task.index, "first"))
    save(np.searchsorted(blk, np.arange(n_blocks + 1)).astype(np.int64), _query_path(task.work, task.index, "bounds"))
    return m


@dataclass(frozen=True)
class JoinTask:
    index: int  # block T
    groups: tuple[int, ...]  # image groups J
    work: Path
    k: int
    threads: int


def join(task: JoinTask) -> int:
    """Phase 2 for one block and some image groups: each group's queries of the block scored."""
    t, done = task.index, 0
    base, base_rows, offsets = (load(block_path(task.work, t, w)) for w in ("vectors", "rows", "offsets"))
    offsets = np.asarray(offsets)
    for j in task.groups:
        bounds = load(_query_path(task.work, j, "bounds"), mmap=False)
        a, e = int(bounds[t]), int(bounds[t + 1])
        q = np.asarray(load(_query_path(task.work, j, "vectors"))[a:e])
        probes = np.asarray(load(_query_path(task.work, j, "probes"))[a:e])
        hits = search_block(q, probes, base, offsets, base_rows, task.k, task.threads)
        with atomic_path(_join_path(task.work, t, j)) as tmp, open(tmp, "wb") as f:
            np.savez(f, rows=np.asarray(load(_query_path(task.work, j, "rows"))[a:e]), idx=hits.idx, sims=hits.sims)
        done += e - a
    return done


def plan_joins(work: Path, groups: list[int], n_blocks: int, k: int, per_task: int) -> list[JoinTask]:
    """Join tasks of the groups still to do: per block, runs of groups of about `per_task`
    queries; a (block, group) whose output exists is left out."""
    sizes = {j: np.diff(load(_query_path(work, j, "bounds"), mmap=False)) for j in groups}
    tasks = []
    for t in range(n_blocks):
        run: list[int] = []
        filled = 0
        for j in groups:
            if _join_path(work, t, j).exists():
                continue
            run.append(j)
            filled += int(sizes[j][t])
            if filled >= per_task:
                tasks.append(JoinTask(t, tuple(run), work, k, 1))
                run, filled = [], 0
        if run:
            tasks.append(JoinTask(t, tuple(run), work, k, 1))
    return tasks


def routed(work: Path, j: int) -> bool:
    return _query_path(work, j, "bounds").exists()


def gather(work: Path, j: int, m: int, k: int, n_blocks: int) -> tuple[TopK, np.ndarray]:
    """The global top-k (pool rows) and nearest cluster of group j's `m` images, merged from
    the blocks they probed."""
    got = []
    for t in range(n_blocks):
        with np.load(local(_join_path(work, t, j)), allow_pickle=False) as z:
            got.append((z["rows"], z["idx"], z["sims"]))
    if got:
        rows, idx, sims = (np.concatenate([g[i] for g in got]) for i in range(3))
    else:
        rows, idx, sims = np.zeros(0, np.int64), np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    return merge_lists(rows, idx, sims, m, k), np.asarray(load(_query_path(work, j, "first")))


def search(out: Path, q: np.ndarray, cfg: RetrieveConfig, threads: int = 0) -> TopK:
    """The same search for a few queries in memory (one block at a time): for recall."""
    blocks = load(out / "blocks.npy", mmap=False)
    if len(blocks) < 2 or not len(q):
        return empty_topk(len(q), cfg.k)
    probes = open_centroids(out, cfg).nearest(q, int(cfg.nprobe), threads).idx
    block = np.searchsorted(blocks, probes, side="right") - 1
    lists = []
    for t, (lo, base, base_rows) in enumerate(iter_blocks(out)):
        hit = (block == t).any(axis=1)
        if hit.any():
            local = np.where(block[hit] == t, probes[hit] - lo, -1)
            offsets = load(block_path(out.parent, t, "offsets"), mmap=False)
            h = search_block(q[hit], local, base, offsets, base_rows, cfg.k, threads)
            lists.append((np.flatnonzero(hit), h.idx, h.sims))
    rows, idx, sims = (np.concatenate([g[i] for g in lists]) for i in range(3))
    return merge_lists(rows, idx, sims, len(q), cfg.k)

