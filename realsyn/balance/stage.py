"""The balance stage (paper §5): similarity band, k-means of the image embeddings, capped draw.

A global step in the driver. Reads the kept pairs of `retrieve/pairs` (a pair is eligible when it
has a non-empty synthetic text in `synth/`, if that stage exists, and an image embedding), drops
those whose image-R1 cosine (`sims[0]`) lies outside the band, fits spherical k-means (faiss) on
a seeded sample of the remaining images and assigns every one of them to its centroid, streaming
`embed/images` part by part. Then each named scale keeps its pairs (see `sampling`).

Writes `balance/pairs.parquet` (every pair read: image_id, part, sim, cluster, status, reason),
`balance/SCALE.parquet` (image_id, cluster, sim, part: the retrieve part the pair comes from) and
`balance/clusters.parquet` (cluster, size_before, one column of sizes per scale). The bounds used
go to the manifest. Memory: the pair ids (arrow strings), 4 float/int arrays of the pairs, the
k-means sample (at most max_train x d float32), the centroids and one embed part.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from realsyn.balance import sampling
from realsyn.centroids import CentroidIndex, auto_clusters, seeded_rows
from realsyn.config import BalanceConfig
from realsyn.runtime.context import Context, PipelineError
from realsyn.runtime.executor import cpu_count
from realsyn.runtime.stage import Plan, Stage
from realsyn.runtime.workspace import Workspace, summarize, write_table
from realsyn.synth import stage as synth_stage
from realsyn.tables import (
    BALANCE_CLUSTERS,
    BALANCE_PAIRS,
    BALANCE_SCALES,
    EMBED,
    RETRIEVE_PAIRS,
    SYNTH,
    read_embeddings,
)

NAME = "balance"
REASONS = (None, "no_synthetic_text", "no_embedding", "below_band", "above_band")  # code 0 = kept


@dataclass
class Pool:
    """Every pair read, why it was dropped, and the clusters of those in the band."""

    ids: pa.Array  # image_id of every pair, in retrieve part order
    part: np.ndarray  # retrieve part of each pair
    sim: np.ndarray  # image-R1 cosine
    reason: np.ndarray  # int8 code into REASONS (0 = in the band)
    band: np.ndarray  # rows in the band
    labels: np.ndarray  # cluster of each band row
    n_clusters: int
    bounds: tuple[float, float]

    @property
    def sizes(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.n_clusters)


def _read_pairs(ws: Workspace) -> pa.Table:
    """image_id, part and top-1 cosine of the pairs that have at least one text."""
    tables = []
    for path in RETRIEVE_PAIRS.parts(ws.root):
        t = pq.read_table(path, columns=["image_id", "sims"])
        t = t.filter(pc.greater(pc.list_value_length(t["sims"]), 0))
        part = int(path.stem.split("-")[1])
        tables.append(pa.table({"image_id": t["image_id"], "part": pa.array(np.full(len(t), part, np.int32)),
                                "sim": pc.cast(pc.list_element(t["sims"], 0), pa.float32())}))
    if not tables:
        raise PipelineError(f"balance needs retrieve/pairs in {ws.name}: run `realsyn retrieve` first")
    return pa.concat_tables(tables).combine_chunks()


def _synth_ids(ws: Workspace) -> pa.Array | None:
    """Ids with a non-empty synthetic text; None when there is no synth output."""
    paths = SYNTH.parts(ws.root)
    if not paths:
        return None
    chunks = []
    for path in paths:
        t = pq.read_table(path, columns=["image_id", "syn_text"])
        ok = pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(t["syn_text"])), 0).fill_null(False)
        chunks.append(t["image_id"].filter(ok).combine_chunks())
    return pa.concat_arrays(chunks)


def _embeddings_of(ws: Workspace, wanted: pa.Array) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(rows of `wanted`, their embeddings) for each embed part holding some of them."""
    for path in EMBED["images"].parts(ws.root):
        ids, emb = read_embeddings([path], "image_id")
        pos = pc.index_in(pa.array(ids, pa.string()), value_set=wanted).fill_null(-1).to_numpy()
        hit = pos >= 0
        if hit.any():
            yield pos[hit], emb[hit]


def _embedded(ws: Workspace, ids: pa.Array) -> np.ndarray:
    """Which ids have an image embedding."""
    have = [pq.read_table(p, columns=["image_id"])["image_id"].combine_chunks() for p in EMBED["images"].parts(ws.root)]
    if not have:
        return np.zeros(len(ids), bool)
    return pc.is_in(ids, value_set=pa.concat_arrays(have)).to_numpy(zero_copy_only=False)


def _kmeans(ws: Workspace, ids: pa.Array, bc: BalanceConfig, seed: int) -> tuple[np.ndarray, int]:
    """Cluster of each id (fitted on a seeded sample, then streamed) and the cluster count."""
    n = len(ids)
    if n == 0:
        return np.zeros(0, np.int64), 0
    k = min(n, bc.clusters or auto_clusters(n, bc.pairs_per_cluster))
    size = min(n, max(k, min(bc.max_train, 256 * k)))  # never fewer points than clusters
    pick = seeded_rows(n, size, seed)
    sample = np.zeros((0, 0), np.float32)
    for rows, emb in _embeddings_of(ws, ids.take(pa.array(pick))):
        if sample.shape[1] != emb.shape[1]:
            sample = np.zeros((size, emb.shape[1]), np.float32)
        sample[rows] = emb
    index = CentroidIndex.train(sample, k, mode=bc.index, niter=bc.niter, seed=seed, ef=bc.hnsw_ef)
    labels = np.full(n, -1, np.int64)
    for rows, emb in _embeddings_of(ws, ids):
        labels[rows] = index.nearest(emb, 1, cpu_count()).idx[:, 0]
    return labels, len(index.centroids)


def prepare(ctx: Context) -> Pool:
    """Read the pairs, apply the band and cluster the pairs in it (nothing is written)."""
    ws, bc = ctx.ws, ctx.cfg.balance
    pairs = _read_pairs(ws)
    ids, sim = pairs["image_id"].combine_chunks(), pairs["sim"].to_numpy()
    synth = _synth_ids(ws)
    has_text = np.ones(len(ids), bool) if synth is None else pc.is_in(ids, value_set=synth).to_numpy(zero_copy_only=False)
    has_emb = _embedded(ws, ids)
    eligible = has_text & has_emb
    bounds = sampling.band_bounds(sim[eligible], bc.band, *((bc.lower_quantile, bc.upper_quantile)
                                  if bc.band == "quantile" else (bc.min_sim, bc.max_sim)))
    position = sampling.band_position(sim, *bounds)
    checks = {"no_synthetic_text": ~has_text, "no_embedding": ~has_emb,  # first failing check is the reason
              "below_band": position == sampling.BELOW, "above_band": position == sampling.ABOVE}
    reason = np.select(list(checks.values()), [REASONS.index(r) for r in checks], 0).astype(np.int8)
    band = np.flatnonzero(reason == 0)
    labels, k = _kmeans(ws, ids.take(pa.array(band, pa.int64())), bc, ctx.cfg.runtime.seed)
    return Pool(ids, pairs["part"].to_numpy(), sim, reason, band, labels, k, bounds)


def _band_info(bc: BalanceConfig, bounds: tuple[float, float]) -> dict:
    """The band as recorded in the manifest."""
    lo, hi = (round(b, 6) if np.isfinite(b) else None for b in bounds)  # None: no bound (band off, or no pairs)
    info = {"mode": bc.band, "min_sim": lo, "max_sim": hi}
    if bc.band == "quantile":
        info.update(lower_quantile=bc.lower_quantile, upper_quantile=bc.upper_quantile)
    return info


def dry_run(ctx: Context, caps: Sequence[int] = (), echo: Callable[[str], None] = print) -> dict[str, int]:
    """Print (and return) the size each configured scale, and each extra cap, would give."""
    bc = ctx.cfg.balance
    pool = prepare(ctx)
    sizes = {name: sampling.expected_size(pool.sizes, cap) for name, cap in bc.scales.items()}
    sizes.update({f"N={cap}": sampling.expected_size(pool.sizes, cap) for cap in caps})
    lo, hi = pool.bounds
    echo(f"pairs {len(pool.ids):,}; in the band [{lo:.4f}, {hi:.4f}]: {len(pool.band):,}; "
         f"clusters {pool.n_clusters:,}; method {bc.method}{' (expected sizes)' if bc.method == 'metaclip' else ''}")
    for name, n in sizes.items():
        label = f"{name} (N={bc.scales[name]})" if name in bc.scales else name
        echo(f"  {label:>20}  {n:>14,}")
    return sizes


def _write(ctx: Context, pool: Pool) -> dict:
    """Write the outputs of every scale; returns the per-scale counts."""
    bc, out = ctx.cfg.balance, ctx.ws.dir(NAME)
    cluster = np.full(len(pool.ids), -1, np.int32)
    cluster[pool.band] = pool.labels
    write_table(pa.table({
        "image_id": pool.ids, "part": pa.array(pool.part, pa.int32()), "sim": pa.array(pool.sim, pa.float32()),
        "cluster": pa.array(cluster), "status": pa.array(["kept", "rejected"]).take(pa.array(np.minimum(pool.reason, 1))),
        "reason": pa.array(REASONS, pa.string()).take(pa.array(pool.reason))}), BALANCE_PAIRS.path(ctx.ws.root))
    masks = sampling.select(pool.labels, sampling.draws(len(pool.band), ctx.cfg.runtime.seed), bc.scales, bc.method)
    columns = {"cluster": pa.array(np.arange(pool.n_clusters, dtype=np.int32)), "size_before": pa.array(pool.sizes)}
    scales = {}
    for name, mask in masks.items():
        rows = pool.band[mask]
        write_table(pa.table({"image_id": pool.ids.take(pa.array(rows)), "cluster": pa.array(pool.labels[mask].astype(np.int32)),
                              "sim": pa.array(pool.sim[rows], pa.float32()), "part": pa.array(pool.part[rows], pa.int32())}),
                    out / f"{name}.parquet")
        columns[name] = pa.array(sampling.sizes_after(pool.labels, mask, pool.n_clusters))
        scales[name] = {"cap": bc.scales[name], "pairs": int(mask.sum()),
                        "clusters_over_cap": int((pool.sizes > bc.scales[name]).sum())}
    write_table(pa.table(columns), BALANCE_CLUSTERS.path(ctx.ws.root))
    return scales


def _finish(ctx: Context, out: Path, plan: Plan) -> dict:
    """The band, the clusters and every scale's draw (one global step)."""
    pool = prepare(ctx)
    scales = _write(ctx, pool)
    n = np.bincount(pool.reason, minlength=len(REASONS))
    counts = {"pairs": summarize(Counter({"kept" if r is None else f"rejected:{r}": int(c) for r, c in zip(REASONS, n)})),
              "band": _band_info(ctx.cfg.balance, pool.bounds), "clusters": pool.n_clusters,
              "method": ctx.cfg.balance.method, "scales": scales}
    return counts


STAGE = Stage(NAME, synth_stage.STAGE, _finish, config=("balance",),
              reads=(RETRIEVE_PAIRS, SYNTH, EMBED["images"]), writes=(BALANCE_PAIRS, BALANCE_CLUSTERS, BALANCE_SCALES))
stage_key, run = STAGE.key, STAGE.run
