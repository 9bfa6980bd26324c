"""Ray executor scaling: extract and embed throughput with 1 and 2 Ray workers, and the Ray
executor's overhead against the local executor with the same number of workers.

Input: the ZIM replicated `--copies` times (default 8), replicated and extracted by
`benchmarks/extract.py`'s `measure` (one `realsyn extract` process per run); then `realsyn embed`
runs on that run's workspace. Figures use the stages' own seconds from the manifest (the CLI
process's start-up is excluded; the wall time of each command is reported too). For a Ray run this
script starts a local Ray cluster with N CPUs first and the command joins it by address, so cluster
start-up is not counted (a real cluster is already up); worker processes start cold, like the
local executor's. Overhead = Ray seconds / local seconds - 1 at the largest worker count (target:
< 15% for extract on the 8x corpus); `extract.speedup_1_to_2_workers` is the Ray extract speed-up
from 1 to 2 workers (target: >= 1.8x). The machine is shared: every configuration runs `--repeats`
times, interleaved with the others, and keeps its fastest round.

    python benchmarks/scaling.py [--zim PATH] [--copies 8] [--workers 1 2] [--repeats 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract import DEFAULT_ZIM, measure  # noqa: E402  (the ZIM replication and extract run)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def embed(work: Path, workers: int, options: list[str]) -> dict:
    """`realsyn embed` on an extracted workspace: items (images + sentences) per second."""
    cmd = [sys.executable, "-c", "from realsyn.cli import app; app()", "embed", "--out", str(work), "--quiet",
           "--workers", str(workers), *options]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"embed failed: {proc.stderr[-2000:]}")
    stage = json.loads((work / "manifest.json").read_text())["stages"]["embed"]
    items = stage["counts"]["images"]["read"] + stage["counts"]["sentences"]["read"]
    return {"seconds": round(wall, 2), "stage_seconds": stage["seconds"], "items": items,
            "items_per_s": round(items / stage["seconds"], 1)}


def run(executor: str, workers: int, zim: Path, copies: int, tmp: Path) -> dict:
    """Extract then embed with one executor; a Ray run gets its own local cluster of `workers` CPUs."""
    options, label = ["--executor", executor], f"-{executor}{workers}-"
    if executor == "ray":
        import ray

        ray.init(num_cpus=workers, include_dashboard=False, object_store_memory=300 << 20, log_to_driver=False)
        options += ["--set", f"runtime.ray.address={ray.get_runtime_context().gcs_address}"]
    try:
        ex = measure(zim, copies, workers, tmp, False, options, label)
        em = embed(tmp / f"work{label}{copies}", workers, options)
    finally:
        if executor == "ray":
            ray.shutdown()
    result = {"executor": executor, "workers": workers, "extract": {
        "seconds": ex["seconds"], "stage_seconds": ex["stage_seconds"], "documents": ex["documents"],
        "documents_per_s": round(ex["documents"] / ex["stage_seconds"], 1)}, "embed": em}
    print(json.dumps(result), file=sys.stderr, flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zim", type=Path, default=DEFAULT_ZIM)
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray worker counts; local runs with the largest")
    ap.add_argument("--repeats", type=int, default=2, help="rounds of every configuration, interleaved; each keeps its fastest round")
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = ap.parse_args()
    top = max(args.workers)
    configs = [("local", top)] + [("ray", w) for w in args.workers]
    with tempfile.TemporaryDirectory() as tmp:
        tries = [[run(e, w, args.zim, args.copies, Path(tmp) / f"r{r}") for e, w in configs] for r in range(args.repeats)]
    runs = [min(same, key=lambda t: t["extract"]["stage_seconds"] + t["embed"]["stage_seconds"]) for same in zip(*tries)]
    print(f"{'executor':>8} {'workers':>7} {'extract s':>9} {'docs/s':>7} {'embed s':>8} {'items/s':>8}")
    for r in runs:
        print(f"{r['executor']:>8} {r['workers']:>7} {r['extract']['stage_seconds']:>9} {r['extract']['documents_per_s']:>7} "
              f"{r['embed']['stage_seconds']:>8} {r['embed']['items_per_s']:>8}")
    local, ray_top = runs[0], next(r for r in runs[1:] if r["workers"] == top)
    overhead = {s: round(ray_top[s]["stage_seconds"] / local[s]["stage_seconds"] - 1, 3) for s in ("extract", "embed")}
    ray_runs = {r["workers"]: r for r in runs[1:]}
    speedup = {s: round(ray_runs[min(args.workers)][s]["stage_seconds"] / ray_runs[top][s]["stage_seconds"], 2)
               for s in ("extract", "embed")} if len(ray_runs) > 1 else None
    print(f"Ray overhead vs local at {top} workers: extract {overhead['extract']:+.1%} (target < 15%), "
          f"embed {overhead['embed']:+.1%}; Ray speed-up {min(args.workers)} -> {top} workers: {speedup}")
    if args.json:
        extract = {"speedup_1_to_2_workers": speedup["extract"]} if speedup and args.workers[:2] == [1, 2] else {}
        print(json.dumps({"runs": runs, "overhead": overhead, "ray_speedup": speedup, "extract": extract,
                          "copies": args.copies, "repeats": args.repeats,
                          "workers": args.workers, "zim": str(args.zim), "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
