"""The embed stage: embeddings of the kept images and sentences, then semantic dedup.

Phase 1 (one task per extract part and modality) writes `embed/images/part-N.parquet` and
`embed/sentences/part-N.parquet`: ids and L2-normalised embeddings, row-aligned. Phase 2, per
modality, finds the neighbours above the configured cosine (for images calibrated per encoder by
default: `embed/calibrate.py`), groups them with union-find and keeps the first of each group:
one exact search in the driver for small pools, SemDeDup's per-cluster search as executor tasks
beyond (`embed/semantic.py`); `embed/dedup_images.parquet` and `embed/dedup_sentences.parquet` give every embedded item's
status, reason (`semantic_duplicate`) and the id it duplicates (`dup_of`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from realsyn.buckets import part_sizes
from realsyn.embed import semantic
from realsyn.embed.calibrate import copy_cosines, pair_cosines, threshold
from realsyn.embed.semantic import Gate
from realsyn.extract import stage as extract
from realsyn.models.registry import spec_files
from realsyn.runtime.context import Context
from realsyn.runtime.stage import Plan, Resources, Stage
from realsyn.runtime.workspace import part_name, summarize, write_table
from realsyn.tables import (
    EMBED,
    EMBED_DEDUP,
    EXTRACT_BLOBS,
    EXTRACT_IMAGES,
    EXTRACT_SENTENCES,
    embedding_table,
)

NAME = "embed"
KINDS = {"images": "image_id", "sentences": "sentence_id"}


@dataclass(frozen=True)
class _Task:
    kind: str
    index: int
    work: Path
    out: Path
    model: str
    device: str
    batch_size: int
    dtype: str
    threads: int


def _process(task: _Task) -> int:
    """Phase 1 for one part of one modality (runs in a worker)."""
    import torch

    from realsyn.models import load

    torch.set_num_threads(task.threads)
    model = load("joint", task.model, task.device)
    id_col = KINDS[task.kind]
    if task.kind == "images":
        rows = EXTRACT_IMAGES.kept(task.work, task.index, [id_col])
        blobs = EXTRACT_BLOBS.read(task.work, task.index)
        data = dict(zip(blobs["image_id"].to_pylist(), blobs["data"].to_pylist()))
        items = [data[i] for i in rows[id_col].to_pylist()]
        embed = model.embed_images
    else:
        rows = EXTRACT_SENTENCES.kept(task.work, task.index, [id_col, "text"])
        items = rows["text"].to_pylist()
        embed = model.embed_texts
    chunks = [embed(items[a:a + task.batch_size]) for a in range(0, len(items), task.batch_size)]
    emb = np.concatenate(chunks) if chunks else np.zeros((0, model.dim), np.float32)
    write_table(embedding_table(rows[id_col].to_pylist(), emb, id_col, task.dtype),
                task.out / task.kind / part_name(task.index))
    return len(items)


@dataclass(frozen=True)
class _Calibration:
    work: Path
    parts: int
    sample: int
    seed: int
    model: str
    device: str
    batch_size: int
    threads: int


def _calibrate(task: _Calibration) -> tuple[np.ndarray, np.ndarray]:
    """(cosines of a seeded sample of kept images with their re-encoded copies, cosines of the
    sample's distinct pairs); runs in a worker, one extract part's images in memory at a time."""
    import torch

    from realsyn.models import load

    torch.set_num_threads(task.threads)
    rng, images = np.random.default_rng(task.seed), list[bytes]()
    for i in rng.permutation(task.parts):
        ids = EXTRACT_IMAGES.kept(task.work, int(i), ["image_id"])["image_id"].to_pylist()
        want = set(rng.permutation(ids)[:task.sample - len(images)].tolist()) if ids else set()
        blobs = EXTRACT_BLOBS.read(task.work, int(i))
        images += [d for k, d in zip(blobs["image_id"].to_pylist(), blobs["data"].to_pylist()) if k in want]
        if len(images) >= task.sample:
            break
    model = load("joint", task.model, task.device)
    done = [copy_cosines(images[a:a + task.batch_size], model.embed_images) for a in range(0, len(images), task.batch_size)]
    if not done:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    return np.concatenate([c for c, _ in done]), pair_cosines(np.concatenate([e for _, e in done]))


def _image_threshold(ctx: Context, n_parts: int) -> float:
    """The configured semantic image dedup threshold, or with `auto` the calibrated one
    (measured once per stage run and kept in the manifest, so a resumed run uses the same)."""
    ec = ctx.cfg.embed
    if ec.image_dedup_threshold != "auto":
        return float(ec.image_dedup_threshold)
    if "image_dedup_threshold" not in ctx.ws.stage(NAME):
        task = _Calibration(ctx.ws.root, n_parts, ec.image_dedup_sample, ctx.cfg.runtime.seed,
                            ctx.cfg.models.joint, ctx.cfg.runtime.device, ctx.cfg.models.batch_size, ctx.executor.threads_for(1))
        copies, pairs = next(iter(ctx.executor.map(_calibrate, [task])))
        value = threshold(copies, pairs, ec.image_dedup_quantile, ec.image_dedup_pair_quantile)

        def q(x: np.ndarray, at: float) -> float | None:
            return round(float(np.quantile(x, at)), 6) if len(x) else None

        ctx.ws.note(NAME, image_dedup_threshold=round(value, 6) if value is not None else 1.0001,
                    image_dedup_calibration={"images": len(copies), "copy_cosine_q": q(copies, ec.image_dedup_quantile),
                                             "distinct_cosine_q": q(pairs, ec.image_dedup_pair_quantile)})
    return float(ctx.ws.stage(NAME)["image_dedup_threshold"])


def _gate(ctx: Context) -> Gate | None:
    """The pHash gate of image dedup, when the config asks for it."""
    gate, joint = ctx.cfg.embed.image_dedup_phash, ctx.cfg.models.joint
    if gate == "off" or (gate == "auto" and joint.split(":")[0] != "bridge"):
        return None
    return Gate(ctx.cfg.embed.image_dedup_phash_bits)


def _plan(ctx: Context, out: Path) -> Plan:
    """One task per extract part and modality not yet embedded."""
    ws, cfg = ctx.ws, ctx.cfg
    n_parts = ws.stage(extract.NAME)["parts"]
    todo = [(kind, i) for kind in KINDS for i in range(n_parts) if not (out / kind / part_name(i)).exists()]
    threads = ctx.executor.threads_for(len(todo))
    return Plan([_Task(kind, i, ws.root, out, cfg.models.joint, cfg.runtime.device,
                       cfg.models.batch_size, cfg.embed.dtype, threads) for kind, i in todo])


def _finish(ctx: Context, out: Path, plan: Plan) -> dict:
    """Semantic dedup per modality (the image threshold calibrated first, with `auto`)."""
    ws, cfg = ctx.ws, ctx.cfg
    n_parts = ws.stage(extract.NAME)["parts"]
    thresholds = {"images": _image_threshold(ctx, n_parts), "sentences": cfg.embed.sentence_dedup_threshold}
    counts, how = {}, {}
    for kind, cosine in thresholds.items():
        found, how[kind] = semantic.dedup(ctx, kind, part_sizes(ws.root, kind, n_parts), cosine,
                                          _gate(ctx) if kind == "images" else None)
        counts[kind] = summarize(found)
    counts["semantic_dedup"] = how
    if cfg.embed.image_dedup_threshold == "auto":
        counts.update({k: ws.stage(NAME)[k] for k in ("image_dedup_threshold", "image_dedup_calibration")})
    return counts


STAGE = Stage(NAME, extract.STAGE, _finish, config=("embed", "models.joint"), plan=_plan, process=_process,
              files=lambda cfg: spec_files(cfg.models.joint),
              reads=(EXTRACT_IMAGES, EXTRACT_SENTENCES, EXTRACT_BLOBS), writes=(*EMBED.values(), *EMBED_DEDUP.values()),
              resources=Resources(model=True))
stage_key, run = STAGE.key, STAGE.run
