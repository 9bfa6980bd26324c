"""benchmarks/scale.py writes a synthetic workspace that the retrieve stage runs on as on a real
one (the base of the scale-out cost curves)."""

from __future__ import annotations

import json
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
