"""Issue 16's by-hand check on a synthetic workspace (default 1M sentences, 125k images):
`realsyn retrieve` with the local executor, on a local two-node Ray cluster, and killed with
SIGKILL during the index build and again during the search, then re-run; the three must write
byte-identical `retrieve/pairs`.

    python scripts/scale_check.py [--sentences 1M] [--dim 384] [--dir DIR]

Prints one JSON line: seconds of each run and whether the pairs are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from scale import _size, make_workspace  # noqa: E402

FAULTS = ("blocks:2", "join:3")  # a worker killed while the index is sorted, then during the join


def retrieve(work: Path, *options: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if fault:
        env["REALSYN_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "realsyn.cli", "retrieve", "--out", str(work), "--quiet", *options],
                          env=env, capture_output=True, text=True)


def pairs(work: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((work / "retrieve" / "pairs").glob("*.parquet"))}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sentences", type=_size, default=1_000_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--dir", type=Path, default=None, help="where the workspaces go (default: a temporary folder)")
    a = p.parse_args()
    base = a.dir or Path(tempfile.mkdtemp(prefix="realsyn-check-"))
    make_workspace(base / "clean", a.sentences, a.sentences // 8, a.dim)
    for name in ("local", "ray", "killed"):
        shutil.copytree(base / "clean", base / name)
    out: dict[str, object] = {"sentences": a.sentences, "dim": a.dim}
    started = time.time()
    assert retrieve(base / "local", "--workers", "2").returncode == 0
    out["local_seconds"] = round(time.time() - started, 1)

    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        started = time.time()
        done = retrieve(base / "ray", "--executor", "ray", "--set", f"runtime.ray.address={cluster.address}")
        assert done.returncode == 0, done.stderr[-2000:]
        out["ray_seconds"] = round(time.time() - started, 1)
    finally:
        cluster.shutdown()
    for fault in FAULTS:
        killed = retrieve(base / "killed", "--workers", "2", fault=fault)
        out[f"killed_at_{fault}"] = killed.stderr.strip().splitlines()[-1] if killed.returncode else "not killed"
    started = time.time()
    assert retrieve(base / "killed", "--workers", "2").returncode == 0
    out["rerun_seconds"] = round(time.time() - started, 1)
    ref = pairs(base / "local")
    out.update(parts=len(ref), ray_identical=pairs(base / "ray") == ref, killed_identical=pairs(base / "killed") == ref)
    print(json.dumps(out))
    if a.dir is None:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
