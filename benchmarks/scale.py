"""Global steps at scale, on synthetic workspaces (issue 16's cost curve).

`make-workspace` writes a workspace that `realsyn retrieve --out DIR` runs on as on a real one:
extract tables (documents of 48 sentences and their share of the images, the images and
sentences of a document in one part) and embed tables (embeddings streamed from `chunks()` of the standard synthetic
embeddings in ../shared/bench/embeddings.py, or `--embeddings DIR` with sentences.npy and
images.npy, memory-mapped), every item kept, and a manifest marking extract and embed finished.
Memory: one part at a time.

`--json [--sizes 1M,4M]` makes a workspace per size (images = N / 8, a near-copy planted every 20
rows; clusters ~ N / 400 by the config's default, as in the paper), runs `realsyn embed` (its
semantic dedup), `realsyn retrieve` and `realsyn balance` on it, each in its own process, and
reports per size and step: seconds, seconds per item (sentence indexed, image searched, pair
balanced), recall (retrieve's recall@3 against exact search, the centroid step's where the HNSW
router is used, dedup's pair recall against exact search), and the peak RSS of the driver and of
the largest worker (polled); then the ratios of the last size to the first.

    python benchmarks/scale.py make-workspace DIR --sentences N --images M [--dim D] [--embeddings DIR]
    python benchmarks/scale.py [--sizes 1M,4M] [--dim 384] [--workers 2] [--steps embed,retrieve,balance] [--json]
    python benchmarks/scale.py --workspace DIR [--workspace DIR2] --steps retrieve,balance [--json]

`--workspace` runs the steps on existing workspaces (made by `make-workspace`, or real ones whose
embed is done) instead of making them; retrieve and balance are wiped and run from scratch there
(embed is run only where it has not finished: its folder holds the embeddings).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from realsyn.config import load_config, to_yaml
from realsyn.runtime.context import Context
from realsyn.runtime.launch import make_executor
from realsyn.runtime.workspace import Workspace
from realsyn.tables import EMBED, EMBED_DEDUP, EXTRACT, IMAGE_SCHEMA, SENTENCE_SCHEMA, embedding_table

SHARED = Path(__file__).resolve().parents[2] / "shared" / "bench"
SENTENCES_PER_DOC, DOCS_PER_PART = 48, 1000  # images spread over the same documents (8 sentences per image)


def run_watched(cmd: list[str], env: dict[str, str], every: float = 0.1) -> dict:
    """Run `cmd`, polling the RSS of the process (the driver) and of its descendants (the
    workers) every `every` seconds; peaks in MiB. A peak shorter than the interval can be missed."""
    import psutil

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peaks = {"driver_peak_rss_mib": 0.0, "worker_peak_rss_mib": 0.0}
    watched = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            peaks["driver_peak_rss_mib"] = max(peaks["driver_peak_rss_mib"], watched.memory_info().rss / 2**20)
            for child in watched.children(recursive=True):
                peaks["worker_peak_rss_mib"] = max(peaks["worker_peak_rss_mib"], child.memory_info().rss / 2**20)
        except psutil.Error:  # a process ended between the listing and the reading
            pass
        time.sleep(every)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.read()[-2000:] if proc.stderr else ''}")
    return {k: round(v, 1) for k, v in peaks.items()}


def _blocks(kind: str, n: int, dim: int, embeddings: Path | None) -> Iterator[np.ndarray]:
    """The pool's rows in order, block by block (one block in memory)."""
    if embeddings is not None:
        x = np.load(embeddings / f"{kind}.npy", mmap_mode="r")[:n]
        for a in range(0, len(x), 200_000):
            yield np.asarray(x[a:a + 200_000], np.float32)
        return
    sys.path.insert(0, str(SHARED))
    from embeddings import chunks  # noqa: PLC0415  (shared benchmark data, beside the repository)

    for _, block in chunks(kind, n, dim=dim):
        yield block


class _Rows:
    """Takes the next `count` rows of a block stream."""

    def __init__(self, blocks: Iterator[np.ndarray]) -> None:
        self.blocks, self.buf = blocks, np.zeros((0, 0), np.float32)

    def take(self, count: int) -> np.ndarray:
        parts, need = [], count
        while need > 0:
            if not len(self.buf):
                self.buf = next(self.blocks)
            parts.append(self.buf[:need])
            need -= len(parts[-1])
            self.buf = self.buf[len(parts[-1]):]
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def _extract_table(kind: str, ids: list[str], docs: list[str], positions: list[int]) -> pa.Table:
    n = len(ids)
    cols: dict[str, pa.Array] = {
        ("image_id" if kind == "images" else "sentence_id"): pa.array(ids, pa.string()),
        "doc_id": pa.array(docs, pa.string()), "position": pa.array(positions, pa.int32()),
        "status": pa.array(["kept"] * n, pa.string()), "source": pa.array(["synthetic"] * n, pa.string())}
    if kind == "sentences":
        cols["text"] = pa.array([f"synthetic sentence {i}" for i in ids], pa.string())
        cols["kind"] = pa.array(["sentence"] * n, pa.string())
    schema = IMAGE_SCHEMA if kind == "images" else SENTENCE_SCHEMA
    return pa.table({f.name: cols.get(f.name, pa.nulls(n, f.type)) for f in schema}, schema=schema)


def plant_duplicates(x: np.ndarray, first: int, every: int) -> np.ndarray:
    """`x` (rows first.. of the pool) with every `every`-th pool row replaced by a near copy
    (cosine ~0.999) of a row 1 to 5 before it in the same part; deterministic."""
    if not every:
        return x
    rows = np.arange(len(x))
    dup = rows[((first + rows) % every == 0) & (rows >= 5)]
    if not len(dup):
        return x
    src = dup - 1 - ((first + dup) // every) % 5
    noise = np.random.default_rng([7, first]).standard_normal((len(dup), x.shape[1])).astype(np.float32)
    y = x[src] + 0.05 * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    x = x.copy()
    x[dup] = y / np.linalg.norm(y, axis=1, keepdims=True)
    return x


def make_workspace(root: Path, sentences: int, images: int, dim: int, embeddings: Path | None = None,
                   docs_per_part: int = DOCS_PER_PART, duplicates: int = 0, dedup: bool = True) -> dict:
    """Write the synthetic workspace; returns its counts. `duplicates`: plant a near copy every
    that many rows (0: none); `dedup`: write embed's dedup tables (every item kept) and mark embed
    finished, else leave its semantic dedup to `realsyn embed`."""
    root.mkdir(parents=True, exist_ok=True)
    cfg = load_config(None)
    cfg.embed.image_dedup_threshold, cfg.embed.image_dedup_phash = 0.95, "off"  # synthetic images have no pixels
    (root / "config.yaml").write_text(to_yaml(cfg))
    ws = Workspace(root)
    ctx = Context(ws, cfg, make_executor("local", 1), [])
    from realsyn.embed import stage as embed
    from realsyn.extract import stage as extract

    ws.begin(extract.NAME, extract.STAGE.key(ctx), inputs=[])
    ws.begin(embed.NAME, embed.STAGE.key(ctx))  # before its parts are written: begin clears a new stage's folder
    docs = max(1, -(-sentences // SENTENCES_PER_DOC))
    rows = {"sentences": _Rows(_blocks("sentences", sentences, dim, embeddings)),
            "images": _Rows(_blocks("images", images, dim, embeddings))}
    done = {"sentences": 0, "images": 0}
    all_ids: dict[str, list[str]] = {"sentences": [], "images": []}
    part = 0
    for first in range(0, docs, docs_per_part):
        span = range(first, min(docs, first + docs_per_part))
        for kind, total in (("sentences", sentences), ("images", images)):
            # spread the kind's rows evenly over the documents
            lo, hi = done[kind], min(total, round(total * span.stop / docs))
            n = hi - lo
            ids = [f"{(1 if kind == 'sentences' else 2) << 60 | i:032x}" for i in range(lo, hi)]
            doc_of = [first + (j * len(span)) // max(1, n) for j in range(n)]
            positions = [2 * j + (kind == "images") for j in range(n)]
            EXTRACT[kind].write(root, _extract_table(kind, ids, [f"{d:016x}" for d in doc_of], positions), part)
            x = plant_duplicates(rows[kind].take(n), lo, duplicates)
            EMBED[kind].write(root, embedding_table(ids, x, EMBED[kind].id or "", cfg.embed.dtype), part)
            all_ids[kind] += ids
            done[kind] = hi
        part += 1
    ws.note(extract.NAME, parts=part, documents=docs, documents_skipped={})
    counts = {"parts": part, "documents": docs, "documents_skipped": {},
              "images": {"kept": images, "read": images, "reasons": {}, "rejected": 0},
              "sentences": {"kept": sentences, "read": sentences, "reasons": {}, "rejected": 0}}
    ws.finish(extract.NAME, counts, 0.0)
    if not dedup:
        return counts
    for kind, ids in all_ids.items():
        EMBED_DEDUP[kind].write(root, pa.table({EMBED_DEDUP[kind].id: pa.array(ids, pa.string()),
                                                "status": pa.array(["kept"] * len(ids), pa.string()),
                                                "reason": pa.nulls(len(ids), pa.string()),
                                                "dup_of": pa.nulls(len(ids), pa.string())}))
    ws.finish(embed.NAME, {k: counts[k] for k in ("images", "sentences")}, 0.0)
    return counts


def _size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000}.get(text[-1:], 1)
    return int(float(text.rstrip("KM")) * scale)


DUPLICATE_EVERY = 20  # a planted near-copy every 20 rows of each modality (5%)
STEPS = ("embed", "retrieve", "balance")


def _run_stage(root: Path, name: str, workers: int, sets: tuple[str, ...]) -> dict:
    """`realsyn NAME --out ROOT` in its own process: wall seconds, peak RSS and the manifest's entry."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    started = time.time()
    peaks = run_watched([sys.executable, "-m", "realsyn.cli", name, "--out", str(root), "--quiet",
                         "--workers", str(workers), *[a for s in sets for a in ("--set", s)]], env)
    stage = json.loads((root / "manifest.json").read_text())["stages"][name]
    return {"wall_seconds": round(time.time() - started, 1), "stage": stage, **peaks}


def _skip_synth(root: Path) -> None:
    """Mark synth finished with no output (every pair counts as having a synthetic text)."""
    from realsyn.synth import stage as synth

    ws = Workspace(root)
    ctx = Context(ws, load_config(root / "config.yaml"), make_executor("local", 1), [])
    ws.begin(synth.NAME, synth.STAGE.key(ctx))
    ws.finish(synth.NAME, {}, 0.0)


def measure(sentences: int, dim: int, workers: int, sets: tuple[str, ...] = (), steps: tuple[str, ...] = STEPS) -> dict:
    """A synthetic workspace of `sentences` (images = sentences / 8, a near-copy planted every
    DUPLICATE_EVERY rows), then embed's semantic dedup, retrieve and balance (or those of
    `steps`; without embed, the workspace comes deduplicated, no copies planted), each
    `realsyn STAGE` in its own process: the stages' figures and the peak RSS of each process tree."""
    images = max(1, sentences // 8)
    with tempfile.TemporaryDirectory(prefix="realsyn-scale-") as tmp:
        root = Path(tmp) / "work"
        started = time.time()
        dedup = "embed" not in steps
        make_workspace(root, sentences, images, dim, duplicates=0 if dedup else DUPLICATE_EVERY, dedup=dedup)
        made = time.time() - started
        return {**measure_on(root, workers, sets, steps), "workspace_seconds": round(made, 1)}


def measure_on(root: Path, workers: int, sets: tuple[str, ...] = (), steps: tuple[str, ...] = STEPS) -> dict:
    """The steps on an existing workspace (`make-workspace`'s, or one whose embed is done)."""
    stages = json.loads((root / "manifest.json").read_text())["stages"]
    counts = stages.get("embed", {}).get("counts") or stages["extract"]["counts"]  # the pool after embed's dedup
    sentences, images = counts["sentences"]["kept"], counts["images"]["kept"]
    dim = pq.ParquetFile(EMBED["sentences"].path(root, 0)).schema_arrow.field("embedding").type.list_size
    runs = {}
    for name in steps:
        if name != "embed" and Workspace(root).stage(name):  # measured from scratch, not skipped as up to date
            Workspace(root).begin(name, "")  # (never embed: its folder holds the synthetic embeddings)
        if name == "balance":
            _skip_synth(root)
        runs[name] = _run_stage(root, name, workers, sets)
        print(json.dumps({"sentences": sentences, "step": name, **{k: v for k, v in runs[name].items() if k != "stage"},
                          "seconds": runs[name]["stage"]["seconds"]}), file=sys.stderr, flush=True)
    out = {"sentences": sentences, "images": images, "dim": dim, "set": list(sets)}
    for name, figures in (("dedup", _dedup), ("retrieve", _retrieve), ("balance", _balance)):
        step = "embed" if name == "dedup" else name
        if step in runs:
            peaks = {k: runs[step][k] for k in ("driver_peak_rss_mib", "worker_peak_rss_mib")}
            out[name] = {**figures(runs[step], sentences, images), **peaks}
    return out


def _dedup(run: dict, sentences: int, images: int) -> dict:
    embed = run["stage"]
    return {"seconds": embed["seconds"], "us_per_item": round(1e6 * embed["seconds"] / (sentences + images), 3),
            "how": embed["counts"]["semantic_dedup"],
            "duplicates": {k: embed["counts"][k]["rejected"] for k in ("sentences", "images")}}


def _retrieve(run: dict, sentences: int, images: int) -> dict:
    retrieve = run["stage"]
    build = retrieve.get("index_seconds", 0.0)
    search = retrieve["seconds"] - build
    counts = retrieve["counts"]
    return {"clusters": counts["clusters"], "blocks": counts.get("blocks"), "wall_seconds": run["wall_seconds"],
            "index_seconds": round(build, 2), "search_seconds": round(search, 2),
            "index_us_per_sentence": round(1e6 * build / sentences, 3), "search_us_per_image": round(1e6 * search / images, 3),
            **{k: counts.get(k) for k in ("recall_at_k", "centroid_recall", "nprobe", "recall_by_nprobe")}}


def _balance(run: dict, sentences: int, images: int) -> dict:
    balance = run["stage"]
    pairs = balance["counts"]["pairs"]["read"]
    return {"seconds": balance["seconds"], "pairs": pairs, "clusters": balance["counts"]["clusters"],
            "us_per_pair": round(1e6 * balance["seconds"] / max(1, pairs), 3)}


RATIOS = {"dedup": ("us_per_item", "driver_peak_rss_mib", "worker_peak_rss_mib"),
          "retrieve": ("index_us_per_sentence", "search_us_per_image", "driver_peak_rss_mib", "worker_peak_rss_mib"),
          "balance": ("us_per_pair", "driver_peak_rss_mib", "worker_peak_rss_mib")}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "make-workspace":
        p = argparse.ArgumentParser(prog="scale.py make-workspace")
        p.add_argument("dir", type=Path)
        p.add_argument("--sentences", type=_size, required=True)
        p.add_argument("--images", type=_size, required=True)
        p.add_argument("--dim", type=int, default=384)
        p.add_argument("--embeddings", type=Path, default=None, help="DIR with sentences.npy and images.npy")
        p.add_argument("--docs-per-part", type=int, default=DOCS_PER_PART, help="documents of 48 sentences per part")
        a = p.parse_args(sys.argv[2:])
        print(json.dumps(make_workspace(a.dir, a.sentences, a.images, a.dim, a.embeddings, a.docs_per_part)))
        return
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="1M,4M")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--set", action="append", default=[], help="a config override for retrieve, e.g. retrieve.nprobe=2")
    p.add_argument("--steps", default=",".join(STEPS), help="some of embed,retrieve,balance (balance needs retrieve)")
    p.add_argument("--workspace", type=Path, action="append", default=[],
                   help="run the steps on this existing workspace (repeatable, in place of --sizes)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    steps = tuple(s for s in STEPS if s in a.steps.split(","))
    runs = []
    for size in a.workspace or a.sizes.split(","):
        if isinstance(size, Path):
            runs.append(measure_on(size, a.workers, tuple(a.set), steps))
        else:
            runs.append(measure(_size(size), a.dim, a.workers, tuple(a.set), steps))
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)  # each size as it ends: a long sweep shows progress
    first, last = runs[0], runs[-1]
    out = {"runs": runs, "ratios_last_to_first": {
        step: {k: round(last[step][k] / first[step][k], 3) for k in keys if first[step][k]}
        for step, keys in RATIOS.items() if step in first}}
    print(json.dumps(out, indent=None if a.json else 2))


if __name__ == "__main__":
    main()
