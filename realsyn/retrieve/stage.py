"""The retrieve stage: every kept image gets its k best real sentences (paper §3).

Global step (in the driver), resumable: loads the kept sentence embeddings (n x d in the embed
dtype, float16 by default, plus ~24 bytes per sentence for labels, order and rank), fits
spherical k-means on a sample, assigns
every sentence to its centroid and writes the index under `retrieve/`, each file atomically:
`centroids.npy` (written first: a killed run never redoes k-means), `vectors.npy` (embeddings
sorted by cluster, in the embed dtype, written through a memmap), `offsets.npy`, `order.npy` /
`rank.npy`
(sorted row <-> pool row), `parts.npy` (pool rows of each extract part), `images_kept.npy` and
`sentences.arrow` (sentence_id, doc_id, position, text in pool order). The pool is the kept sentences in
part order.

Per-part step: each task takes consecutive image parts (about `images_per_task` images),
memory-maps the index (nothing large is pickled), searches all its images at once, grouped by
cluster, applies the scope and `min_sim`, and writes `retrieve/pairs/part-N.parquet`.

The manifest gets the counts (an image is kept when it has at least one text), the top-1
similarity summary, the share of same-document texts and the recall@k of the hierarchical search
against exact search on a seeded sample of images.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from realsyn.centroids import (
    Hierarchy,
    TopK,
    auto_clusters,
    centroid_recall,
    sort_by_group,
    train_kmeans,
    use_hierarchy,
)
from realsyn.config import RetrieveConfig
from realsyn.embed import stage as embed
from realsyn.extract import stage as extract
from realsyn.retrieve import uses
from realsyn.retrieve.search import (
    ClusterIndex,
    Scope,
    apply_scope,
    document_topk,
    exact_topk,
    recall_at_k,
    similarity_spread,
)
from realsyn.runtime.context import Context, PipelineError
from realsyn.runtime.executor import cpu_count
from realsyn.runtime.stage import Plan, Stage
from realsyn.runtime.workspace import atomic_path, summarize
from realsyn.tables import (
    EMBED,
    EMBED_DEDUP,
    EXTRACT_IMAGES,
    EXTRACT_SENTENCES,
    RETRIEVE_INDEX,
    RETRIEVE_PAIRS,
    read_embeddings,
)

NAME = "retrieve"
_BINS = 2000  # top-1 similarity histogram over [-1, 1]: percentiles to 0.001
_TEXT_COLUMNS = ["sentence_id", "doc_id", "position", "text"]


@dataclass(frozen=True)
class _Task:
    parts: tuple[int, ...]
    starts: tuple[int, ...]  # first row of each part in the concatenated embed image parts
    work: Path
    cfg: RetrieveConfig
    threads: int


def _save(arr: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr)


def _save_sorted(x: np.ndarray, order: np.ndarray, path: Path, chunk: int = 1 << 16) -> None:
    """Save `x[order]` without a second copy in memory (written through a memmap)."""
    if len(x) == 0:
        return _save(x, path)
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=x.dtype, shape=x.shape)
        with open(tmp, "r+b") as f:  # reserve the blocks now: a full disk is ENOSPC here, not SIGBUS on a page write
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        for a in range(0, len(x), chunk):
            out[a:a + chunk] = x[order[a:a + chunk]]
        out.flush()
        del out


def _load(path: Path) -> np.ndarray:
    """A read-only memmap of an .npy file (a plain load when it is empty)."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError:
        return np.load(path, allow_pickle=False)


def _kept_mask(dedup: Path) -> np.ndarray:
    """Kept flags of an embed dedup table, row-aligned with the embed parts concatenated."""
    return pc.equal(pq.read_table(dedup, columns=["status"])["status"], "kept").to_numpy(zero_copy_only=False)


def _load_pool(work: Path, out: Path, n_parts: int) -> np.ndarray:
    """Kept sentence embeddings in part order (n x d in the embed dtype, float16 by default,
    filled in place: searches widen them to float32 block by block, which gives the same values);
    writes `sentences.arrow` and `parts.npy`."""
    kept = _kept_mask(EMBED_DEDUP["sentences"].path(work))
    x, rows, row = np.zeros((0, 0), np.float32), [0], 0
    schema = pa.schema([(c, pa.int32() if c == "position" else pa.string()) for c in _TEXT_COLUMNS])
    with atomic_path(out / "sentences.arrow") as tmp, pa.ipc.new_file(str(tmp), schema) as writer:
        for i in range(n_parts):
            ids, emb = read_embeddings([EMBED["sentences"].path(work, i)], "sentence_id", None)
            mask = kept[row:row + len(ids)]
            row += len(ids)
            texts = EXTRACT_SENTENCES.kept(work, i, _TEXT_COLUMNS).filter(pa.array(mask))
            if texts["sentence_id"].to_pylist() != [s for s, m in zip(ids, mask) if m]:
                raise PipelineError(f"retrieve: sentence part {i} of extract and embed do not match; rerun embed")
            writer.write_table(texts.cast(schema))
            if x.shape[1] != emb.shape[1]:
                x = np.empty((int(kept.sum()), emb.shape[1]), emb.dtype)
            x[rows[-1]:rows[-1] + int(mask.sum())] = emb[mask]
            rows.append(rows[-1] + int(mask.sum()))
    _save(np.asarray(rows, np.int64), out / "parts.npy")
    return x[:rows[-1]]


def _build_index(ctx: Context, out: Path, n_parts: int, threads: int) -> None:
    """The global step (skipped when the manifest says the index is complete)."""
    if "clusters" in ctx.ws.stage(NAME):
        return
    rc, seed = ctx.cfg.retrieve, ctx.cfg.runtime.seed
    _save(_kept_mask(EMBED_DEDUP["images"].path(ctx.ws.root)), out / "images_kept.npy")
    x = _load_pool(ctx.ws.root, out, n_parts)
    n, d = x.shape
    clusters = min(n, rc.clusters or auto_clusters(n, rc.sentences_per_cluster))
    started = time.time()
    if not (out / "centroids.npy").exists():
        if n and use_hierarchy(rc.index, clusters):  # coarse cells first; centroids.npy last marks it done
            h = Hierarchy.train(_sample(x, clusters, rc.max_train, seed), clusters, niter=rc.niter, seed=seed)
            _save(h.coarse, out / "coarse.npy")
            _save(h.offsets, out / "cells.npy")
            cent = h.fine
        else:
            cent = train_kmeans(x, clusters, niter=rc.niter, max_train=rc.max_train, seed=seed) if n else np.zeros((0, d), np.float32)
        _save(cent, out / "centroids.npy")
    cent = np.load(out / "centroids.npy", allow_pickle=False)
    labels = _centroid_index(out, cent, rc).nearest(x, 1, threads).idx[:, 0] if n else np.zeros(0, np.int64)
    order, offsets = sort_by_group(labels, len(cent))
    _save_sorted(x, order, out / "vectors.npy")
    rank = np.empty_like(order)
    rank[order] = np.arange(n)
    for name, arr in (("offsets", offsets), ("order", order), ("rank", rank)):
        _save(arr, out / f"{name}.npy")
    ctx.ws.note(NAME, sentences=n, clusters=len(cent), index_seconds=round(time.time() - started, 3),
                sim_spread=round(_spread(ctx, x, n_parts), 6))


def _spread(ctx: Context, x: np.ndarray, n_parts: int, sample: int = 2048) -> float:
    """`similarity_spread` on a seeded sample of kept images (parts in a seeded order) and texts."""
    rng = np.random.default_rng(ctx.cfg.runtime.seed)
    texts = x[np.sort(rng.choice(len(x), min(len(x), 2 * sample), replace=False))] if len(x) else x
    kept, starts, images = _load(ctx.ws.dir(NAME) / "images_kept.npy"), [0], list[np.ndarray]()
    for i in range(n_parts):
        starts.append(starts[-1] + pq.ParquetFile(EMBED["images"].path(ctx.ws.root, i)).metadata.num_rows)
    for i in rng.permutation(n_parts):
        if sum(len(e) for e in images) >= sample:
            break
        emb = read_embeddings([EMBED["images"].path(ctx.ws.root, int(i))], "image_id")[1]
        images.append(emb[np.asarray(kept[starts[i]:starts[i + 1]])])
    q = np.concatenate(images)[:sample] if images else np.zeros((0, x.shape[1]), np.float32)
    return similarity_spread(q, texts)


def _sample(x: np.ndarray, clusters: int, max_train: int, seed: int) -> np.ndarray:
    """A seeded sample of the pool for the two-level k-means: at most `max_train` rows and 256
    per cluster (faiss's guideline), in pool order."""
    size = min(len(x), max_train, 256 * clusters)
    return x if size == len(x) else x[np.sort(np.random.default_rng(seed).choice(len(x), size, replace=False))]


def _centroid_index(out: Path, centroids: np.ndarray, rc: RetrieveConfig) -> ClusterIndex:
    """The centroid search of the index in `out` (no sentences yet): flat, or two-level when
    `coarse.npy` exists."""
    hierarchy = None
    if (out / "coarse.npy").exists():
        hierarchy = Hierarchy(np.load(out / "coarse.npy", allow_pickle=False), centroids,
                              np.load(out / "cells.npy", allow_pickle=False))
    return ClusterIndex(centroids, np.zeros((0, centroids.shape[1]), np.float32), np.zeros(1, np.int64),
                        np.zeros(0, np.int64), hierarchy, rc.coarse_probe)


def _open_index(out: Path, rc: RetrieveConfig) -> tuple[ClusterIndex, pa.Table]:
    base = _centroid_index(out, np.load(out / "centroids.npy", allow_pickle=False), rc)
    index = replace(base, vectors=_load(out / "vectors.npy"), offsets=np.load(out / "offsets.npy", allow_pickle=False),
                    order=_load(out / "order.npy"))
    return index, pa.ipc.open_file(pa.memory_map(str(out / "sentences.arrow"))).read_all()


def _part_images(work: Path, index: int, start: int) -> tuple[pa.Table, np.ndarray]:
    """(image_id, doc_id, position) and embeddings of one part's images kept by dedup."""
    ids, emb = read_embeddings([EMBED["images"].path(work, index)], "image_id")
    mask = np.asarray(_load(work / NAME / "images_kept.npy")[start:start + len(ids)])
    rows = EXTRACT_IMAGES.kept(work, index, ["image_id", "doc_id", "position"]).filter(pa.array(mask))
    if rows["image_id"].to_pylist() != [s for s, m in zip(ids, mask) if m]:
        raise PipelineError(f"retrieve: image part {index} of extract and embed do not match; rerun embed")
    return rows, emb[mask]


def _context(idx: np.ndarray, images: pa.Table, sentences: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(m, k) flags (the text at idx comes from the image's own document) and distances in
    document items between image and text (meaningful where the flag is set)."""
    same, dist = np.zeros(idx.shape, bool), np.zeros(idx.shape, np.int64)
    valid = idx >= 0
    texts = sentences.select(["doc_id", "position"]).take(pa.array(idx[valid]))

    def image_column(name: str) -> np.ndarray:
        return np.broadcast_to(images[name].to_numpy(zero_copy_only=False)[:, None], idx.shape)[valid]

    same[valid] = texts["doc_id"].to_numpy(zero_copy_only=False) == image_column("doc_id")
    dist[valid] = np.abs(texts["position"].to_numpy().astype(np.int64) - image_column("position"))
    return same, dist


def _document_hits(task: _Task, index: ClusterIndex, sentences: pa.Table, q: np.ndarray,
                   images: pa.Table, sizes: list[int]) -> TopK:
    """Document-scope top-k: each part's images against the kept sentences of the same part
    (a document's images and sentences are always in one extract part), nearer text ranked up
    by `near_bonus`."""
    parts, rank = np.load(task.work / NAME / "parts.npy", allow_pickle=False), _load(task.work / NAME / "rank.npy")
    docs = images["doc_id"].to_numpy(zero_copy_only=False)
    pos = images["position"].to_numpy(zero_copy_only=False).astype(np.int64)
    out, lo = [], 0
    for i, size in zip(task.parts, sizes):
        a, b = int(parts[i]), int(parts[i + 1])
        base_doc = sentences["doc_id"].slice(a, b - a).to_numpy()
        base_pos = sentences["position"].slice(a, b - a).to_numpy().astype(np.int64)
        sl = slice(lo, lo + size)
        hits = document_topk(q[sl], docs[sl], index.vectors[rank[a:b]], base_doc, task.cfg.k, task.threads,
                             pos[sl], base_pos, task.cfg.near_bonus)
        out.append(TopK(np.where(hits.idx >= 0, hits.idx + a, -1), hits.sims))
        lo += size
    return TopK(np.concatenate([h.idx for h in out]), np.concatenate([h.sims for h in out]))


def _pairs_table(images: pa.Table, hits: TopK, same: np.ndarray, cluster: np.ndarray, sentences: pa.Table) -> pa.Table:
    valid = hits.idx >= 0  # valid entries are a prefix of each row
    n_texts = valid.sum(axis=1)
    offsets = pa.array(np.r_[0, np.cumsum(n_texts)].astype(np.int32))
    texts = sentences.take(pa.array(hits.idx[valid]))

    def lists(values: pa.Array | pa.ChunkedArray) -> pa.ListArray:
        values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
        return pa.ListArray.from_arrays(offsets, values)

    return images.append_column("text_ids", lists(texts["sentence_id"])).append_column(
        "texts", lists(texts["text"])).append_column(
        "sims", lists(pa.array(hits.sims[valid], pa.float32()))).append_column(
        "same_doc", lists(pa.array(same[valid], pa.bool_()))).append_column(
        "cluster", pa.array(cluster, pa.int32())).append_column(
        "status", pa.array(np.where(n_texts > 0, "kept", "rejected"), pa.string())).append_column(
        "reason", pa.array([None if n else "no_text" for n in n_texts], pa.string()))


def _process(task: _Task) -> int:
    """Search the images of some consecutive parts and write their pairs (runs in a worker)."""
    rc = task.cfg
    index, sentences = _open_index(task.work / NAME, rc)
    loaded = [_part_images(task.work, i, s) for i, s in zip(task.parts, task.starts)]
    images = pa.concat_tables([t for t, _ in loaded])
    q = np.concatenate([e for _, e in loaded]) if images.num_rows else np.zeros((0, index.vectors.shape[1]), np.float32)
    sizes = [t.num_rows for t, _ in loaded]
    glob, cluster = index.search(q, rc.k, rc.nprobe, task.threads)
    doc = _document_hits(task, index, sentences, q, images, sizes) if rc.scope != "global" else None
    scope = Scope(rc.scope, rc.k, rc.min_sim, rc.doc_bonus, rc.near_bonus)
    hits = apply_scope(glob, doc, scope, lambda h: _context(h.idx, images, sentences))
    same = _context(hits.idx, images, sentences)[0]
    lo = 0
    for i, size in zip(task.parts, sizes):
        sl = slice(lo, lo + size)
        table = _pairs_table(images.select(["image_id", "doc_id"]).slice(lo, size), TopK(hits.idx[sl], hits.sims[sl]), same[sl], cluster[sl], sentences)
        RETRIEVE_PAIRS.write(task.work, table, i)
        lo += size
    return images.num_rows


def _plan(work: Path, starts: np.ndarray, cfg: RetrieveConfig, threads: int) -> list[_Task]:
    """Consecutive parts batched to about `images_per_task` images; a task whose parts all
    exist is skipped (a task always rewrites all its parts, so a resumed run is identical)."""
    groups: list[list[int]] = []
    size = cfg.images_per_task
    for i in range(len(starts) - 1):
        if size >= cfg.images_per_task:
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += int(starts[i + 1] - starts[i])
    return [_Task(tuple(g), tuple(int(starts[i]) for i in g), work, cfg, threads) for g in groups
            if not all(RETRIEVE_PAIRS.path(work, i).exists() for i in g)]


def _summary(paths: list[Path]) -> dict:
    """Counts, top-1 similarity (mean and percentiles, from a histogram) and same-doc share."""
    counts, hist = Counter[str](), np.zeros(_BINS, np.int64)
    total, same, texts = 0.0, 0, 0
    for p in paths:
        t = pq.read_table(p, columns=["sims", "same_doc", "reason"])
        counts.update("kept" if r is None else f"rejected:{r}" for r in t["reason"].to_pylist())
        lengths = pc.list_value_length(t["sims"]).to_numpy(zero_copy_only=False)
        flat = pc.list_flatten(t["sims"]).to_numpy()
        first = flat[np.r_[0, np.cumsum(lengths)[:-1]][lengths > 0]] if len(lengths) else flat[:0]
        hist += np.histogram(first, _BINS, (-1.0, 1.0))[0]
        total += float(first.astype(np.float64).sum())
        flags = pc.list_flatten(t["same_doc"]).to_numpy(zero_copy_only=False)
        same, texts = same + int(flags.sum()), texts + len(flags)
    n = int(hist.sum())
    cdf = np.cumsum(hist)
    pct = {f"p{q}": round(-1 + (int(np.searchsorted(cdf, q / 100 * n)) + 0.5) * 2 / _BINS, 3) for q in (10, 50, 90)}
    return {"images": summarize(counts), "texts": texts, "same_doc_fraction": round(same / texts, 4) if texts else None,
            "top1_sim": {"mean": round(total / n, 4), **pct} if n else None}


def _recall(work: Path, index: ClusterIndex, starts: np.ndarray, cfg: RetrieveConfig, seed: int, threads: int) -> dict:
    """recall@k of the hierarchical search (global scope, configured nprobe) against exact
    search, on a seeded random sample of the kept images. Memory: the sample and one block."""
    pool = np.flatnonzero(_load(work / NAME / "images_kept.npy"))
    size = min(cfg.recall_sample, len(pool))
    if size == 0 or len(index.centroids) == 0:
        return {"recall_at_k": None, "recall_images": 0}
    rows = np.sort(np.random.default_rng(seed).choice(pool, size, replace=False))
    part = np.searchsorted(starts, rows, side="right") - 1
    q = np.concatenate([read_embeddings([EMBED["images"].path(work, int(p))], "image_id")[1][rows[part == p] - starts[p]]
                        for p in np.unique(part)])
    approx = index.search(q, cfg.k, cfg.nprobe, threads)[0].idx
    exact = exact_topk(q, index.vectors, cfg.k).idx
    out = {"recall_at_k": round(recall_at_k(approx, np.where(exact >= 0, index.order[exact], -1)), 4), "recall_images": size}
    if index.hierarchy is not None:  # the coarse-to-fine centroid step alone, against the flat scan
        out["centroid_recall"] = round(centroid_recall(q, index.hierarchy, index.probe, threads), 4)
    return out


def _cap_uses(ctx: Context, out: Path) -> None:
    """`retrieve.max_uses` over the finished pairs (resumable: the choices are saved before any
    part is rewritten, and rewriting is idempotent)."""
    rc, paths = ctx.cfg.retrieve, RETRIEVE_PAIRS.parts(ctx.ws.root)
    if not rc.max_uses or ctx.ws.stage(NAME).get("max_uses_done"):
        return
    if not (out / "uses.npy").exists():
        chosen, counts = uses.assign(paths, rc.max_uses, rc.k)
        ctx.ws.note(NAME, **counts)
        _save(chosen, out / "uses.npy")
    uses.apply(paths, _load(out / "uses.npy"))
    ctx.ws.note(NAME, max_uses_done=True)


def _plan_stage(ctx: Context, out: Path) -> Plan:
    """The index (a global step, resumable), then the search tasks of the parts not yet done."""
    ws, cfg = ctx.ws, ctx.cfg
    n_parts = ws.stage(extract.NAME)["parts"]
    _build_index(ctx, out, n_parts, cpu_count())
    sizes = [pq.ParquetFile(EMBED["images"].path(ws.root, i)).metadata.num_rows for i in range(n_parts)]
    starts = np.r_[0, np.cumsum(sizes)].astype(np.int64)
    spread = ws.stage(NAME).get("sim_spread", 1.0)  # bonuses are in units of the encoder's similarity spread
    rc = cfg.retrieve.model_copy(update={"doc_bonus": cfg.retrieve.doc_bonus * spread,
                                         "near_bonus": cfg.retrieve.near_bonus * spread})
    tasks = _plan(ws.root, starts, rc, 1)
    threads = ctx.executor.threads_for(len(tasks))
    return Plan([replace(t, threads=threads) for t in tasks], info=(starts, spread))


def _finish(ctx: Context, out: Path, plan: Plan) -> dict:
    """`max_uses` over the finished pairs, then the counts, the similarity summary and recall."""
    ws, cfg = ctx.ws, ctx.cfg
    starts, spread = plan.info
    _cap_uses(ctx, out)
    index, _ = _open_index(out, cfg.retrieve)
    stage = ws.stage(NAME)
    counts = {**_summary(RETRIEVE_PAIRS.parts(ws.root)), "sentences": stage["sentences"], "clusters": stage["clusters"],
              "sim_spread": spread, **{k: v for k, v in stage.items() if k.startswith("max_uses_") and k != "max_uses_done"},
              "scope": cfg.retrieve.scope, **_recall(ws.root, index, starts, cfg.retrieve, cfg.runtime.seed, cpu_count())}
    return counts


STAGE = Stage(NAME, embed.STAGE, _finish, config=("retrieve",), plan=_plan_stage, process=_process, unit="images",
              reads=(EXTRACT_IMAGES, EXTRACT_SENTENCES, *EMBED.values(), *EMBED_DEDUP.values()),
              writes=(RETRIEVE_PAIRS, RETRIEVE_INDEX))
stage_key, run = STAGE.key, STAGE.run
