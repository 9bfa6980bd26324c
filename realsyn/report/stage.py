"""The report stage: `report/index.html`, one self-contained page (figures inline, no script) with
the paper's assessments (§8.5) on one scale (default: the largest), plus the funnel of counts per
stage and a gallery.

Data read: the manifest; the scale's `sim` column (4 bytes per pair); a seeded sample of
`report.sample` rows of `realsyn-SCALE.parquet`, streamed; for the S1 similarity, `sim_sample` of
those texts embedded with `models.joint` against their stored image embeddings; the cluster
sizes; and `gallery` samples read back from the shards (what a trainer gets).
"""

from __future__ import annotations

import io
import json
import tarfile
from itertools import zip_longest
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from realsyn.balance import stage as balance
from realsyn.centroids import seeded_rows
from realsyn.config import Config
from realsyn.export import stage as export
from realsyn.export.records import lookup
from realsyn.models.registry import spec_files
from realsyn.report import assess, plots
from realsyn.report.html import esc, figure, note, page, png_img, section, table
from realsyn.runtime.context import Context, PipelineError
from realsyn.runtime.stage import Plan, Stage
from realsyn.runtime.workspace import Workspace, atomic_path
from realsyn.tables import (
    BALANCE_CLUSTERS,
    BALANCE_PAIRS,
    BALANCE_SCALES,
    EMBED,
    EXPORT_SHARDS,
    EXTRACT,
    RETRIEVE_PAIRS,
    SYNTH,
)

NAME = "report"
_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tiff")


def _scale(ws: Workspace, cfg: Config) -> str:
    """The configured scale, else the one with the most pairs."""
    path = ws.dir(balance.NAME)
    if cfg.report.scale is not None:
        if cfg.report.scale not in cfg.balance.scales:
            raise PipelineError(f"report.scale '{cfg.report.scale}' is not one of balance.scales")
        return cfg.report.scale
    return max(cfg.balance.scales, key=lambda s: pq.ParquetFile(path / f"{s}.parquet").metadata.num_rows)


def sample_rows(path: Path, columns: list[str], n: int, seed: int) -> pa.Table:
    """A seeded random sample of n rows of a parquet file, streamed (memory: the sample)."""
    total = pq.ParquetFile(path).metadata.num_rows
    pick = seeded_rows(total, n, seed)
    out, lo = [], 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=65_536, columns=columns):
        hit = pick[(pick >= lo) & (pick < lo + batch.num_rows)] - lo
        if len(hit):
            out.append(pa.Table.from_batches([batch]).take(pa.array(hit)))
        lo += batch.num_rows
    return pa.concat_tables(out) if out else pa.table({c: pa.array([], pa.string()) for c in columns})


def _s1_sims(ctx: Context, scale: str, texts: pa.Table) -> np.ndarray:
    """Image-S1 cosines of up to sim_sample sampled pairs, with the joint model."""
    from realsyn.models import load

    n = min(ctx.cfg.report.sim_sample, texts.num_rows)
    if n == 0:
        return np.zeros(0, np.float32)
    sub = texts.take(pa.array(np.random.default_rng(ctx.cfg.runtime.seed).permutation(texts.num_rows)[:n]))
    ids = sub["image_id"].to_pylist()
    rows = pq.read_table(ctx.ws.dir(balance.NAME) / f"{scale}.parquet", columns=["image_id", "part"],
                         filters=[("image_id", "in", ids)])
    found = lookup(ctx.ws.dir("embed") / "images", ids, rows["part"].to_pylist(), ["embedding"])
    syn_all = sub["syn_text"].to_pylist()
    keep = [i for i, image_id in enumerate(ids) if image_id in found and (syn_all[i] or "").strip()]
    if not keep:
        return np.zeros(0, np.float32)
    image = np.asarray([found[ids[i]]["embedding"] for i in keep], np.float32)
    model, batch = load("joint", ctx.cfg.models.joint, ctx.cfg.runtime.device), ctx.cfg.models.batch_size
    syn = [syn_all[i] for i in keep]
    text = np.concatenate([model.embed_texts(syn[a:a + batch]) for a in range(0, len(syn), batch)])
    return (image * text).sum(axis=1)


def _overview(ctx: Context, scale: str) -> str:
    stages = ctx.ws.manifest()["stages"]
    counts = stages.get(balance.NAME, {}).get("counts", {})
    exported = stages.get(export.NAME, {}).get("counts", {})
    band = counts.get("band", {})
    rows = [[name, info.get("cap"), info.get("pairs"), exported.get(name, {}).get("kept", "-"),
             exported.get(name, {}).get("shards", "-"), "assessed below" if name == scale else ""]
            for name, info in (counts.get("scales") or {}).items()]
    return section("scales", "Scales", table(["scale", "N per cluster", "pairs", "samples exported", "shards", ""], rows),
                   note(f"Balancing: method {counts.get('method')}, {counts.get('clusters')} image clusters; similarity band "
                        f"({band.get('mode')}) [{band.get('min_sim')}, {band.get('max_sim')}] on the image-R1 cosine."))


def _funnel(ctx: Context) -> str:
    rows = assess.funnel(ctx.ws.manifest()["stages"])
    labels = [f"{r.stage} · {r.item}" for r in rows]
    fig = plots.bars(labels, {"kept": [r.kept for r in rows], "rejected": [r.rejected for r in rows]}, "items", log=True)
    body = [[r.stage, r.item, r.read, r.kept, r.rejected, ", ".join(f"{k}: {v:,}" for k, v in r.reasons.items())] for r in rows]
    return section("funnel", "Funnel of counts per stage", figure(fig, "funnel of counts"),
                   table(["stage", "items", "read", "kept", "rejected", "rejection reasons"], body))


def _reused_texts(ctx: Context, top: int = 10) -> list[list[Any]]:
    """The texts that are R1 of the most images (R1 counts merged part by part; the counter holds
    one entry per distinct R1 text, ~100 bytes each)."""
    counts: dict[str, int] = {}
    texts: dict[str, str] = {}
    for path in RETRIEVE_PAIRS.parts(ctx.ws.root):
        t = pq.read_table(path, columns=["text_ids", "texts"])
        t = t.filter(pc.greater(pc.list_value_length(t["text_ids"]), 0))
        if not t.num_rows:
            continue
        first = pc.list_element(t["text_ids"], 0)
        for row in pc.value_counts(first).to_pylist():
            counts[row["values"]] = counts.get(row["values"], 0) + row["counts"]
        for tid, text in zip(first.to_pylist(), pc.list_element(t["texts"], 0).to_pylist()):
            if counts[tid] > 1:
                texts.setdefault(tid, text)
    best = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return [[n, texts.get(tid, "")] for tid, n in best if n > 1]


def _rejected_examples(ctx: Context, per_reason: int = 3) -> list[list[Any]]:
    """Up to `per_reason` examples of every rejection reason of extract's sentences and images."""
    out: dict[tuple[str, str], list[str]] = {}
    for kind, show in (("sentences", "text"), ("images", "source")):
        for path in EXTRACT[kind].parts(ctx.ws.root):
            names = pq.read_schema(path).names
            t = pq.read_table(path, columns=[c for c in ("reason", show, "url", "path") if c in names])
            if "reason" not in names:
                continue
            for row in t.filter(pc.is_valid(t["reason"])).to_pylist():
                seen = out.setdefault((kind, row["reason"]), [])
                if len(seen) < per_reason:
                    where = f"{row.get(show)}#{row['path']}" if row.get("path") else row.get(show)
                    seen.append(str(row.get("url") or where)[:200])
    return [[kind, reason, " | ".join(ex)] for (kind, reason), ex in sorted(out.items())]


def _retrieval(ctx: Context) -> str:
    """Retrieval diagnostics: recall, same-document share, reused texts, guard fallbacks, and
    examples of what the filters rejected."""
    rc = ctx.ws.stage("retrieve").get("counts", {})
    sc = ctx.ws.stage("synth").get("counts", {})
    facts = [["recall@k of the hierarchical search vs exact", rc.get("recall_at_k")],
             ["share of texts from the image's own document", rc.get("same_doc_fraction")],
             ["scope", rc.get("scope")], ["similarity spread of the encoder (bonus unit)", rc.get("sim_spread")],
             ["images given a new R1 by retrieve.max_uses", rc.get("max_uses_moved")],
             ["images whose every text was at its max_uses (order kept)", rc.get("max_uses_fallback")],
             ["image dedup threshold (calibrated per encoder)", ctx.ws.stage("embed").get("counts", {}).get("image_dedup_threshold")],
             ["synthetic texts replaced by the guard's fallback", sum((sc.get("fallbacks") or {}).values())]]
    return section("retrieval", "Retrieval and filter diagnostics", table(["", "value"], facts),
                   table(["images with it as R1", "most reused texts"], _reused_texts(ctx)),
                   table(["table", "reason", "examples"], _rejected_examples(ctx)),
                   note("No text is R1 of more than retrieve.max_uses images unless every text of an image was "
                        "full; a text still high in this list is a candidate for a filter. The examples show what "
                        "each extract filter removed."))


def _similarity(ctx: Context, scale: str, s1: np.ndarray) -> str:
    band = ctx.ws.stage(balance.NAME).get("counts", {}).get("band", {})
    pool = BALANCE_PAIRS.read(ctx.ws.root, columns=["sim", "reason"])
    scored = pool.filter(pc.invert(pc.is_in(pool["reason"], value_set=pa.array(["no_synthetic_text", "no_embedding"]))))
    series = {"R1, all pairs before the band": scored["sim"].to_numpy(),
              f"R1, {scale}": pq.read_table(ctx.ws.dir(balance.NAME) / f"{scale}.parquet", columns=["sim"])["sim"].to_numpy(),
              f"S1, {scale} (sample)": s1}
    fig = plots.histograms(series, f"image-text cosine ({ctx.cfg.models.joint})", 60,
                           {k: v for k, v in (("band low", band.get("min_sim")), ("band high", band.get("max_sim"))) if v is not None})
    rows = [[k, len(v), float(np.mean(v)), float(np.median(v))] for k, v in series.items() if len(v)]
    return section("similarity", "Image-text similarity (R1 and S1)", figure(fig, "similarity histograms"),
                   table(["texts", "n", "mean", "median"], rows),
                   note(f"Cosines under models.joint = {ctx.cfg.models.joint}. R1: the stored retrieval cosines; S1: the "
                        f"synthetic texts of a seeded sample embedded now. Paper (Fig. Richness): peaks near 0.26-0.27 for both."))


def _tokens(r1: list[str], s1: list[str]) -> str:
    counts = {"R1": assess.token_counts(r1), "S1": assess.token_counts(s1)}
    top = int(max([80, *(np.percentile(v, 99) for v in counts.values() if len(v))]))
    fig = plots.histograms(counts, "tokens per text", np.arange(0, top + 2) - 0.5)
    rows = [[k, len(v), float(v.mean()), float(np.median(v)), float(np.percentile(v, 90))] for k, v in counts.items() if len(v)]
    return section("tokens", "Token-length distributions", figure(fig, "token lengths"),
                   table(["texts", "n", "mean", "median", "p90"], rows),
                   note("Tokens = words and punctuation marks (regex \\w+|[^\\w\\s]), close to CLIP's BPE count on English. "
                        "Paper: modes R1 ~23, S1 ~32 tokens."))


def _entities(r1: list[str], s1: list[str]) -> str:
    e = assess.entity_overlap(r1, s1)
    fig = plots.bars(["R1 only", "shared", "S1 only"], {"entities": [e["a_only"], e["shared"], e["b_only"]]}, "unique entities")
    rows = [["R1 (realistic)", e["a_unique"], e["a_per_text"]], ["S1 (synthetic)", e["b_unique"], e["b_per_text"]]]
    tops = [[a, na, b, nb] for (a, na), (b, nb) in zip_longest(e["a_top"], e["b_top"], fillvalue=("", ""))]
    return section("entities", "Unique entities in realistic and synthetic texts", figure(fig, "unique entities"),
                   table(["texts", "unique entities", "per text"], rows),
                   table(["R1 entity", "texts", "S1 entity", "texts"], tops),
                   note("Entities: capitalised n-grams not opening a sentence (see realsyn.report.assess); "
                        "lower-cased texts have none. Paper: 0.2M captions, 68,428 R1-only and 71,169 S1-only entities vs LAION."))


def _topics(ctx: Context, r1: list[str], s1: list[str]) -> str:
    rc = ctx.cfg.report
    topics = assess.lda_topics({"R1": r1, "S1": s1}, rc.topics, rc.topic_words, ctx.cfg.runtime.seed)
    if topics is None:
        return section("topics", "Topics (LDA)", note("Not enough words in the sampled texts to fit topics."))
    labels = [f"{i}: {' '.join(w[:3])}" for i, w in enumerate(topics.words)]
    fig = plots.bars(labels, {k: list(v) for k, v in topics.shares.items()}, "share of texts")
    rows = [[i, " ".join(w), *(float(topics.shares[k][i]) for k in topics.shares)] for i, w in enumerate(topics.words)]
    return section("topics", "Topics (LDA)", figure(fig, "topic shares"), table(["topic", "top words", *topics.shares], rows),
                   note(f"scikit-learn LatentDirichletAllocation ({rc.topics} topics, batch, seeded) on the sampled R1 and S1 "
                        "texts together; share = mean topic weight of a group's texts."))


def _clusters(ctx: Context) -> str:
    t = BALANCE_CLUSTERS.read(ctx.ws.root)
    columns = {name: t[name].to_numpy() for name in t.column_names if name != "cluster"}
    rows = [[name, int((v > 0).sum()), int(v.sum()), int(v.max(initial=0)), float(v.mean()) if len(v) else 0.0] for name, v in columns.items()]
    return section("clusters", "Cluster sizes before and after balancing", figure(plots.sorted_sizes(columns), "cluster sizes"),
                   table(["", "non-empty clusters", "pairs", "largest", "mean size"], rows),
                   note("k-means of the image embeddings (balance.clusters); each scale keeps at most N pairs of a cluster "
                        "(method cap) or about N (metaclip)."))


def _pick_samples(folder: Path, n: int, seed: int) -> list[dict[str, Any]]:
    """n random samples of a scale's shards (key, image bytes, json), reading only their shards."""
    sizes = json.loads((folder / "sizes.json").read_text())
    names, counts = list(sizes), np.asarray(list(sizes.values()), np.int64)
    total = int(counts.sum())
    picks = np.sort(np.random.default_rng(seed).choice(total, min(n, total), replace=False))
    starts = np.r_[0, np.cumsum(counts)]
    out: list[dict[str, Any]] = []
    for shard in np.unique(np.searchsorted(starts, picks, side="right") - 1):
        wanted = set((picks[(picks >= starts[shard]) & (picks < starts[shard + 1])] - starts[shard]).tolist())
        samples: dict[str, dict[str, bytes]] = {}
        with tarfile.open(folder / names[shard]) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                if key not in samples and len(samples) > max(wanted):
                    break
                data = tar.extractfile(member)
                if data is not None:
                    samples.setdefault(key, {})[ext] = data.read()
        out += [s for i, s in enumerate(samples.values()) if i in wanted]
    return out


def _thumbnail(data: bytes) -> bytes:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    image.thumbnail((320, 320))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _gallery(ctx: Context, scale: str) -> str:
    folder = ctx.ws.dir(export.NAME) / scale
    if ctx.cfg.report.gallery == 0 or not (folder / "sizes.json").exists():
        return section("gallery", "Gallery", note("No exported samples to show."))
    cards = []
    for sample in _pick_samples(folder, ctx.cfg.report.gallery, ctx.cfg.runtime.seed):
        meta = json.loads(sample.get("json", b"{}"))
        image = next((sample[e] for e in _IMAGE_EXTS if e in sample), None)
        texts = "".join(f"<dt>{esc(k)}</dt><dd>{esc(meta.get(k, ''))}</dd>" for k in ("text1", "text2", "text3", "syn_text"))
        cards.append(f'<div class="card">{png_img(_thumbnail(image), meta.get("image_id", "")) if image else ""}'
                     f'<dl>{texts}</dl><p class="note">{esc(meta.get("key", ""))} · {esc(meta.get("image_id", ""))}</p></div>')
    return section("gallery", f"Gallery ({scale})", f'<div class="gallery">{"".join(cards)}</div>',
                   note("Samples read back from the shards: the image and its four texts (R1, R2, R3, S1)."))


def build(ctx: Context) -> str:
    """The report page."""
    cfg = ctx.cfg
    scale = _scale(ctx.ws, cfg)
    released = ctx.ws.dir(export.NAME) / scale / f"realsyn-{scale}.parquet"
    if not released.exists():
        raise PipelineError(f"report needs {released}: run `realsyn export` first")
    texts = sample_rows(released, ["image_id", "text1", "syn_text"], cfg.report.sample, cfg.runtime.seed)
    r1, s1 = [t or "" for t in texts["text1"].to_pylist()], [t or "" for t in texts["syn_text"].to_pylist()]
    sections = [_overview(ctx, scale), _funnel(ctx), _similarity(ctx, scale, _s1_sims(ctx, scale, texts)),
                _tokens(r1, s1), _entities(r1, s1), _topics(ctx, r1, s1), _clusters(ctx), _retrieval(ctx),
                _gallery(ctx, scale)]
    intro = note(f"Workspace {ctx.ws.name}; assessments on scale {scale}, {texts.num_rows:,} sampled pairs "
                 f"(seed {cfg.runtime.seed}). R1 = best realistic text, S1 = synthetic text.")
    return page("RealSyn dataset report", intro, sections)


def _finish(ctx: Context, out: Path, plan: Plan) -> dict:
    """Write report/index.html."""
    text = build(ctx)
    with atomic_path(out / "index.html") as tmp:
        tmp.write_text(text, encoding="utf-8")
    return {"html": str((out / "index.html").relative_to(ctx.ws.root)), "bytes": len(text.encode())}


STAGE = Stage(NAME, export.STAGE, _finish, config=("report", "models.joint"),
              files=lambda cfg: spec_files(cfg.models.joint),
              reads=(*EXTRACT.values(), EMBED["images"], RETRIEVE_PAIRS, SYNTH, BALANCE_PAIRS, BALANCE_CLUSTERS,
                     BALANCE_SCALES, EXPORT_SHARDS))
stage_key, run = STAGE.key, STAGE.run
