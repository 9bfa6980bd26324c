"""The k-means fit as an executor task (`buckets.fit`): the sample reaches it through files, never
through the driver, and the index equals the one fitted in memory."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from realsyn.buckets import Fit, Groups, fit_index, load, open_index, part_sizes, plan_blocks, read_rows, sample_piece
from realsyn.centroids import CentroidIndex, seeded_rows
from realsyn.config import load_config
from realsyn.runtime.context import Context
from realsyn.runtime.launch import make_executor
from realsyn.runtime.workspace import Workspace

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "bench"
if not (SHARED / "embeddings.py").exists():
    pytest.skip(f"shared synthetic embeddings not found at {SHARED}", allow_module_level=True)
sys.path.insert(0, str(BENCH))
from scale import make_workspace  # noqa: E402


@pytest.mark.parametrize("clusters", [40, 1500])  # flat, and two-level k-means
def test_fit_task_equals_the_in_memory_fit_and_leaves_no_sample(tmp_path, clusters):
    work = tmp_path / "work"
    make_workspace(work, 12_000, 100, 32, docs_per_part=40)
    starts = part_sizes(work, "sentences", len(list((work / "embed" / "sentences").glob("part-*.parquet"))))
    n, folder = int(starts[-1]), work / "fitted"
    groups = Groups.of(starts, 3_000)
    rows = seeded_rows(n, 8_000, 5)
    with make_executor("local", 2) as executor:
        ctx = Context(Workspace(work), load_config(work / "config.yaml"), executor, [])
        (reference,) = read_rows(ctx, "sentences", groups, starts, starts, [rows])
        spilled, other = read_rows(ctx, "sentences", groups, starts, starts, [rows, rows[:10]], spill=folder)
        assert len(spilled) == 0 and len(other) == 10  # the sample stays out of the driver
        assert sum(len(load(sample_piece(folder, j))) for j in range(len(groups.parts))) == len(rows)
        fit_index(ctx, Fit(folder, len(groups.parts), clusters, n, 2_000, seed=5), "k-means")
    expected = CentroidIndex.train(reference, clusters, seed=5)
    got = open_index(folder)
    assert np.array_equal(got.centroids, expected.centroids) and np.array_equal(got.cells, expected.cells)
    assert np.array_equal(load(folder / "blocks.npy"), plan_blocks(expected, reference, n, 2_000))
    assert len(load(folder / "blocks.npy")) > 3
    assert not (folder / "sample").exists()
