"""The extract stage: read documents, filter images and sentences per part, then deduplicate.

Phase 1 streams the inputs in chunks of `docs_per_part` documents; each chunk is one task that
writes `_raw/images`, `_raw/sentences` and `blobs` (the bytes of images that passed the quality
filters, so later stages never re-read the input). Phase 2 is the global dedup step: it holds,
for every image and sentence, an int64 hash, an int64 group index, its id and its status
(about 60 bytes per item), and writes the final `images/` and `sentences/` parts with every
rejected item's reason and, for duplicates, the id of the item kept in its place (`dup_of`).
"""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from realsyn.config import Config, DownloadConfig, ExtractConfig, ModelsConfig
from realsyn.dedup import first_occurrence, near_duplicates
from realsyn.extract.records import Scorers, extract_documents
from realsyn.io.documents import Document
from realsyn.io.download import DownloadCache, download_documents
from realsyn.io.policy import from_config
from realsyn.io.readers import detect, read_documents
from realsyn.io.readers.base import SKIPPED
from realsyn.models.registry import spec_files
from realsyn.runtime.context import Context
from realsyn.runtime.stage import Plan, Resources, Stage
from realsyn.runtime.workspace import fingerprint, part_name, summarize, write_table
from realsyn.tables import (
    BLOB_SCHEMA,
    DOWNLOAD_SCHEMA,
    EXTRACT_BLOBS,
    EXTRACT_DOWNLOADS,
    EXTRACT_IMAGES,
    EXTRACT_SENTENCES,
    IMAGE_SCHEMA,
    SENTENCE_SCHEMA,
)

NAME = "extract"



@dataclass(frozen=True)
class _Task:
    index: int
    docs: list[Document]
    cfg: ExtractConfig
    models: ModelsConfig
    device: str
    out: Path
    download: DownloadConfig | None = None


def scorers(cfg: ExtractConfig, models: ModelsConfig, device: str) -> Scorers:
    """The model-based filters the config switches on (models load once per worker)."""
    from realsyn.models import load, registry

    registry.set_batch_bytes(models.batch_mib << 20)
    return Scorers(
        perplexity=load("llm", models.llm, device).perplexity if cfg.sentences.perplexity else None,
        nsfw=load("nsfw", models.nsfw, device).score if cfg.images.max_nsfw is not None else None,
        language=load("langid", models.langid, device).detect if cfg.sentences.languages else None,
    )


def _process(task: _Task) -> int:
    """Phase 1 for one part (runs in a worker). Returns the number of documents."""
    name = part_name(task.index)
    if task.download is not None and task.download.enabled:  # URL-only images: fetch (cache in WORK/download)
        fetched = download_documents(task.docs, task.download, DownloadCache(task.out.parent / "download"))
        write_table(pa.Table.from_pylist([f.row() for f in fetched], schema=DOWNLOAD_SCHEMA), task.out / "downloads" / name)
    rows = extract_documents(task.docs, task.cfg, scorers(task.cfg, task.models, task.device))
    write_table(pa.table(rows.blobs, schema=BLOB_SCHEMA), task.out / "blobs" / name)
    write_table(pa.table(rows.sentences, schema=SENTENCE_SCHEMA), task.out / "_raw" / "sentences" / name)
    write_table(pa.table(rows.images, schema=IMAGE_SCHEMA), task.out / "_raw" / "images" / name)  # last: done mark
    return rows.documents


def _chunks(inputs: Iterable[Path], cfg: ExtractConfig) -> Iterator[list[Document]]:
    """Documents in parts of at most `docs_per_part` documents and about `items_per_part` items
    (a part closes once it reaches either), so that a few long books still make several parts."""
    buf: list[Document] = []
    items, policy = 0, from_config(cfg)
    for path in inputs:
        for doc in read_documents(path, policy):
            buf.append(doc)
            items += len(doc.items)
            if len(buf) == cfg.docs_per_part or items >= cfg.items_per_part:
                yield buf
                buf, items = [], 0
    if buf:
        yield buf


def _models(cfg: Config) -> tuple[str, ...]:
    """The model fields that key extract only with the filter that uses them on (and download)."""
    e = cfg.extract
    on = {"llm": e.sentences.perplexity, "nsfw": e.images.max_nsfw is not None, "langid": bool(e.sentences.languages)}
    return (*(f"models.{m}" for m, used in on.items() if used), *(("download",) if cfg.download.enabled else ()))


def _model_files(cfg: Config) -> tuple[Path, ...]:
    return tuple(f for m in _models(cfg) if m.startswith("models.") for f in spec_files(getattr(cfg.models, m[7:])))


def _inputs_key(ctx: Context) -> str:
    """The inputs' fingerprint; with download on, also the set of failed URLs (read once per run,
    so a re-run retries them)."""
    key = fingerprint(ctx.inputs, ctx.ws.root)
    if ctx.cfg.download.enabled:
        key += ctx.__dict__.setdefault("_download_state", DownloadCache(ctx.ws.root / "download").state())
    return key


def _check_inputs(ctx: Context) -> None:
    """A bad input stops the run before the finished stage is cleared."""
    for path in ctx.inputs:
        detect(path)


class _Parts:
    """The stream of phase-1 tasks, one per chunk of documents not yet done (a finished part is
    skipped; the driver reads every input, also when parts are done). Once read through, it holds
    the number of parts, of documents and of documents the readers skipped, by reason."""

    def __init__(self, inputs: list[Path], out: Path, cfg: Config) -> None:
        self.inputs, self.out, self.cfg = inputs, out, cfg
        self.parts = self.documents = 0
        self.skipped: dict[str, int] = {}

    def __iter__(self) -> Iterator[_Task]:
        cfg, before = self.cfg, Counter(SKIPPED)
        for i, docs in enumerate(_chunks(self.inputs, cfg.extract)):
            self.parts, self.documents = i + 1, self.documents + len(docs)
            if not (self.out / "_raw" / "images" / part_name(i)).exists():
                yield _Task(i, docs, cfg.extract, cfg.models, cfg.runtime.device, self.out, cfg.download)
        self.skipped = dict(sorted((SKIPPED - before).items()))


def _read_column(paths: list[Path], columns: list[str]) -> pa.Table:
    return pa.concat_tables([pq.read_table(p, columns=columns) for p in paths])


def _id_key(ids: pa.ChunkedArray) -> np.ndarray:
    """The first 16 hex digits of each (hex) id as int64: a compact dedup key."""
    return np.array([int(s[:16], 16) for s in ids.to_pylist()], dtype=np.uint64).view(np.int64)


def _finalize(out: Path, table: str, n_parts: int, group: np.ndarray, reasons: dict[int, str],
              id_col: str) -> Counter:
    """Write the final parts: rows whose group is another row become duplicates."""
    raw = [out / "_raw" / table / part_name(i) for i in range(n_parts)]
    ids = _read_column(raw, [id_col]).column(id_col)
    counts: Counter = Counter()
    start = 0
    for i, path in enumerate(raw):
        t = pq.read_table(path)
        g = group[start:start + len(t)]
        rows = np.arange(start, start + len(t))
        dup = (g >= 0) & (g != rows)
        status = np.array(t.column("status").to_pylist(), dtype=object)
        reason = np.array(t.column("reason").to_pylist(), dtype=object)
        dup_of = np.full(len(t), None, dtype=object)
        if dup.any():
            status[dup] = "rejected"
            reason[dup] = [reasons[int(x)] for x in np.flatnonzero(dup) + start]
            dup_of[dup] = ids.take(pa.array(g[dup])).to_pylist()
        t = t.set_column(t.schema.get_field_index("status"), "status", pa.array(status, pa.string()))
        t = t.set_column(t.schema.get_field_index("reason"), "reason", pa.array(reason, pa.string()))
        t = t.append_column("dup_of", pa.array(dup_of, pa.string()))
        write_table(t, out / table / part_name(i))
        counts.update(f"{s}:{r}" if r else s for s, r in zip(status, reason))
        start += len(t)
    return counts


def _dedup_images(out: Path, cfg: Config, n_parts: int) -> Counter:
    raw = [out / "_raw" / "images" / part_name(i) for i in range(n_parts)]
    t = _read_column(raw, ["image_id", "phash", "status"])
    kept = pc.equal(t.column("status"), "kept").to_numpy(zero_copy_only=False)
    exact = first_occurrence(_id_key(t.column("image_id")), kept)
    unique = kept & (exact == np.arange(len(t)))
    phash = t.column("phash").fill_null(0).to_numpy()
    near = near_duplicates(phash, unique, cfg.extract.images.phash_distance)
    group = np.where(near >= 0, near, exact)
    reasons = {int(i): ("near_duplicate" if near[i] >= 0 else "duplicate") for i in
               np.flatnonzero((group >= 0) & (group != np.arange(len(t))))}
    return _finalize(out, "images", n_parts, group, reasons, "image_id")


def _dedup_sentences(out: Path, n_parts: int) -> Counter:
    raw = [out / "_raw" / "sentences" / part_name(i) for i in range(n_parts)]
    t = _read_column(raw, ["text_hash", "status"])
    kept = pc.equal(t.column("status"), "kept").to_numpy(zero_copy_only=False)
    group = first_occurrence(t.column("text_hash").to_numpy(), kept)
    reasons = dict.fromkeys(np.flatnonzero((group >= 0) & (group != np.arange(len(t)))).tolist(), "duplicate")
    return _finalize(out, "sentences", n_parts, group, reasons, "sentence_id")


def _plan(ctx: Context, out: Path) -> Plan:
    """Phase 1's tasks, streamed from the inputs (none once every part is done)."""
    if "parts" in ctx.ws.stage(NAME):
        return Plan()
    parts = _Parts(ctx.inputs, out, ctx.cfg)
    return Plan(parts, info=parts)


def _finish(ctx: Context, out: Path, plan: Plan) -> dict:
    """Record phase 1's counts, then the global dedup; `_raw` is gone once done."""
    ws, cfg = ctx.ws, ctx.cfg
    if plan.info is not None:
        ws.note(NAME, parts=plan.info.parts, documents=plan.info.documents, documents_skipped=plan.info.skipped)
    n_parts, n_docs = ws.stage(NAME)["parts"], ws.stage(NAME)["documents"]
    images = _dedup_images(out, cfg, n_parts)
    sentences = _dedup_sentences(out, n_parts)
    counts = {"parts": n_parts, "documents": n_docs, "documents_skipped": ws.stage(NAME).get("documents_skipped", {}),
              "images": summarize(images),
              "sentences": summarize(sentences)}
    shutil.rmtree(out / "_raw")
    return counts


STAGE = Stage(NAME, None, _finish, config=("extract",), plan=_plan, process=_process, unit="docs", when=_models, files=_model_files, inputs=_inputs_key,
              check=_check_inputs, whole=True, record_inputs=True,
              writes=(EXTRACT_IMAGES, EXTRACT_SENTENCES, EXTRACT_BLOBS, EXTRACT_DOWNLOADS),
              resources=Resources(model=True))
stage_key, run = STAGE.key, STAGE.run
