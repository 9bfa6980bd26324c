"""embed's semantic dedup beyond the driver's exact search: per-cluster pairs as executor tasks
(`realsyn/embed/semantic.py`), on a synthetic workspace with planted near-copies."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "bench"
if not (SHARED / "embeddings.py").exists():
    pytest.skip(f"shared synthetic embeddings not found at {SHARED}", allow_module_level=True)
sys.path.insert(0, str(BENCH))
from scale import make_workspace  # noqa: E402

EVERY = 20  # a planted near-copy every 20 rows


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20k sentences and 2.5k images (d = 32) in 9 parts, embed's dedup not yet run."""
    root = tmp_path_factory.mktemp("dedup") / "work"
    make_workspace(root, 20_000, 2_500, 32, docs_per_part=50, duplicates=EVERY, dedup=False)
    return root


RUN = """
import json, sys
from pathlib import Path
from realsyn.buckets import part_sizes
from realsyn.config import load_config
from realsyn.embed import semantic
from realsyn.runtime.context import Context
from realsyn.runtime.launch import make_executor
from realsyn.runtime.workspace import Workspace
work, workers, small = Path(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
for k, v in small.items():
    setattr(semantic, k, v)
with make_executor("local", workers) as executor:
    ctx = Context(Workspace(work), load_config(work / "config.yaml"), executor, [])
    starts = part_sizes(work, "sentences", len(list((work / "embed" / "sentences").glob("part-*.parquet"))))
    print(json.dumps(semantic.dedup(ctx, "sentences", starts, 0.95, None)[1]))
"""


def _dedup(work: Path, workers: int = 2, check: bool = True, **small: int) -> tuple[np.ndarray, dict, list]:
    """Sentence dedup on `work` in a process of its own, with the module's sizes overridden:
    (rejected flags, how it ran, dup_of)."""
    done = subprocess.run([sys.executable, "-c", RUN, str(work), str(workers), json.dumps(small)],
                          capture_output=True, text=True)
    if not check:
        return np.zeros(0, bool), {"returncode": done.returncode, "stderr": done.stderr}, []
    assert done.returncode == 0, done.stderr[-3000:]
    t = pq.read_table(work / "embed" / "dedup_sentences.parquet")
    return np.array(t["status"].to_pylist()) == "rejected", json.loads(done.stdout), t["dup_of"].to_pylist()


CLUSTERED = {"EXACT_MAX": 0, "BLOCK_ROWS": 4000, "ROWS_PER_TASK": 5000}


def test_clustered_dedup_finds_the_planted_copies_as_exact_search_does(pool, tmp_path):
    exact, how, exact_of = _dedup(pool, workers=1)
    assert how == {"method": "exact"}
    planted = (20_000 // EVERY) - 1  # every 20th row from row 20 on (rows 0-4 of a part have no source)
    assert exact.sum() >= 0.95 * planted
    ids = pq.read_table(pool / "embed" / "dedup_sentences.parquet")["sentence_id"].to_pylist()
    copies = [r for r in range(EVERY, 20_000, EVERY) if exact[r]]  # each names the row it was copied from
    assert sum(exact_of[r] == ids[r - 1 - (r // EVERY) % 5] for r in copies) >= 0.99 * len(copies)
    work = tmp_path / "work"
    shutil.copytree(pool, work)
    clustered, info, dup_of = _dedup(work, **CLUSTERED)
    assert info["method"] == "clusters" and info["blocks"] >= 4 and info["clusters"] == 141  # sqrt(20,000)
    assert info["pair_recall"] >= 0.9
    assert not (clustered & ~exact).any()  # the clusters' pairs are a subset of the exact ones
    assert clustered.sum() >= 0.9 * exact.sum()
    assert all((d is not None) == r for d, r in zip(dup_of, clustered))
    assert not (work / "embed" / "semantic-sentences").exists()  # intermediates removed


def test_killed_pairs_task_then_rerun_gives_the_same_table(pool, tmp_path, monkeypatch):
    work = tmp_path / "work"
    shutil.copytree(pool, work)
    monkeypatch.setenv("REALSYN_FAULT", "pairs:2")  # a worker's second pairs file
    killed = _dedup(work, check=False, **CLUSTERED)[1]
    assert killed["returncode"] != 0 and "worker process died" in killed["stderr"]
    assert any((work / "embed" / "semantic-sentences" / "pairs").glob("b-*.npy"))  # resumable state kept
    monkeypatch.delenv("REALSYN_FAULT")
    resumed = _dedup(work, **CLUSTERED)
    fresh = tmp_path / "fresh"
    shutil.copytree(pool, fresh)
    again = _dedup(fresh, **CLUSTERED)
    assert (resumed[0] == again[0]).all() and resumed[2] == again[2]


def test_embed_cli_runs_the_dedup_and_retrieve_follows(pool, tmp_path):
    from run_cli import realsyn

    work = tmp_path / "work"
    shutil.copytree(pool, work)
    realsyn("embed", "--out", str(work), "--quiet", "--workers", "1")
    counts = json.loads((work / "manifest.json").read_text())["stages"]["embed"]["counts"]
    assert counts["semantic_dedup"]["sentences"] == {"method": "exact"}
    assert counts["sentences"]["reasons"]["semantic_duplicate"] >= 900
    assert counts["images"]["reasons"]["semantic_duplicate"] >= 100
    realsyn("retrieve", "--out", str(work), "--quiet", "--workers", "1")
    retrieve = json.loads((work / "manifest.json").read_text())["stages"]["retrieve"]["counts"]
    assert retrieve["images"]["kept"] == 2_500 - counts["images"]["reasons"]["semantic_duplicate"]


def test_cluster_pairs_skips_empty_and_single_clusters():
    from realsyn.embed.semantic import cluster_pairs

    x = np.eye(4, dtype=np.float32)[[0, 0, 1, 2, 2, 2]]
    offsets = np.array([0, 0, 2, 2, 3, 6])  # clusters of 0, 2, 0, 1 and 3 rows
    a, b = cluster_pairs(x, offsets, 0.99)
    assert sorted(zip(a.tolist(), b.tolist())) == [(0, 1), (3, 4), (3, 5), (4, 5)]


def test_pick_reads_each_part_array_alone_in_the_order_asked():
    import pyarrow as pa

    from realsyn.embed.semantic import _pick

    names = [pa.array(["a", "b"]), pa.array([], pa.string()), pa.array(["c"]), pa.array(["d", "e", "f"])]
    firsts = np.array([0, 2, 2, 3])
    assert _pick(names, firsts, np.array([5, 0, 2, 3, 0, 1])).to_pylist() == ["f", "a", "c", "d", "a", "b"]
    assert _pick(names, firsts, np.zeros(0, np.int64)).to_pylist() == []
    none = pa.array(np.zeros(2, np.int64), mask=np.array([True, True]))  # rows that duplicate nothing
    assert _pick(names, firsts, np.zeros(0, np.int64)).take(none).to_pylist() == [None, None]
