"""Right texts on real corpora nobody here wrote: Gutenberg HTML books, web archives, the ZIM.
Captions and alt texts reach the pool and their images, the Mona Lisa's painting is found in its
archive, and no navigation or facet label is in the pool."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from run_cli import realsyn

from realsyn.io.readers.html import FIGURE_LABEL

pytestmark = pytest.mark.slow
CORPORA = {"gutenberg": ["gutenberg/30621-h"], "warc": ["warc-outside"]}  # and the ZIM (`zim_run`)
FACETS = re.compile(r"\b(?:apply|remove)\b.{0,60}\bfilter\b|^(?:home|menu|search|log ?in|sign ?in)$", re.I)


def _norm(text: str) -> str:
    return " ".join(FIGURE_LABEL.sub("", text or "", count=1).split()).lower()


def own_text_rate(work: Path) -> tuple[int, int]:
    """(kept images whose own caption or alt is among their texts, kept images that have one)."""
    images = {r["image_id"]: r for r in pq.read_table(work / "extract" / "images").to_pylist() if r["status"] == "kept"}
    pairs = {p["image_id"]: p for p in pq.read_table(work / "retrieve" / "pairs").to_pylist()}
    hits = eligible = 0
    for image_id, r in images.items():
        own = {_norm(t) for t in (r["caption"], r["alt"]) if t}
        if not own or image_id not in pairs:
            continue
        eligible += 1
        texts = {" ".join((t or "").split()).lower() for t in pairs[image_id]["texts"] or []}
        hits += bool(own & texts) or any(o in t or t in o for o in own for t in texts if len(t) > 20)
    return hits, eligible


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory, zim_run) -> dict[str, Path]:
    out = {"zim": zim_run}  # the whole pipeline's run, shared with test_end_to_end
    for name, inputs in CORPORA.items():
        work = tmp_path_factory.mktemp(name) / "work"
        realsyn("run", *(str(data_dir / i) for i in inputs), "--out", str(work), "--until", "retrieve", "--quiet",
                "--set", "extract.sentences.perplexity=false")
        out[name] = work
    return out


def test_own_caption_or_alt_is_among_the_texts(runs, report):
    for name, work in runs.items():
        hits, eligible = own_text_rate(work)
        report(f"{name}: own caption or alt among the image's 3 texts for {hits} of {eligible} images "
               f"({hits / max(eligible, 1):.0%}; before captions were first-class, Gutenberg: 0 of 409 had a caption)")
        assert eligible >= 5 and hits / eligible >= 0.5, name


def test_mona_lisa_is_kept_and_no_facet_is_in_the_pool(runs):
    images = pq.read_table(runs["warc"] / "extract" / "images").to_pylist()
    painting = [r for r in images if r["url"] and "Mona_Lisa,_by_Leonardo_da_Vinci" in r["url"]]
    assert painting and all(r["status"] == "kept" or r["reason"] == "duplicate" for r in painting)
    pool = [r["text"] for r in pq.read_table(runs["warc"] / "extract" / "sentences").to_pylist() if r["status"] == "kept"]
    assert pool and not [t for t in pool if FACETS.search(t)]
    captions = [r for r in pq.read_table(runs["warc"] / "extract" / "sentences").to_pylist() if r["kind"] == "caption"]
    assert any("Self-portrait by Leonardo da Vinci" in r["text"] and r["status"] == "kept" for r in captions)
    assert any("Vacant wall in the Salon Carr" in r["text"] and r["status"] == "kept" for r in captions)


def _json_types(tars: list[Path]) -> dict[str, set[str]]:
    """Per key of the samples' JSON: the set of value types seen."""
    import json
    import tarfile

    types: dict[str, set[str]] = {}
    for tar in tars:
        with tarfile.open(tar) as f:
            for m in f.getmembers():
                if m.name.endswith(".json"):
                    for k, v in json.loads(f.extractfile(m).read()).items():
                        types.setdefault(k, set()).add(type(v).__name__)
    return types


def test_exports_of_different_corpora_have_the_same_column_types(runs, data_dir, tmp_path):
    """A book (local images) and web archives (URLs) export with the same parquet schema and the
    same JSON value types, so one loader reads both; HF `datasets` loads both in one dataset."""
    from datasets import load_dataset

    tars, schemas, types = {}, {}, {}
    for name in ("gutenberg", "warc"):
        work = runs[name]
        realsyn("run", *(str(data_dir / i) for i in CORPORA[name]), "--out", str(work), "--quiet",
                "--set", "models.llm=template", "--set", "extract.sentences.perplexity=false")
        scale = next(p for p in sorted((work / "export").iterdir()) if p.is_dir())
        tars[name] = sorted(scale.glob("*.tar"))
        schemas[name] = pq.read_schema(sorted(scale.glob("0*.parquet"))[0])
        types[name] = _json_types(tars[name])
        assert tars[name] and all(len(t) == 1 for t in types[name].values()), (name, types[name])
    assert schemas["gutenberg"].equals(schemas["warc"])
    assert types["gutenberg"] == types["warc"]
    every = [str(t) for ts in tars.values() for t in ts]
    ds = load_dataset("webdataset", data_files={"train": every}, split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == sum(1 for ts in tars.values() for t in ts for _ in _members(t, ".json"))


def _members(tar: Path, suffix: str) -> list[str]:
    import tarfile

    with tarfile.open(tar) as f:
        return [m.name for m in f.getmembers() if m.name.endswith(suffix)]

