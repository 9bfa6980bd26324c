"""The export stage: for each scale, the WebDataset + parquet layout of DESIGN.md (Export).

`export/SCALE/` holds `NNNNN.tar` (the samples whose image could be written), `NNNNN.parquet`
(every sample of the shard with its status and error, as img2dataset), `NNNNN_stats.json`
(img2dataset's stats; written last, it marks the shard done), then, once every shard is done,
`realsyn-SCALE.parquet` (the released RealSyn columns plus image_id and doc_id, streamed shard by
shard) and `sizes.json` (written last: the scale is done). One task per shard on the executor;
a task holds the shard's metadata and one extract part's image bytes at a time. Rows keep the
order of `balance/SCALE.parquet`, so the same input gives the same shards; a rerun skips done
shards and scales.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from realsyn.balance import stage as balance
from realsyn.config import ExportConfig
from realsyn.export.records import BLOBS, gather, lookup
from realsyn.export.shards import encode_image, sample_key, sample_members, shard_name, write_tar
from realsyn.runtime.context import Context, PipelineError
from realsyn.runtime.stage import Plan, Stage
from realsyn.runtime.workspace import atomic_path, summarize, write_json, write_table
from realsyn.tables import (
    BALANCE_SCALES,
    EXPORT_SHARDS,
    EXTRACT_BLOBS,
    EXTRACT_IMAGES,
    META_SCHEMA,
    RETRIEVE_PAIRS,
    SYNTH,
)

NAME = "export"
RELEASED = {"raw_image_url": "raw_image_url", "text1": "text1", "text2": "text2", "text3": "text3", "syn_text": "syn_text",
            "image_id": "image_id", "doc_id": "doc_id"}  # released column -> metadata column
FAILURES = ("failed_to_download", "failed_to_resize")  # img2dataset's names: no bytes / not decodable


@dataclass(frozen=True)
class _Task:
    work: Path
    out: Path  # the scale's folder
    shard: int
    rows: pa.Table  # image_id, cluster, sim, part
    cfg: ExportConfig


def _meta(rec: dict[str, Any], key: str) -> dict[str, Any]:
    """The metadata of one sample (KEY.json, and a row of the shard's parquet)."""
    texts = [t or "" for t in (rec["texts"] or [])][:3] + [""] * 3
    local = f"{rec['source']}#{rec['path']}" if rec.get("path") else rec["source"]
    return {"key": key, "image_id": rec["image_id"], "doc_id": rec["doc_id"] or "", "url": rec["url"] or "",
            "raw_image_url": rec["url"] or local,
            "source": rec["source"] or "", "text1": texts[0], "text2": texts[1], "text3": texts[2],
            "syn_text": rec["syn_text"] or "", "generated_caption": rec["generated_caption"] or "",
            "figure_caption": rec["figure_caption"] or "", "alt": rec["alt"] or "",
            "tags": [str(t) for t in rec["tags"] or []], "sims": [round(float(s), 4) for s in rec["sims"] or []],
            "cluster": rec["cluster"], "sim": round(float(rec["sim"]), 4), "width": None, "height": None,
            "original_width": rec["width"], "original_height": rec["height"], "format": None,
            "status": "success", "error_message": None}


def _sample(rec: dict[str, Any], key: str, data: bytes | None, cfg: ExportConfig) -> tuple[dict[str, Any], list | None]:
    """(metadata, tar members); members are None when the image cannot be written."""
    meta = _meta(rec, key)
    if data is None:
        meta.update(status=FAILURES[0], error_message="image bytes not found in extract/blobs")
        return meta, None
    try:
        image = encode_image(data, cfg)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        meta.update(status=FAILURES[1], error_message=f"{type(exc).__name__}: {exc}"[:300])
        return meta, None
    meta.update(width=image.width, height=image.height, original_width=image.original_width,
                original_height=image.original_height, format=image.ext)
    body = {k: v for k, v in meta.items() if k not in ("error_message", "format")}
    return meta, sample_members(key, image, meta["text1"], body)


def _samples(task: _Task, metas: list[dict[str, Any]]) -> Iterator[list]:
    """Tar members of the shard's samples in row order, reading the image bytes part by part."""
    folder, cols = BLOBS
    index = 0
    for part, group in groupby(gather(task.work, task.rows), key=lambda r: r["part"]):
        records = list(group)
        blobs = lookup(task.work / folder, [r["image_id"] for r in records], [part], cols, fallback=False)
        for rec in records:
            meta, members = _sample(rec, sample_key(task.shard, index, task.cfg.samples_per_shard),
                                    blobs.get(rec["image_id"], {}).get("data"), task.cfg)
            metas.append(meta)
            index += 1
            if members:
                yield members


def _write_shard(task: _Task) -> int:
    """Write one shard: tar, parquet, then stats (runs in a worker)."""
    start = time.time()
    name, metas = shard_name(task.shard), list[dict[str, Any]]()
    successes = write_tar(task.out / f"{name}.tar", _samples(task, metas))
    write_table(pa.Table.from_pylist(metas, META_SCHEMA), task.out / f"{name}.parquet")
    status = Counter(m["status"] for m in metas)
    end = time.time()
    stats = {"count": len(metas), "successes": successes, **{f: status.get(f, 0) for f in FAILURES},
             "duration": round(end - start, 3), "start_time": start, "end_time": end, "status_dict": dict(status)}
    write_json(stats, task.out / f"{name}_stats.json")
    return len(metas)


def _scale_file(ctx: Context, scale: str) -> Path:
    path = ctx.ws.dir(balance.NAME) / f"{scale}.parquet"
    if not path.exists():
        raise PipelineError(f"export needs {path}: run `realsyn balance` first")
    return path


def _plan(ctx: Context, out: Path) -> tuple[list[_Task], dict[str, int]]:
    """Tasks of the shards not done yet, and the shard count of every scale."""
    per = ctx.cfg.export.samples_per_shard
    tasks, shards = [], {}
    for scale in ctx.cfg.balance.scales:
        folder = out / scale
        if folder.resolve().parent != out.resolve():
            raise PipelineError(f"scale name '{scale}' leaves the export folder")
        path = _scale_file(ctx, scale)
        n = pq.ParquetFile(path).metadata.num_rows
        shards[scale] = -(-n // per)
        todo = [s for s in range(shards[scale]) if not (folder / f"{shard_name(s)}_stats.json").exists()]
        folder.mkdir(parents=True, exist_ok=True)
        if not todo or (folder / "sizes.json").exists():
            continue
        rows = pq.read_table(path, columns=["image_id", "cluster", "sim", "part"])
        tasks += [_Task(ctx.ws.root, folder, s, rows.take(pa.array(np.arange(s * per, min(n, (s + 1) * per)))),
                        ctx.cfg.export) for s in todo]
    return tasks, shards


def _finish_scale(folder: Path, n_shards: int) -> dict[str, Any]:
    """Write realsyn-SCALE.parquet and sizes.json once (sizes.json last); return the counts."""
    stats = [json.loads((folder / f"{shard_name(s)}_stats.json").read_text()) for s in range(n_shards)]
    if not (folder / "sizes.json").exists():
        schema = pa.schema([(k, pa.string()) for k in RELEASED])
        with atomic_path(folder / f"realsyn-{folder.name}.parquet") as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for s in range(n_shards):
                t = pq.read_table(folder / f"{shard_name(s)}.parquet", columns=[*RELEASED.values(), "status"])
                t = t.filter(pc.equal(t["status"], "success"))
                writer.write_table(pa.table({k: t[v] for k, v in RELEASED.items()}, schema=schema))
        write_json({f"{shard_name(s)}.tar": st["successes"] for s, st in enumerate(stats)}, folder / "sizes.json")
    counts = Counter({"kept": sum(st["successes"] for st in stats)})
    counts.update({f"rejected:{f}": sum(st[f] for st in stats) for f in FAILURES})
    return {**summarize(counts), "shards": n_shards}


def _plan_stage(ctx: Context, out: Path) -> Plan:
    """One task per shard not yet written."""
    tasks, shards = _plan(ctx, out)
    return Plan(tasks, total=sum(t.rows.num_rows for t in tasks), info=shards)


def _finish(ctx: Context, out: Path, plan: Plan) -> dict:
    """Each scale's sizes and released table."""
    return {scale: _finish_scale(out / scale, n) for scale, n in plan.info.items()}


STAGE = Stage(NAME, balance.STAGE, _finish, config=("export",), plan=_plan_stage, process=_write_shard,
              unit="samples",
              reads=(BALANCE_SCALES, RETRIEVE_PAIRS, SYNTH, EXTRACT_IMAGES, EXTRACT_BLOBS), writes=(EXPORT_SHARDS,))
stage_key, run = STAGE.key, STAGE.run
