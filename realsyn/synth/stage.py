"""The synth stage (paper §4): for every image with at least one retrieved text, a caption and tags
of the image are fused with its best realistic text R1 (or, with `per_text: all`, with each of its
texts) by the LLM into one synthetic text.

One task per `retrieve/pairs` part writes `synth/part-N.parquet`: `image_id`, `text_index` (0-based
position in the pair's `texts`; 0 = R1), `text_id`, `source_text`, `caption`, `tags`, `syn_text`,
`model` (the LLM spec), `prompt_version`, `guard_reason` and `fallback` (see `guard.py`). An image's
bytes may live in any extract blob part: the driver maps image ids to blob parts from the blobs'
`image_id` columns (one join, ~100 bytes per image) and gives each task the parts it needs.

Generations go through the cache `synth/_cache-HOST.sqlite` (see `cache.py`, one file per host). Each part's counts are kept
in its parquet metadata, so the manifest's totals cover resumed runs: images (read = kept +
rejected: `no_text`, `no_image`), texts, generated (LLM calls that produced the final parts),
cached, regenerated and fallbacks by reason.
"""

from __future__ import annotations

import json
import socket
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from realsyn.config import Config, ModelsConfig, SynthConfig
from realsyn.extract import stage as extract_stage
from realsyn.models.registry import spec_files
from realsyn.prompts import prompt_path
from realsyn.retrieve import stage as retrieve_stage
from realsyn.runtime.context import Context
from realsyn.runtime.stage import Plan, Resources, Stage
from realsyn.runtime.workspace import summarize, write_table
from realsyn.tables import EXTRACT_BLOBS, EXTRACT_IMAGES, RETRIEVE_PAIRS, SYNTH

NAME = "synth"


def cache_path(out: Path) -> Path:
    """This host's generation cache. One SQLite file per host, because WAL mode needs all its
    writers on one host; "_": skipped when the folder is read as a parquet dataset."""
    return out / f"_cache-{socket.gethostname()}.sqlite"


_META = b"realsyn.synth"
SCHEMA = pa.schema([
    ("image_id", pa.string()), ("text_index", pa.int32()), ("text_id", pa.string()), ("source_text", pa.string()),
    ("caption", pa.string()), ("tags", pa.list_(pa.string())), ("syn_text", pa.string()), ("model", pa.string()),
    ("prompt_version", pa.string()), ("guard_reason", pa.string()), ("fallback", pa.bool_()),
])


@dataclass(frozen=True)
class _Task:
    pairs: Path
    blobs: tuple[Path, ...]
    out: Path
    cfg: SynthConfig
    models: ModelsConfig
    device: str
    seed: int
    threads: int


_MODELS = ("models.llm", "models.tagger", "models.captioner")


def _langid(cfg: Config) -> tuple[str, ...]:
    """The language model keys synth only when the output guard checks the language."""
    return ("models.langid",) if cfg.synth.language else ()


def _files(cfg: Config) -> tuple[Path, ...]:
    """The prompt file (edited in place, it redoes synth) and local model folders."""
    specs = [cfg.models.llm, cfg.models.tagger, cfg.models.captioner, *([cfg.models.langid] * bool(cfg.synth.language))]
    return (prompt_path(cfg.synth.prompt), *(f for s in specs for f in spec_files(s)))


def _batched(fn: Any, items: Sequence[Any], size: int) -> list[Any]:
    return [y for a in range(0, len(items), size) for y in fn(items[a:a + size])]


def _image_bytes(blobs: Sequence[Path], ids: list[str]) -> dict[str, bytes]:
    wanted = pa.array(ids, pa.string())
    out: dict[str, bytes] = {}
    for path in blobs:
        t = pq.read_table(path, filters=pc.is_in(pc.field("image_id"), wanted))
        out.update(zip(t["image_id"].to_pylist(), t["data"].to_pylist()))
    return out


def _rows(cfg: SynthConfig, pairs: pa.Table, captions: list[str], tags: list[list[str]]) -> list[dict[str, Any]]:
    """One output row (without the generated fields) per (image, text) to fuse."""
    rows = []
    for r, caption, image_tags in zip(pairs.to_pylist(), captions, tags):
        for k in range(len(r["texts"]) if cfg.per_text == "all" else 1):
            rows.append({"image_id": r["image_id"], "text_index": k, "text_id": r["text_ids"][k],
                         "source_text": r["texts"][k], "caption": caption, "tags": image_tags})
    return rows


def _inputs(task: _Task) -> tuple[pa.Table, list[bytes], Counter]:
    """The pairs that have a text and an image, their image bytes, and the counts of the others."""
    pairs = pq.read_table(task.pairs, columns=["image_id", "text_ids", "texts"])
    read = pairs.num_rows
    pairs = pairs.filter(pc.fill_null(pc.greater(pc.list_value_length(pairs["texts"]), 0), False))
    with_text = pairs.num_rows
    data = _image_bytes(task.blobs, pairs["image_id"].to_pylist())
    pairs = pairs.filter(pa.array([i in data for i in pairs["image_id"].to_pylist()], pa.bool_()))
    counts = Counter({"kept": pairs.num_rows, "rejected:no_text": read - with_text,
                      "rejected:no_image": with_text - pairs.num_rows})
    return pairs, [data[i] for i in pairs["image_id"].to_pylist()], counts


def _describe(task: _Task, images: list[bytes]) -> tuple[list[str], list[list[str]]]:
    """Captions and top `tags_k` tag names of the images, in batches."""
    from realsyn.models import load

    models, k = task.models, task.cfg.tags_k
    tagger = load("tagger", models.tagger, task.device)
    captioner = load("captioner", models.captioner, task.device)
    tags = _batched(lambda b: tagger.tag(b, k=k), images, models.batch_size)
    return _batched(captioner.caption, images, models.batch_size), [[name for name, _ in t] for t in tags]


def _fuser(task: _Task) -> tuple[Any, Any, Any, Any]:
    """(prompt, cached LLM, guard, token counter) of this worker."""
    from realsyn.models import load
    from realsyn.prompts import load_prompt
    from realsyn.synth.cache import open_cache
    from realsyn.synth.fuse import CachedLLM, Decoding
    from realsyn.synth.guard import Guard
    from realsyn.synth.tokens import counter

    cfg, models = task.cfg, task.models
    prompt, tokens = load_prompt(cfg.prompt), counter()
    langid = load("langid", models.langid, task.device) if cfg.language else None
    guard = Guard.for_prompt(prompt.static_text(), tokens, max_tokens=cfg.max_clip_tokens, language=cfg.language,
                             detect=(lambda text: langid.detect([text])[0]) if langid else None)
    llm = CachedLLM(load("llm", models.llm, task.device), models.llm, prompt.version, open_cache(cache_path(task.out)),
                    Decoding(cfg.max_tokens, cfg.temperature, cfg.retry_temperature, task.seed, cfg.batch_size))
    return prompt, llm, guard, tokens


def _process(task: _Task) -> int:
    """Tag, caption and fuse the images of one pairs part; write its synth part (runs in a worker)."""
    from realsyn.synth.fuse import Item, fuse

    _set_threads(task.threads)
    pairs, images, counts = _inputs(task)
    rows = _rows(task.cfg, pairs, *_describe(task, images))
    prompt, llm, guard, tokens = _fuser(task)
    items = [Item(r["caption"], tuple(r["tags"]), r["source_text"]) for r in rows]
    fused, fuse_counts = fuse(items, prompt, llm, guard, tokens) if rows else ([], Counter())
    for r, f in zip(rows, fused):
        r.update(syn_text=f.text, model=task.models.llm, prompt_version=prompt.version,
                 guard_reason=f.guard_reason, fallback=f.fallback)
    counts.update(llm.counts + fuse_counts + Counter(texts=len(rows)))
    meta = {"counts": dict(counts), "token_counter": tokens.name, "prompt_version": prompt.version}
    write_table(pa.Table.from_pylist(rows, schema=SCHEMA.with_metadata({_META: json.dumps(meta)})),
                task.out / task.pairs.name)
    return sum(v for k, v in counts.items() if k == "kept" or k.startswith("rejected:"))


def _set_threads(threads: int) -> None:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency, but only the models need it
        return
    torch.set_num_threads(threads)


def _ids_by_file(paths: list[Path], label: str) -> pa.Table:
    """(image_id, `label` = index of the file) for every row of some parquet files."""
    tables = [pa.table({"image_id": pq.read_table(p, columns=["image_id"])["image_id"].cast(pa.string()).combine_chunks(),
                        label: pa.array([k] * pq.ParquetFile(p).metadata.num_rows, pa.int32())})
              for k, p in enumerate(paths)]
    return pa.concat_tables(tables) if tables else pa.table({"image_id": pa.array([], pa.string()),
                                                              label: pa.array([], pa.int32())})


def _blob_parts(extract_dir: Path, pairs: list[Path]) -> dict[Path, tuple[Path, ...]]:
    """The blob parts holding each pairs part's images: one join of the compact id columns."""
    blobs = EXTRACT_BLOBS.parts(extract_dir.parent)
    joined = _ids_by_file(pairs, "pairs").join(_ids_by_file(blobs, "blob"), "image_id", join_type="inner")
    grouped = joined.group_by("pairs").aggregate([("blob", "distinct")])
    need = dict(zip(grouped["pairs"].to_pylist(), grouped["blob_distinct"].to_pylist()))
    return {p: tuple(blobs[b] for b in sorted(need.get(k, []))) for k, p in enumerate(pairs)}


def _summary(parts: list[Path]) -> dict[str, Any]:
    """Manifest counts from every finished part's metadata."""
    total, seen = Counter[str](), {"token_counter": set[str](), "prompt_version": set[str]()}
    for p in parts:
        meta = json.loads(pq.read_schema(p).metadata[_META])
        total.update(meta["counts"])
        for name, values in seen.items():
            values.add(meta[name])
    images = Counter({k: v for k, v in total.items() if k == "kept" or k.startswith("rejected:")})
    return {"images": summarize(images), "texts": total["texts"], "generated": total["generated"],
            "cached": total["cached"], "regenerated": total["regenerated"],
            "fallbacks": {k.split(":", 1)[1]: v for k, v in sorted(total.items()) if k.startswith("fallback:") and v},
            **{name: ", ".join(sorted(values)) or None for name, values in seen.items()}}


def _plan(ctx: Context, out: Path) -> Plan:
    """One task per retrieve part not yet done."""
    ws, cfg = ctx.ws, ctx.cfg
    pairs = RETRIEVE_PAIRS.parts(ws.root)
    todo = [p for p in pairs if not (out / p.name).exists()]
    blobs = _blob_parts(ws.dir(extract_stage.NAME), todo) if todo else {}
    threads = ctx.executor.threads_for(len(todo))
    return Plan([_Task(p, blobs[p], out, cfg.synth, cfg.models, cfg.runtime.device, cfg.runtime.seed, threads)
                 for p in todo], info=pairs)


def _finish(ctx: Context, out: Path, plan: Plan) -> dict:
    """The counts from every part's metadata."""
    return _summary([out / p.name for p in plan.info])


STAGE = Stage(NAME, retrieve_stage.STAGE, _finish, config=("synth", *_MODELS), when=_langid, files=_files,
              plan=_plan, process=_process, unit="images",
              reads=(RETRIEVE_PAIRS, EXTRACT_IMAGES, EXTRACT_BLOBS), writes=(SYNTH,),
              resources=Resources(model=True))
stage_key, run = STAGE.key, STAGE.run
