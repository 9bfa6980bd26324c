"""The retrieve stage: every kept image gets its k best real sentences (paper §3).

The sentence index is built out of core as tasks (`index.py`: sample, k-means in the driver on
the sample, assignment, blocks of the sorted index), the images are routed to their clusters
and joined with the blocks they probe (`join.py`), all resumable. Then one task per group of
consecutive image parts (about `images_per_task` images) merges its images' global lists,
adds the document-scope lists (each part's images against the same part's sentences), applies
the scope and `min_sim`, and writes `retrieve/pairs/part-N.parquet`. `finish` caps text reuse
(`max_uses`), deletes the intermediate `queries/` and `join/`, and records the counts, the top-1
similarity summary, the share of same-document texts and the recall@k of the search against
exact search on a seeded sample of images.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from realsyn.buckets import Groups, load, local, part_sizes, remove, save
from realsyn.centroids import TopK
from realsyn.config import RetrieveConfig
from realsyn.embed import stage as embed
from realsyn.extract import stage as extract
from realsyn.retrieve import index, join, recall, uses
from realsyn.retrieve.search import Scope, apply_scope, document_topk
from realsyn.runtime.context import Context, PipelineError
from realsyn.runtime.executor import cpu_count
from realsyn.runtime.stage import Plan, Stage
from realsyn.runtime.workspace import summarize
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


@dataclass(frozen=True)
class _Task:
    index: int  # image group J
    parts: tuple[int, ...]
    starts: tuple[int, ...]  # first row of each part in the concatenated embed image parts
    sentence_starts: tuple[int, ...]  # the same for the sentence parts
    work: Path
    cfg: RetrieveConfig
    threads: int
    blocks: int


def _part_images(work: Path, index: int, start: int) -> tuple[pa.Table, np.ndarray]:
    """(image_id, doc_id, position) and embeddings of one part's images kept by dedup."""
    ids, emb = read_embeddings([EMBED["images"].path(work, index)], "image_id")
    mask = np.asarray(load(work / NAME / "images_kept.npy")[start:start + len(ids)])
    rows = EXTRACT_IMAGES.kept(work, index, ["image_id", "doc_id", "position"]).filter(pa.array(mask))
    if rows["image_id"].to_pylist() != [s for s, m in zip(ids, mask) if m]:
        raise PipelineError(f"retrieve: image part {index} of extract and embed do not match; rerun embed")
    return rows, emb[mask]


def _part_texts(work: Path, part: int) -> pa.Table:
    """The kept sentences of one part (sentence_id, doc_id, position, text), memory-mapped."""
    path = local(work / NAME / "texts" / f"part-{part:05d}.arrow")
    return pa.ipc.open_file(pa.memory_map(str(path))).read_all()


def _texts(work: Path, pool: np.ndarray, rows: np.ndarray) -> pa.Table:
    """The texts of sorted pool rows, in that order (each part's file read once)."""
    part = np.searchsorted(pool, rows, side="right") - 1
    pieces = [_part_texts(work, int(i)).take(pa.array(rows[part == i] - pool[i])) for i in np.unique(part)]
    return pa.concat_tables(pieces) if pieces else index.TEXT_SCHEMA.empty_table()


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


def _document_hits(task: _Task, pool: np.ndarray, q: np.ndarray, images: pa.Table, sizes: list[int]) -> TopK:
    """Document-scope top-k (pool rows): each part's images against the kept sentences of the
    same part (a document's images and sentences are always in one extract part), nearer text
    ranked up by `near_bonus`."""
    docs = images["doc_id"].to_numpy(zero_copy_only=False)
    pos = images["position"].to_numpy(zero_copy_only=False).astype(np.int64)
    out, lo = [], 0
    for i, start, size in zip(task.parts, task.sentence_starts, sizes):
        a = int(pool[i])
        texts = _part_texts(task.work, i)
        _, emb, mask = index.kept_part(task.work, "sentences", i, start)
        sl = slice(lo, lo + size)
        hits = document_topk(q[sl], docs[sl], emb[mask], texts["doc_id"].to_numpy(), task.cfg.k, task.threads,
                             pos[sl], texts["position"].to_numpy().astype(np.int64), task.cfg.near_bonus)
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
    """Merge, scope and write the pairs of one group of image parts (runs in a worker)."""
    rc = task.cfg
    pool = load(task.work / NAME / "parts.npy", mmap=False)
    loaded = [_part_images(task.work, i, s) for i, s in zip(task.parts, task.starts)]
    images = pa.concat_tables([t for t, _ in loaded])
    q = np.concatenate([e for _, e in loaded])
    sizes = [t.num_rows for t, _ in loaded]
    glob, cluster = join.gather(task.work, task.index, images.num_rows, rc.k, task.blocks)
    doc = _document_hits(task, pool, q, images, sizes) if rc.scope != "global" else None
    rows = np.unique(np.concatenate([glob.idx.ravel(), doc.idx.ravel() if doc is not None else []]).astype(np.int64))
    rows = rows[rows >= 0]
    texts = _texts(task.work, pool, rows)

    def local(h: TopK) -> TopK:  # pool rows -> rows of `texts`
        return TopK(np.where(h.idx >= 0, np.searchsorted(rows, h.idx), -1), h.sims)

    scope = Scope(rc.scope, rc.k, rc.min_sim, rc.doc_bonus, rc.near_bonus)
    hits = apply_scope(local(glob), local(doc) if doc is not None else None, scope,
                       lambda h: _context(h.idx, images, texts))
    same = _context(hits.idx, images, texts)[0]
    lo = 0
    for i, size in zip(task.parts, sizes):
        sl = slice(lo, lo + size)
        table = _pairs_table(images.select(["image_id", "doc_id"]).slice(lo, size), TopK(hits.idx[sl], hits.sims[sl]),
                             same[sl], cluster[sl], texts)
        RETRIEVE_PAIRS.write(task.work, table, i)
        lo += size
    return images.num_rows


def _plan(work: Path, starts: np.ndarray, sentence_starts: np.ndarray, cfg: RetrieveConfig, blocks: int) -> list[_Task]:
    """Consecutive parts batched to about `images_per_task` images; a task whose parts all
    exist is skipped (a task always rewrites all its parts, so a resumed run is identical)."""
    groups = Groups.of(starts, cfg.images_per_task)
    return [_Task(j, g, groups.starts(j, starts), groups.starts(j, sentence_starts), work, cfg, 1, blocks)
            for j, g in enumerate(groups.parts) if not all(RETRIEVE_PAIRS.path(work, i).exists() for i in g)]


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


def _cap_uses(ctx: Context, out: Path) -> None:
    """`retrieve.max_uses` over the finished pairs (resumable: the choices are saved before any
    part is rewritten, and rewriting is idempotent)."""
    rc, paths = ctx.cfg.retrieve, RETRIEVE_PAIRS.parts(ctx.ws.root)
    if not rc.max_uses or ctx.ws.stage(NAME).get("max_uses_done"):
        return
    if not (out / "uses.npy").exists():
        chosen, counts = uses.assign(paths, rc.max_uses, rc.k)
        ctx.ws.note(NAME, **counts)
        save(chosen, out / "uses.npy")
    uses.apply(paths, load(out / "uses.npy"))
    ctx.ws.note(NAME, max_uses_done=True)


def _plan_stage(ctx: Context, out: Path) -> Plan:
    """The index, the routing and the join (resumable task phases), then the pairs tasks of the
    parts not yet done."""
    ws, cfg = ctx.ws, ctx.cfg
    n_parts = ws.stage(extract.NAME)["parts"]
    first = {kind: part_sizes(ws.root, kind, n_parts) for kind in ("images", "sentences")}
    spread = index.build(ctx, out, first)  # bonuses are in units of the encoder's similarity spread
    starts, sentence_starts = first["images"], first["sentences"]
    probe = _nprobe(ctx, out, starts)
    rc = cfg.retrieve.model_copy(update={"doc_bonus": cfg.retrieve.doc_bonus * spread, "nprobe": probe["nprobe"],
                                         "near_bonus": cfg.retrieve.near_bonus * spread})
    blocks = len(load(out / "blocks.npy", mmap=False)) - 1
    tasks = _plan(ws.root, starts, sentence_starts, rc, blocks)
    routes = [join.RouteTask(t.index, t.parts, t.starts, ws.root, rc, 1) for t in tasks if not join.routed(ws.root, t.index)]
    each = ctx.executor.threads_for(len(routes))
    ctx.executor.run(join.route, [replace(r, threads=each) for r in routes], f"{NAME}: route", "images")
    joins = join.plan_joins(ws.root, [t.index for t in tasks], blocks, rc.k, rc.images_per_task)
    each = ctx.executor.threads_for(len(joins))
    ctx.executor.run(join.join, [replace(t, threads=each) for t in joins], f"{NAME}: join", "images")
    each = ctx.executor.threads_for(len(tasks))
    return Plan([replace(t, threads=each) for t in tasks], info=(starts, spread, probe))


def _nprobe(ctx: Context, out: Path, starts: np.ndarray) -> dict:
    """The search's nprobe (`recall.choose`), kept in the manifest so a resumed run searches
    with the same one."""
    if "nprobe" not in ctx.ws.stage(NAME):
        q = recall.sample(ctx.ws.root, starts, ctx.cfg.retrieve, ctx.cfg.runtime.seed)
        ctx.ws.note(NAME, **recall.choose(ctx.ws.root, q, ctx.cfg.retrieve, cpu_count()))
    stage = ctx.ws.stage(NAME)
    return {key: stage[key] for key in ("nprobe", "nprobe_target_met", "recall_by_nprobe") if key in stage}


def _finish(ctx: Context, out: Path, plan: Plan) -> dict:
    """`max_uses` over the finished pairs, then the counts, the similarity summary and recall."""
    ws, cfg = ctx.ws, ctx.cfg
    starts, spread, probe = plan.info
    _cap_uses(ctx, out)
    remove(out, "queries", "join")
    stage = ws.stage(NAME)
    counts = {**_summary(RETRIEVE_PAIRS.parts(ws.root)), "sentences": stage["sentences"], "clusters": stage["clusters"],
              "blocks": stage["blocks"], "sim_spread": spread,
              **{k: v for k, v in stage.items() if k.startswith("max_uses_") and k != "max_uses_done"},
              "scope": cfg.retrieve.scope, **probe,
              **recall.measure(ws.root, recall.sample(ws.root, starts, cfg.retrieve, cfg.runtime.seed), cfg.retrieve,
                               probe["nprobe"], cpu_count())}
    return counts


STAGE = Stage(NAME, embed.STAGE, _finish, config=("retrieve",), plan=_plan_stage, process=_process, unit="images",
              reads=(EXTRACT_IMAGES, EXTRACT_SENTENCES, *EMBED.values(), *EMBED_DEDUP.values()),
              writes=(RETRIEVE_PAIRS, RETRIEVE_INDEX))
stage_key, run = STAGE.key, STAGE.run
