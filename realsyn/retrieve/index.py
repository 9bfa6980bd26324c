"""retrieve's sentence index, built out of core as executor tasks (local or Ray).

The pool is the kept sentences in part order; a sentence's pool row is its place in it. Phases,
each resumable (a task whose last output exists is skipped), files under `retrieve/`:

1. flags: `sentences_kept.npy`, `images_kept.npy` (1 byte per item, streamed from embed's
   dedup tables) and `parts.npy` (first pool row of each extract part).
2. sample: tasks read seeded pool rows from their parts (the k-means sample, at most `max_train`
   and 256 per cluster, written to `sample/`, and the texts of `similarity_spread`); one task
   fits the `CentroidIndex` on the sample (`buckets.fit`) and splits the clusters into blocks, consecutive cluster ranges
   of about `block_sentences` sentences by the sample's counts: `centroids.npy`, `cells.npy`,
   `coarse.npy` (the cells routed through, past 16,384 clusters), `router.npy` (the serialised
   HNSW graph, past 65,536 clusters), `blocks.npy`.
3. assign: one task per group of sentence parts finds each kept sentence's cluster and writes
   `assign/s-J.{vectors,rows,labels,bounds}.npy`, sorted by cluster (so bucketed by block),
   vectors in the embed dtype; and `texts/part-N.arrow` (sentence_id, doc_id, position, text).
4. blocks: one task per block gathers its rows from every assign output, sorts them by cluster
   (pool order within a cluster) and writes `blocks/b-T.{vectors,rows,offsets}.npy`; then
   `assign/` is deleted.

Memory: the driver holds the centroids, 4,096 sampled texts and 1 byte per item for the kept
flags it streams; a task holds its parts' vectors, the k-means sample (at most `max_train` x d,
float32), or one block twice (about 2 x `block_sentences` x d x 2 bytes). No process holds an
n x d array.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from realsyn.buckets import (
    Fit,
    Groups,
    done,
    embed_part,
    fit_index,
    gather,
    load,
    open_index,
    read_rows,
    remove,
    save,
    save_index,
    write_sorted,
)
from realsyn.centroids import CentroidIndex, auto_clusters, seeded_rows
from realsyn.config import RetrieveConfig
from realsyn.runtime.context import Context, PipelineError
from realsyn.runtime.workspace import atomic_path
from realsyn.tables import EMBED_DEDUP, EXTRACT_SENTENCES

NAME = "retrieve"
TEXT_COLUMNS = ["sentence_id", "doc_id", "position", "text"]
TEXT_SCHEMA = pa.schema([(c, pa.int32() if c == "position" else pa.string()) for c in TEXT_COLUMNS])
SPREAD_TEXTS = 4096  # texts sampled for the encoder's similarity spread


def kept_flags(dedup: Path, out: Path, batch: int = 1 << 20) -> int:
    """Stream the kept flags of an embed dedup table into `out` (.npy of bool); returns the
    number of rows. Memory: one batch."""
    f = pq.ParquetFile(dedup)
    n = f.metadata.num_rows
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "|b1", "fortran_order": False, "shape": (n,)})
        for b in f.iter_batches(batch, columns=["status"]):
            fh.write(pc.equal(b.column(0), "kept").to_numpy(zero_copy_only=False).astype(bool).tobytes())
    return n


def kept_part(work: Path, kind: str, index: int, start: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Ids, embeddings (embed dtype) and kept flags of one embed part."""
    return embed_part(work, kind, index, start, work / NAME / f"{kind}_kept.npy")


def train(ctx: Context, out: Path, groups: Groups, starts: dict[str, np.ndarray]) -> float:
    """Phase 2: the sample, the centroids and the blocks (skipped when `blocks.npy` exists);
    returns the encoder's similarity spread (from the sampled texts and images). The k-means
    sample goes from the reading tasks to the fitting task through files (`buckets.fit`)."""
    from realsyn.retrieve.search import similarity_spread

    rc, seed = ctx.cfg.retrieve, ctx.cfg.runtime.seed
    if (out / "blocks.npy").exists():
        return float(ctx.ws.stage(NAME).get("sim_spread", 1.0))
    pool = load(out / "parts.npy", mmap=False)
    n = int(pool[-1])
    clusters = min(n, rc.clusters or auto_clusters(n, rc.sentences_per_cluster))
    train_rows = seeded_rows(n, min(rc.max_train, 256 * max(1, clusters)), seed)
    rng = np.random.default_rng(seed)
    spread_rows = np.sort(rng.choice(n, min(n, SPREAD_TEXTS), replace=False)) if n else np.zeros(0, np.int64)
    _, texts = read_rows(ctx, "sentences", groups, starts["sentences"], pool, [train_rows, spread_rows],
                         out / "sentences_kept.npy", spill=out if n else None)
    spread = round(similarity_spread(_image_sample(ctx, rng, starts["images"]), texts), 6)  # as the manifest keeps it, for resume
    ctx.ws.note(NAME, sentences=n, sim_spread=spread)  # before blocks.npy marks the phase done
    if n:
        fit_index(ctx, Fit(out, len(groups.parts), clusters, n, rc.block_sentences, rc.index, rc.niter, seed, rc.hnsw_ef),
                  f"{NAME}: k-means")
    else:
        save_index(CentroidIndex.of(np.zeros((0, 1), np.float32), np.zeros(1, np.int64)), out)
        save(np.zeros(1, np.int64), out / "blocks.npy")
    return spread


def _image_sample(ctx: Context, rng: np.random.Generator, starts: np.ndarray, size: int = 2048) -> np.ndarray:
    """Kept image embeddings of parts taken in a seeded order until `size` (float32)."""
    images, got = list[np.ndarray](), 0
    for i in rng.permutation(len(starts) - 1):
        if got >= size:
            break
        _, emb, mask = kept_part(ctx.ws.root, "images", int(i), int(starts[i]))
        images.append(emb[mask].astype(np.float32))
        got += len(images[-1])
    return np.concatenate(images)[:size] if images else np.zeros((0, 1), np.float32)


def open_centroids(out: Path, rc: RetrieveConfig) -> CentroidIndex:
    return open_index(out, rc.hnsw_ef)


@dataclass(frozen=True)
class AssignTask:
    index: int
    parts: tuple[int, ...]
    starts: tuple[int, ...]  # first embed row of each part
    work: Path
    cfg: RetrieveConfig
    threads: int


def _assign_prefix(work: Path, j: int) -> Path:
    return work / NAME / "assign" / f"s-{j:05d}"


def assign(task: AssignTask) -> int:
    """Phase 3 for one group of sentence parts: texts per part, and the kept vectors with their
    pool rows and clusters, sorted by cluster, with the row range of each block."""
    out = task.work / NAME
    pool, blocks = load(out / "parts.npy", mmap=False), load(out / "blocks.npy", mmap=False)
    vecs = []
    for i, start in zip(task.parts, task.starts):
        ids, emb, mask = kept_part(task.work, "sentences", i, start)
        texts = EXTRACT_SENTENCES.kept(task.work, i, TEXT_COLUMNS).filter(pa.array(mask))
        if texts["sentence_id"].to_pylist() != [s for s, m in zip(ids, mask) if m]:
            raise PipelineError(f"retrieve: sentence part {i} of extract and embed do not match; rerun embed")
        with atomic_path(out / "texts" / f"part-{i:05d}.arrow") as tmp, pa.ipc.new_file(str(tmp), TEXT_SCHEMA) as w:
            w.write_table(texts.cast(TEXT_SCHEMA))
        vecs.append(emb[mask])
    x = np.concatenate(vecs)
    rows = np.arange(pool[task.parts[0]], pool[task.parts[-1] + 1], dtype=np.int64)
    labels = open_centroids(out, task.cfg).nearest(x, 1, task.threads).idx[:, 0] if len(x) else np.zeros(0, np.int64)
    write_sorted(_assign_prefix(task.work, task.index), x, rows, labels, blocks)
    return len(x)


@dataclass(frozen=True)
class BlockTask:
    index: int  # block T
    sources: int  # assign tasks
    work: Path


def block_path(work: Path, t: int, what: str) -> Path:
    return work / NAME / "blocks" / f"b-{t:05d}.{what}.npy"


def gather_block(task: BlockTask) -> int:
    """Phase 4 for one block: its rows of every assign output, sorted by cluster."""
    blocks = load(task.work / NAME / "blocks.npy", mmap=False)
    x, rows, offsets, _ = gather([_assign_prefix(task.work, j) for j in range(task.sources)], blocks, task.index)
    save(x, block_path(task.work, task.index, "vectors"))
    save(rows, block_path(task.work, task.index, "rows"))
    save(offsets, block_path(task.work, task.index, "offsets"))  # last: marks the block done
    return len(rows)


def build(ctx: Context, out: Path, starts: dict[str, np.ndarray]) -> float:
    """The whole index (phases 1-4, resumable); returns the similarity spread. `starts`: the
    first embed row of each part, per kind (`part_sizes`)."""
    rc, ws, started = ctx.cfg.retrieve, ctx.ws, time.time()
    n_parts = len(starts["sentences"]) - 1
    if not (out / "parts.npy").exists():
        kept_flags(EMBED_DEDUP["images"].path(ws.root), out / "images_kept.npy")
        kept_flags(EMBED_DEDUP["sentences"].path(ws.root), out / "sentences_kept.npy")
        flags, first = load(out / "sentences_kept.npy"), starts["sentences"]
        if len(flags) != first[-1]:
            raise PipelineError("retrieve: embed's sentence parts and dedup table differ in rows; rerun embed")
        kept = [int(np.count_nonzero(flags[first[i]:first[i + 1]])) for i in range(n_parts)]
        save(np.r_[0, np.cumsum(kept)].astype(np.int64), out / "parts.npy")
    pool = load(out / "parts.npy", mmap=False)
    groups = Groups.of(pool, rc.sentences_per_task)
    spread = train(ctx, out, groups, starts)
    ws.note(NAME, clusters=len(load(out / "centroids.npy")))
    if ws.stage(NAME).get("index_built"):
        return spread
    blocks = load(out / "blocks.npy", mmap=False)
    todo = [j for j in range(len(groups.parts)) if not done(_assign_prefix(ws.root, j))]
    each = ctx.executor.threads_for(len(todo))
    ctx.executor.run(assign, [AssignTask(j, groups.parts[j], groups.starts(j, starts["sentences"]), ws.root, rc, each)
                              for j in todo], f"{NAME}: assign", "sentences")
    tasks = [BlockTask(t, len(groups.parts), ws.root) for t in range(len(blocks) - 1)
             if not block_path(ws.root, t, "offsets").exists()]
    ctx.executor.run(gather_block, tasks, f"{NAME}: sort", "sentences")
    ws.note(NAME, index_built=True, blocks=len(blocks) - 1, index_seconds=round(time.time() - started, 3))
    remove(out, "assign")
    return spread


def iter_blocks(out: Path) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(first cluster, vectors, pool rows) of every block, memory-mapped, in order."""
    blocks = load(out / "blocks.npy", mmap=False)
    for t in range(len(blocks) - 1):
        work = out.parent
        yield int(blocks[t]), load(block_path(work, t, "vectors")), load(block_path(work, t, "rows"))
