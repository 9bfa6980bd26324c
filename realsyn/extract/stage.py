"""The extract stage: read documents, filter images and sentences per part, then deduplicate.

Phase 1 streams the inputs in chunks of `docs_per_part` documents; each chunk is one task that
writes `_raw/images`, `_raw/sentences` and `blobs` (the bytes of images that passed the quality
filters, so later stages never re-read the input). Phase 2 is the global dedup step, bucketed
tasks (`dedup.py`: exact keys by their top bits, pHashes by their chunks), which writes the final
`images/` and `sentences/` parts with every rejected item's reason and, for duplicates, the id
of the item kept in its place (`dup_of`).
"""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa

from realsyn.config import Config, DownloadConfig, ExtractConfig, ModelsConfig
from realsyn.extract import dedup
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
    llm = load("llm", models.llm, device) if cfg.sentences.perplexity else None
    if llm is not None and hasattr(llm, "at"):  # a local LM that runs at a lower precision (smollm2:transformers)
        llm = llm.at(cfg.sentences.perplexity_precision)
    return Scorers(
        perplexity=llm.perplexity if llm is not None else None,
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
    images = dedup.deduplicate(ctx, out, "images", n_parts, cfg.extract.images.phash_distance)
    sentences = dedup.deduplicate(ctx, out, "sentences", n_parts, None)
    counts = {"parts": n_parts, "documents": n_docs, "documents_skipped": ws.stage(NAME).get("documents_skipped", {}),
              "images": summarize(images),
              "sentences": summarize(sentences)}
    shutil.rmtree(out / "_raw")
    shutil.rmtree(out / "_dedup", ignore_errors=True)
    return counts


STAGE = Stage(NAME, None, _finish, config=("extract",), plan=_plan, process=_process, unit="docs", when=_models, files=_model_files, inputs=_inputs_key,
              check=_check_inputs, whole=True, record_inputs=True,
              writes=(EXTRACT_IMAGES, EXTRACT_SENTENCES, EXTRACT_BLOBS, EXTRACT_DOWNLOADS),
              resources=Resources(model=True))
stage_key, run = STAGE.key, STAGE.run
