"""The extract stage: tasks read their own shards of the inputs, filter images and sentences,
then a bucketed global dedup.

Planning reads metadata only (`io.readers.plan`: sizes, counts, the EPUB package document): a
task carries a `Shard`, never content. Phase 1, a task per shard, reads its documents, cuts them
into parts of at most `docs_per_part` documents and about `items_per_part` items, and writes per
part `_raw/{images,sentences,blobs,downloads}/sSSSSSS-KKKKK.parquet` (blobs: the bytes of images
that passed the quality filters, so later stages never re-read the input), then
`_raw/shards/SSSSSS.json` with its counts (the shard's done mark). The driver then numbers the
parts in shard order (renames to `part-NNNNN`), drops documents repeated across the byte or row
ranges of one file (`dedup.repeated_documents`), and runs the global dedup step as bucketed tasks
(`dedup.py`), which writes the final `images/` and `sentences/` parts with every rejected item's
reason and, for duplicates, the id of the item kept in its place (`dup_of`).
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa

from realsyn.config import Config, DownloadConfig, ExtractConfig, ModelsConfig
from realsyn.extract import dedup
from realsyn.extract.records import Scorers, extract_documents
from realsyn.io import img2dataset
from realsyn.io.documents import Document
from realsyn.io.download import DownloadStore, download_documents
from realsyn.io.policy import from_config
from realsyn.io.readers import Shard, detect, plan, read_shard
from realsyn.io.readers.base import SKIPPED
from realsyn.io.remote import localize
from realsyn.models.registry import spec_files
from realsyn.runtime import mirror
from realsyn.runtime.context import Context
from realsyn.runtime.stage import Plan, Resources, Stage
from realsyn.runtime.workspace import fingerprint, part_name, summarize, write_json, write_table
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
RAW = ("images", "sentences", "blobs", "downloads")  # phase 1's tables, per part
RANGED = ("mmc4", "obelics", "warc")  # formats whose byte or row ranges may repeat a document (a re-crawled URL)


@dataclass(frozen=True)
class _Task:
    index: int  # shard
    shard: Shard
    cfg: ExtractConfig
    models: ModelsConfig
    device: str
    out: Path
    download: DownloadConfig | None = None
    images: Path | None = None  # the index of extract.images.sources (img2dataset output)


def _raw(out: Path, table: str, shard: int, k: int) -> Path:
    return out / "_raw" / table / f"s{shard:06d}-{k:05d}.parquet"


def _marker(out: Path, shard: int) -> Path:
    return out / "_raw" / "shards" / f"{shard:06d}.json"


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
    """Phase 1 for one shard (runs in a worker): its parts, then its done mark. Returns the number of documents."""
    before, docs, parts = Counter(SKIPPED), 0, 0
    if task.shard.index and (m := mirror.active()) is not None:
        m.fetch(Path(task.shard.index))  # written by the driver (a WARC's record index)
    score = scorers(task.cfg, task.models, task.device)
    for parts, chunk in enumerate(_chunks(read_shard(task.shard, from_config(task.cfg)), task.cfg), 1):
        _part(task, chunk, score, parts - 1)
        docs += len(chunk)
    skipped = SKIPPED - before if task.shard.slice[0] == 0 else Counter()
    ranged = task.shard.format in RANGED and (task.shard.start > 0 or task.shard.stop is not None)
    write_json({"parts": parts, "documents": docs, "skipped": dict(skipped), "ranged": ranged}, _marker(task.out, task.index))
    return docs


def _part(task: _Task, docs: list[Document], score: Scorers, k: int) -> None:
    """Filter one part's documents and write its raw tables (images last)."""
    if task.images is not None:  # URL-only images from img2dataset output
        img2dataset.fill(docs, img2dataset.Index(task.images))
    if task.download is not None and task.download.enabled:  # URL-only images: fetch (stored in WORK/download/PART)
        store = DownloadStore(task.out.parent / "download", f"{task.index:06d}{k:05d}")
        fetched = download_documents(docs, task.download, store)
        write_table(pa.Table.from_pylist([f.row() for f in fetched], schema=DOWNLOAD_SCHEMA),
                    _raw(task.out, "downloads", task.index, k))
    rows = extract_documents(docs, task.cfg, score)
    write_table(pa.table(rows.blobs, schema=BLOB_SCHEMA), _raw(task.out, "blobs", task.index, k))
    write_table(pa.table(rows.sentences, schema=SENTENCE_SCHEMA), _raw(task.out, "sentences", task.index, k))
    write_table(pa.table(rows.images, schema=IMAGE_SCHEMA), _raw(task.out, "images", task.index, k))


def _chunks(docs: Iterable[Document], cfg: ExtractConfig) -> Iterator[list[Document]]:
    """Documents in parts of at most `docs_per_part` documents and about `items_per_part` items
    (a part closes once it reaches either)."""
    buf: list[Document] = []
    items = 0
    for doc in docs:
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
    if ctx.cfg.extract.images.sources:
        key += img2dataset.index_id(_sources(ctx))
    if ctx.cfg.download.enabled:
        key += ctx.__dict__.setdefault("_download_state", DownloadStore.state(ctx.ws.root / "download"))
    return key


def _sources(ctx: Context) -> list[Path]:
    """The image source folders (URLs copied into the workspace once)."""
    return [localize(s, ctx.ws.root) for s in ctx.cfg.extract.images.sources]


def _check_inputs(ctx: Context) -> None:
    """A bad input stops the run before the finished stage is cleared."""
    for path in ctx.inputs:
        detect(path)
    img2dataset.shards(_sources(ctx))


class _Shards:
    """The stream of phase-1 tasks, one per shard not yet done, planned from metadata. Once read
    through, it holds the documents the planner skipped (symbolic links out of an input), by reason."""

    def __init__(self, inputs: list[Path], out: Path, cfg: Config, images: Path | None = None) -> None:
        self.inputs, self.out, self.cfg, self.images = inputs, out, cfg, images
        self.skipped: Counter[str] = Counter()

    def __iter__(self) -> Iterator[_Task]:
        e = self.cfg.extract
        scratch = self.out / "_raw" / "warc"  # WARC record indexes the planner writes for the tasks
        shards = (s for path in self.inputs for s in plan(path, from_config(e), e.shard_kib << 10, e.docs_per_part, scratch))
        for i, shard in enumerate(self._counted(shards)):
            if not _marker(self.out, i).exists():
                yield _Task(i, shard, e, self.cfg.models, self.cfg.runtime.device, self.out, self.cfg.download, self.images)

    def _counted(self, shards: Iterator[Shard]) -> Iterator[Shard]:
        """`shards`, counting what the planner skips (tasks may run in this process in between)."""
        while True:
            before = Counter(SKIPPED)
            shard = next(shards, None)
            self.skipped += SKIPPED - before
            if shard is None:
                return
            yield shard


def _plan(ctx: Context, out: Path) -> Plan:
    """Phase 1's tasks, streamed from the plan of the inputs (none once the parts are numbered),
    after indexing the image sources if there are any."""
    if "parts" in ctx.ws.stage(NAME):
        return Plan()
    sources = _sources(ctx)
    images = img2dataset.build(ctx.executor, sources, ctx.ws.root / "sources") if sources else None
    shards = _Shards(ctx.inputs, out, ctx.cfg, images)
    return Plan(shards, info=shards)


def _done_shards(out: Path) -> Iterator[tuple[int, dict, int]]:
    """(shard, its counts, its first part's number) of every finished shard, in shard order."""
    first = 0
    for marker in sorted((out / "_raw" / "shards").glob("*.json")):
        info = json.loads(marker.read_text())
        yield int(marker.stem), info, first
        first += info["parts"]


def _number(out: Path) -> tuple[int, int, Counter]:
    """Rename the shards' parts to `part-NNNNN` in shard order: images and sentences in `_raw/`,
    blobs and downloads in place. Idempotent (a renamed file is gone from its old name), so an
    interrupted numbering resumes. Returns (parts, documents, skipped by reason)."""
    parts, docs, skipped = 0, 0, Counter[str]()
    for shard, info, first in _done_shards(out):
        for k in range(info["parts"]):
            for table in RAW:
                src = _raw(out, table, shard, k)
                if src.exists():
                    dest = (out / "_raw" / table if table in ("images", "sentences") else out / table) / part_name(first + k)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    src.replace(dest)
        parts, docs = first + info["parts"], docs + info["documents"]
        skipped.update(info["skipped"])
    if (m := mirror.active()) is not None:  # the store holds the parts under their shard names
        for folder in ("_raw", "blobs", "downloads"):
            m.sync_up_path(out / folder)
    return parts, docs, skipped


def _ranged(out: Path) -> list[int]:
    """The parts read from byte or row ranges of a file (where a document may repeat)."""
    return [p for _, info, first in _done_shards(out) if info["ranged"] for p in range(first, first + info["parts"])]


def _finish(ctx: Context, out: Path, plan: Plan) -> dict:
    """Number phase 1's parts and record their counts, drop repeated documents, then the global
    dedup; `_raw` is gone once done."""
    ws, cfg = ctx.ws, ctx.cfg
    if "parts" not in ws.stage(NAME):
        parts, docs, skipped = _number(out)
        skipped.update(plan.info.skipped if plan.info is not None else {})
        ws.note(NAME, parts=parts, documents=docs, documents_skipped=dict(sorted(skipped.items())))
    stage = ws.stage(NAME)
    n_parts = stage["parts"]
    repeated = dedup.repeated_documents(ctx, out, _ranged(out), cfg.extract.docs_per_part)
    skipped = Counter(stage["documents_skipped"]) + Counter({"repeated_document": repeated})
    images = dedup.deduplicate(ctx, out, "images", n_parts, cfg.extract.images.phash_distance)
    sentences = dedup.deduplicate(ctx, out, "sentences", n_parts, None)
    counts = {"parts": n_parts, "documents": stage["documents"] - repeated,
              "documents_skipped": dict(sorted(skipped.items())),
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
