"""The balance stage (paper §5): similarity band, k-means of the image embeddings, capped draw.

Reads the pairs of `retrieve/pairs` that have a text (a pair is eligible when it has a non-empty
synthetic text in `synth/`, if that stage exists, and an image embedding), drops those whose
image-R1 cosine (`sims[0]`) lies outside the band, fits spherical k-means (`CentroidIndex`) on a
seeded sample of the remaining images and assigns every one of them to its centroid. Then each
named scale keeps its pairs (see `sampling`). The steps are executor tasks over the retrieve
parts (`phases.py`, intermediates in `balance/steps/`, resumable); the driver streams the
outputs part by part.

Writes `balance/pairs.parquet` (every pair read: image_id, part, sim, cluster, status, reason),
`balance/SCALE.parquet` (image_id, cluster, sim, part: the retrieve part the pair comes from) and
`balance/clusters.parquet` (cluster, size_before, one column of sizes per scale). The bounds used
go to the manifest. Memory (driver): the centroids, a few counts per cluster and one part's
pairs; no array per pair of the pool (the k-means sample, at most max_train x d float32, is
fitted in a task).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from realsyn.balance import phases, sampling
from realsyn.buckets import Fit, Groups, fit_index, load, remove
from realsyn.centroids import auto_clusters, seeded_rows
from realsyn.config import BalanceConfig
from realsyn.runtime.context import Context, PipelineError
from realsyn.runtime.stage import Plan, Stage
from realsyn.runtime.workspace import atomic_path, summarize, write_table
from realsyn.synth import stage as synth_stage
from realsyn.tables import BALANCE_CLUSTERS, BALANCE_PAIRS, BALANCE_SCALES, EMBED, RETRIEVE_PAIRS, SYNTH

NAME = "balance"
REASONS = (None, "no_synthetic_text", "no_embedding", "below_band", "above_band")  # code 0 = kept
STEPS = "steps"  # intermediates, under balance/
PAIRS_SCHEMA = pa.schema([("image_id", pa.string()), ("part", pa.int32()), ("sim", pa.float32()), ("cluster", pa.int32()),
                          ("status", pa.string()), ("reason", pa.string())])
SCALE_SCHEMA = pa.schema([("image_id", pa.string()), ("cluster", pa.int32()), ("sim", pa.float32()), ("part", pa.int32())])


@dataclass
class Clusters:
    """What the draw needs: the band, each part's first band row, the clusters' sizes."""

    parts: list[int]  # retrieve part numbers
    folder: Path  # the intermediates
    pairs: int  # pairs read (with a text)
    bounds: tuple[float, float]
    first: np.ndarray  # first band row of each part, and the total
    sizes: np.ndarray  # pairs per cluster

    @property
    def n_clusters(self) -> int:
        return len(self.sizes)


def _groups(cl: Clusters) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Per task, consecutive parts with about PAIRS_PER_TASK band pairs: (their part numbers,
    their first band rows and the end)."""
    return [(tuple(cl.parts[k] for k in g), (*(int(cl.first[k]) for k in g), int(cl.first[g[-1] + 1])))
            for g in Groups.of(cl.first, phases.PAIRS_PER_TASK).parts]


def _fit(ctx: Context, cl: Clusters) -> None:
    """The k-means of the band's images on a seeded sample, and the blocks of clusters."""
    bc, seed, n = ctx.cfg.balance, ctx.cfg.runtime.seed, int(cl.first[-1])
    if (cl.folder / "blocks.npy").exists() or n == 0:
        return
    k = min(n, bc.clusters or auto_clusters(n, bc.pairs_per_cluster))
    pick = seeded_rows(n, min(n, max(k, min(bc.max_train, 256 * k))), seed)  # never fewer points than clusters
    tasks = [phases.Sample(j, parts, first, pick, ctx.ws.root, cl.folder, cl.bounds) for j, (parts, first) in enumerate(_groups(cl))]
    ctx.executor.run(phases.sample, tasks, f"{NAME}: sample", "pairs")
    fit_index(ctx, Fit(cl.folder, len(tasks), k, n, phases.BLOCK_PAIRS, bc.index, bc.niter, seed, bc.hnsw_ef), f"{NAME}: k-means")


def prepare(ctx: Context, folder: Path, bucketed: bool = True) -> Clusters:
    """Scan the pairs, find the band and cluster the pairs in it (steps 1-4 of `phases`)."""
    ws, bc = ctx.ws, ctx.cfg.balance
    parts = [int(p.stem.split("-")[1]) for p in RETRIEVE_PAIRS.parts(ws.root)]
    if not parts:
        raise PipelineError(f"balance needs retrieve/pairs in {ws.name}: run `realsyn retrieve` first")
    synth = bool(SYNTH.parts(ws.root))
    scans = [phases.Scan(p, ws.root, folder, synth) for p in parts if not (folder / "scan" / f"code-{p:05d}.npy").exists()]
    ctx.executor.run(phases.scan, scans, f"{NAME}: scan", "pairs")
    counts = np.array([(len(c), int((c == phases.OK).sum())) for c in (phases.scanned(folder, p)[1] for p in parts)])
    read, eligible = (int(x) for x in counts.sum(axis=0))  # one pass over the scans; nothing per pair kept
    bounds = sampling.quantile_bounds(lambda: phases.eligible_sims(folder, parts), eligible, bc.band,
                                      *((bc.lower_quantile, bc.upper_quantile) if bc.band == "quantile" else (bc.min_sim, bc.max_sim)))
    cl = Clusters(parts, folder, read, bounds, phases.band_starts(folder, parts, bounds),
                  np.zeros(0, np.int64))
    _fit(ctx, cl)
    if not cl.first[-1]:
        return cl
    groups = _groups(cl)
    todo = [j for j, (g, _) in enumerate(groups) if not all(phases.labels_path(folder, p).exists() for p in g)]
    each = ctx.executor.threads_for(len(todo))
    ctx.executor.run(phases.assign, [phases.Assign(j, *groups[j], ws.root, folder, bounds, ctx.cfg.runtime.seed, bc.hnsw_ef,
                                                   bucketed, each) for j in todo], f"{NAME}: assign", "pairs")
    clusters = len(load(folder / "centroids.npy"))
    cl.sizes = sum((np.bincount(load(phases.labels_path(folder, p), mmap=False), minlength=clusters) for p in parts),
                   np.zeros(clusters, np.int64))
    return cl


def _last_kept(ctx: Context, cl: Clusters) -> np.ndarray | None:
    """Step 5 (`cap` only): scales x clusters x 2, the last pair each scale keeps per cluster."""
    bc = ctx.cfg.balance
    if bc.method != "cap" or not cl.first[-1]:
        return None
    blocks = load(cl.folder / "blocks.npy", mmap=False)
    sources = len(_groups(cl))
    todo = [phases.Cap(t, sources, cl.folder, tuple(bc.scales.values())) for t in range(len(blocks) - 1)
            if not (cl.folder / "cap" / f"b-{t:05d}.npy").exists()]
    ctx.executor.run(phases.cap, todo, f"{NAME}: cap", "pairs")
    return np.concatenate([load(cl.folder / "cap" / f"b-{t:05d}.npy", mmap=False) for t in range(len(blocks) - 1)], axis=1)


def _band_info(bc: BalanceConfig, bounds: tuple[float, float]) -> dict:
    """The band as recorded in the manifest."""
    lo, hi = (round(b, 6) if np.isfinite(b) else None for b in bounds)  # None: no bound (band off, or no pairs)
    info = {"mode": bc.band, "min_sim": lo, "max_sim": hi}
    if bc.band == "quantile":
        info.update(lower_quantile=bc.lower_quantile, upper_quantile=bc.upper_quantile)
    return info


def dry_run(ctx: Context, caps: Sequence[int] = (), echo: Callable[[str], None] = print) -> dict[str, int]:
    """Print (and return) the size each configured scale, and each extra cap, would give (its
    intermediates go to `balance/dry-run/`, removed after)."""
    bc, out = ctx.cfg.balance, ctx.ws.dir(NAME)
    remove(out, "dry-run")
    try:
        cl = prepare(ctx, out / "dry-run", bucketed=False)
    finally:
        remove(out, "dry-run")
    sizes = {name: sampling.expected_size(cl.sizes, cap) for name, cap in bc.scales.items()}
    sizes.update({f"N={cap}": sampling.expected_size(cl.sizes, cap) for cap in caps})
    lo, hi = cl.bounds
    echo(f"pairs {cl.pairs:,}; in the band [{lo:.4f}, {hi:.4f}]: {int(cl.first[-1]):,}; "
         f"clusters {cl.n_clusters:,}; method {bc.method}{' (expected sizes)' if bc.method == 'metaclip' else ''}")
    for name, n in sizes.items():
        label = f"{name} (N={bc.scales[name]})" if name in bc.scales else name
        echo(f"  {label:>20}  {n:>14,}")
    return sizes


def _write(ctx: Context, cl: Clusters) -> tuple[Counter, dict]:
    """Stream every output part by part; returns the pairs' counts and the per-scale counts."""
    bc, out, seed = ctx.cfg.balance, ctx.ws.dir(NAME), ctx.cfg.runtime.seed
    last = _last_kept(ctx, cl)
    reasons = np.zeros(len(REASONS), np.int64)
    after = {name: np.zeros(cl.n_clusters, np.int64) for name in bc.scales}
    with contextlib.ExitStack() as stack:
        def writer(path: Path, schema: pa.Schema) -> pq.ParquetWriter:
            return stack.enter_context(pq.ParquetWriter(stack.enter_context(atomic_path(path)), schema, compression="zstd"))

        pairs = writer(BALANCE_PAIRS.path(ctx.ws.root), PAIRS_SCHEMA)
        scales = {name: writer(out / f"{name}.parquet", SCALE_SCHEMA) for name in bc.scales}
        for k, part in enumerate(cl.parts):
            ids, sim = phases.text_pairs(ctx.ws.root, part)
            code = phases.scanned(cl.folder, part)[1].astype(np.int8)
            position = sampling.band_position(sim, *cl.bounds)
            reason = np.where(code != phases.OK, code, np.select([position == sampling.BELOW, position == sampling.ABOVE],
                                                                  [REASONS.index("below_band"), REASONS.index("above_band")], 0))
            reasons += np.bincount(reason, minlength=len(REASONS))
            band = np.flatnonzero(reason == 0)
            labels = load(phases.labels_path(cl.folder, part), mmap=False) if len(band) else np.zeros(0, np.int32)
            cluster = np.full(len(ids), -1, np.int32)
            cluster[band] = labels
            pairs.write_table(pa.table({
                "image_id": ids, "part": pa.array(np.full(len(ids), part, np.int32)), "sim": pa.array(sim),
                "cluster": pa.array(cluster), "status": pa.array(["kept", "rejected"]).take(pa.array(np.minimum(reason, 1))),
                "reason": pa.array(REASONS, pa.string()).take(pa.array(reason))}, schema=PAIRS_SCHEMA))
            rows = np.arange(cl.first[k], cl.first[k + 1])
            masks = phases.keep_masks(phases.draws_from(seed, int(cl.first[k]), len(rows)), rows, labels, cl.sizes,
                                      bc.scales, bc.method, last)
            for name, mask in masks.items():
                kept = band[mask]
                scales[name].write_table(pa.table({
                    "image_id": ids.take(pa.array(kept)), "cluster": pa.array(labels[mask].astype(np.int32)),
                    "sim": pa.array(sim[kept]), "part": pa.array(np.full(len(kept), part, np.int32))}, schema=SCALE_SCHEMA))
                after[name] += np.bincount(labels[mask], minlength=cl.n_clusters)
    write_table(pa.table({"cluster": pa.array(np.arange(cl.n_clusters, dtype=np.int32)), "size_before": pa.array(cl.sizes),
                          **{name: pa.array(a) for name, a in after.items()}}), BALANCE_CLUSTERS.path(ctx.ws.root))
    info = {name: {"cap": n, "pairs": int(after[name].sum()), "clusters_over_cap": int((cl.sizes > n).sum())}
            for name, n in bc.scales.items()}
    return Counter({"kept" if r is None else f"rejected:{r}": int(c) for r, c in zip(REASONS, reasons)}), info


def _finish(ctx: Context, out: Path, plan: Plan) -> dict:
    """The band, the clusters and every scale's draw (steps as tasks, outputs streamed)."""
    cl = prepare(ctx, out / STEPS, bucketed=ctx.cfg.balance.method == "cap")
    pairs, scales = _write(ctx, cl)
    remove(out, STEPS)
    return {"pairs": summarize(pairs), "band": _band_info(ctx.cfg.balance, cl.bounds), "clusters": cl.n_clusters,
            "method": ctx.cfg.balance.method, "scales": scales}


STAGE = Stage(NAME, synth_stage.STAGE, _finish, config=("balance",),
              reads=(RETRIEVE_PAIRS, SYNTH, EMBED["images"]), writes=(BALANCE_PAIRS, BALANCE_CLUSTERS, BALANCE_SCALES))
stage_key, run = STAGE.key, STAGE.run
