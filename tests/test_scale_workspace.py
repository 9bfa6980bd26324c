"""benchmarks/scale.py writes a synthetic workspace that the retrieve stage runs on as on a real
one (the base of the scale-out cost curves)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "bench"
if not (SHARED / "embeddings.py").exists():
    pytest.skip(f"shared synthetic embeddings not found at {SHARED}", allow_module_level=True)
sys.path.insert(0, str(BENCH))
from scale import make_workspace  # noqa: E402


def test_synthetic_workspace_runs_retrieve(tmp_path):
    from run_cli import realsyn

    work = tmp_path / "work"
    counts = make_workspace(work, 20_000, 2_500, 32)
    assert counts["sentences"]["kept"] == 20_000 and counts["images"]["kept"] == 2_500
    parts = sorted((work / "embed" / "images").glob("part-*.parquet"))
    assert len(parts) == counts["parts"] == 1 and pq.read_metadata(parts[0]).num_rows == 2_500
    realsyn("retrieve", "--out", str(work), "--quiet", "--workers", "1")
    stage = json.loads((work / "manifest.json").read_text())["stages"]["retrieve"]
    assert stage["counts"]["images"]["kept"] == 2_500 and stage["counts"]["clusters"] == 50
    assert 0 < stage["counts"]["recall_at_k"] <= 1.0  # measured against exact search (low at d = 32, nprobe 1)
    assert "stale" not in realsyn("status", str(work)).stdout


# Small blocks and tasks, so that a 20k-sentence pool has several of each phase's tasks.
SPLIT = ["--set", "retrieve.index=hierarchical", "--set", "retrieve.block_sentences=4000",
         "--set", "retrieve.sentences_per_task=5000", "--set", "retrieve.images_per_task=600",
         "--set", "retrieve.nprobe=2", "--quiet", "--workers", "2"]


def _pairs_bytes(work: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((work / "retrieve" / "pairs").glob("*.parquet"))}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 20k-sentence synthetic workspace (d = 32) and a copy of it after an uninterrupted retrieve."""
    import shutil

    from run_cli import realsyn

    root = tmp_path_factory.mktemp("synthetic")
    make_workspace(root / "clean", 20_000, 2_500, 32, docs_per_part=50)  # 9 parts
    shutil.copytree(root / "clean", root / "done")
    realsyn("retrieve", "--out", str(root / "done"), *SPLIT)
    return root / "clean", root / "done"


def test_split_index_phases_and_blocks(synthetic):
    _, done = synthetic
    stage = json.loads((done / "manifest.json").read_text())["stages"]["retrieve"]
    assert stage["counts"]["blocks"] >= 4 and stage["counts"]["images"]["kept"] == 2_500
    assert not any((done / "retrieve" / d).exists() for d in ("assign", "queries", "join"))  # intermediates removed
    assert len(_pairs_bytes(done)) == 9 and 0.2 < stage["counts"]["recall_at_k"] <= 1.0  # low at d = 32


def test_sigkill_during_index_build_and_search_then_rerun(synthetic, tmp_path):
    """A worker killed while the index is assigned, the re-runs killed again while it is sorted,
    while images are routed and during the join, then a clean re-run: the same pairs as an
    uninterrupted run."""
    import shutil

    from run_cli import realsyn

    clean, done = synthetic
    work = tmp_path / "work"
    shutil.copytree(clean, work)
    for fault in ("assign:2", "blocks:2", "queries:2", "join:3"):
        os.environ["REALSYN_FAULT"] = fault
        try:
            killed = realsyn("retrieve", "--out", str(work), *SPLIT, check=False)
        finally:
            del os.environ["REALSYN_FAULT"]
        assert killed.returncode == 2 and "worker process died while processing task" in killed.stderr, killed.stderr[-2000:]
        assert "Traceback" not in killed.stderr
    realsyn("retrieve", "--out", str(work), *SPLIT)
    assert _pairs_bytes(work) == _pairs_bytes(done)
