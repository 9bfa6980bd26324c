"""Extraction throughput and memory on the ZIM corpus replicated 1x and 8x.

Each size runs `realsyn extract` in a fresh process (copies of the ZIM under distinct names, so
every replica's documents get their own ids); the peak RSS is the largest process of that run
(the driver or a worker). Target: the 8x run needs at most 1.5x the memory of the 1x run.

    python benchmarks/extract.py [--zim PATH] [--copies 1 8] [--workers N] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ZIM = ROOT.parent / "shared" / "data" / "wiki-raycharles" / "wikipedia_en_ray_charles_2015-06.zim"

# Runs the CLI in-process, then prints the peak RSS (KiB) of this process and its workers.
_RUNNER = """
import resource, sys
from realsyn.cli import app
try:
    app(sys.argv[1:], standalone_mode=False)
finally:
    r = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print("PEAK_RSS_KB", r, file=sys.stderr)
"""


def replicate(zim: Path, copies: int, tmp: Path) -> list[str]:
    """`copies` symlinks to the ZIM under distinct names (each replica's documents get their own ids)."""
    src = tmp / f"in{copies}"
    src.mkdir(parents=True, exist_ok=True)
    inputs = []
    for i in range(copies):
        link = src / f"copy{i:02d}.zim"
        if not link.is_symlink():
            link.symlink_to(zim.resolve())
        inputs.append(str(link))
    return inputs


def measure(zim: Path, copies: int, workers: int, tmp: Path, perplexity: bool,
            options: Sequence[str] = (), label: str = "") -> dict:
    """One `realsyn extract` run; `options` are more CLI options (e.g. the executor), `label`
    names its workspace `tmp/work{label}{copies}` so several runs can share `tmp`."""
    inputs = replicate(zim, copies, tmp)
    work = tmp / f"work{label}{copies}"
    cmd = [sys.executable, "-c", _RUNNER, "extract", *inputs, "--out", str(work), "--quiet", "--workers", str(workers),
           "--set", f"extract.sentences.perplexity={str(perplexity).lower()}", *options]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"extract failed: {proc.stderr[-2000:]}")
    peak_kb = int(proc.stderr.rsplit("PEAK_RSS_KB", 1)[1].split()[0])
    stage = json.loads((work / "manifest.json").read_text())["stages"]["extract"]
    counts = stage["counts"]
    return {
        "copies": copies, "seconds": round(seconds, 2), "stage_seconds": stage["seconds"], "documents": counts["documents"],
        "sentences": counts["sentences"]["read"], "images": counts["images"]["read"],
        "documents_per_s": round(counts["documents"] / seconds, 1),
        "sentences_per_s": round(counts["sentences"]["read"] / seconds, 1),
        "peak_rss_mb": round(peak_kb / 1024, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zim", type=Path, default=DEFAULT_ZIM)
    ap.add_argument("--copies", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--workers", type=int, default=0, help="0 = one per core")
    ap.add_argument("--perplexity", action="store_true",
                    help="include the SmolLM2 perplexity filter (off here: it runs at ~15 sentences/s and would dominate)")
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [measure(args.zim, c, args.workers, Path(tmp), args.perplexity) for c in args.copies]
    print(f"{'copies':>6} {'docs':>6} {'sentences':>9} {'seconds':>8} {'docs/s':>8} {'sent/s':>8} {'peak MB':>8}")
    for r in runs:
        print(f"{r['copies']:>6} {r['documents']:>6} {r['sentences']:>9} {r['seconds']:>8} "
              f"{r['documents_per_s']:>8} {r['sentences_per_s']:>8} {r['peak_rss_mb']:>8}")
    result = {"runs": runs, "workers": args.workers, "zim": str(args.zim), "perplexity": args.perplexity}
    if len(runs) >= 2:
        result["rss_ratio"] = round(runs[-1]["peak_rss_mb"] / runs[0]["peak_rss_mb"], 3)
        print(f"peak RSS ratio {runs[-1]['copies']}x / {runs[0]['copies']}x: {result['rss_ratio']} (target <= 1.5)")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
