"""Extraction throughput and memory on the ZIM corpus replicated 1x and 8x, and the perplexity
filter's speed and agreement at the default precision against fp32.

Each size runs `realsyn extract` in a fresh process (copies of the ZIM under distinct names, so
every replica's documents get their own ids); the peak RSS is the largest process of that run
(the driver or a worker), the driver's alone is `driver_peak_rss_mb`. Target: the 8x run needs
at most 1.5x the memory of the 1x run. Those runs leave the perplexity filter off (it would
dominate); then the 1x corpus runs twice with it on, at the default `perplexity_precision` and
at fp32: `default_filters` and `fp32` (docs/s and sentences/s), `speedup_vs_fp32`, and how much
the two filters agree on the sentences both scored: `perplexity_decision_agreement` (the share
of sentences whose keep/reject decision is the same) and `perplexity_spearman`.

    python benchmarks/extract.py [--zim PATH] [--copies 1 8] [--workers N] [--no-perplexity] [--json]
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

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ZIM = ROOT.parent / "shared" / "data" / "wiki-raycharles" / "wikipedia_en_ray_charles_2015-06.zim"

# Runs the CLI in-process, then prints the peak RSS (KiB) of this process and its workers.
_RUNNER = """
import resource, sys
from realsyn.cli import app
try:
    app(sys.argv[1:], standalone_mode=False)
finally:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("PEAK_RSS_KB", max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss), own, file=sys.stderr)
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
    peak_kb, driver_kb = (int(v) for v in proc.stderr.rsplit("PEAK_RSS_KB", 1)[1].split()[:2])
    stage = json.loads((work / "manifest.json").read_text())["stages"]["extract"]
    counts = stage["counts"]
    return {
        "copies": copies, "seconds": round(seconds, 2), "stage_seconds": stage["seconds"], "documents": counts["documents"],
        "sentences": counts["sentences"]["read"], "images": counts["images"]["read"],
        "documents_per_s": round(counts["documents"] / seconds, 1),
        "sentences_per_s": round(counts["sentences"]["read"] / seconds, 1),
        "peak_rss_mb": round(peak_kb / 1024, 1), "driver_peak_rss_mb": round(driver_kb / 1024, 1), "work": str(work),
    }


def perplexities(work: Path) -> dict[str, float]:
    """sentence_id -> perplexity of every sentence the filter scored."""
    t = pa.concat_tables([pq.read_table(p, columns=["sentence_id", "perplexity"])
                          for p in sorted((work / "extract" / "sentences").glob("part-*.parquet"))])
    return {s: p for s, p in zip(t["sentence_id"].to_pylist(), t["perplexity"].to_pylist()) if p is not None and p == p}


def agreement(fast: dict[str, float], slow: dict[str, float], low: float, high: float) -> dict:
    """Keep/reject agreement and Spearman correlation on the sentences both runs scored."""
    ids = sorted(fast.keys() & slow.keys())
    a, b = np.array([fast[i] for i in ids]), np.array([slow[i] for i in ids])
    keep_a, keep_b = (a >= low) & (a <= high), (b >= low) & (b <= high)
    rank_a, rank_b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return {"perplexity_sentences": len(ids), "perplexity_decision_agreement": round(float((keep_a == keep_b).mean()), 4),
            "perplexity_spearman": round(float(np.corrcoef(rank_a, rank_b)[0, 1]), 4),
            "perplexity_median_ratio": round(float(np.median(a / b)), 4)}


def precision_runs(zim: Path, workers: int, tmp: Path) -> dict:
    """The 1x corpus with the perplexity filter at the default precision and at fp32."""
    from realsyn.config import load_config

    cfg = load_config(None).extract.sentences
    runs = {name: measure(zim, 1, workers, tmp, True, options, label=name) for name, options in
            (("default_filters", []), ("fp32", ["--set", "extract.sentences.perplexity_precision=fp32"]))}
    out: dict = {name: {k: r[k] for k in ("seconds", "documents_per_s", "sentences_per_s")} for name, r in runs.items()}
    for r in out.values():
        r["docs_per_s"] = r.pop("documents_per_s")
    out["speedup_vs_fp32"] = round(runs["fp32"]["seconds"] / runs["default_filters"]["seconds"], 3)
    out.update(agreement(perplexities(Path(runs["default_filters"]["work"])), perplexities(Path(runs["fp32"]["work"])),
                         cfg.min_perplexity, cfg.max_perplexity))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zim", type=Path, default=DEFAULT_ZIM)
    ap.add_argument("--copies", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--workers", type=int, default=0, help="0 = one per core")
    ap.add_argument("--perplexity", action="store_true",
                    help="the 1x / 8x runs with the SmolLM2 perplexity filter on (off there by default: it would dominate)")
    ap.add_argument("--no-perplexity", action="store_true", help="skip the default-precision vs fp32 perplexity runs")
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [measure(args.zim, c, args.workers, Path(tmp), args.perplexity) for c in args.copies]
        precision = {} if args.no_perplexity else precision_runs(args.zim, args.workers, Path(tmp))
    print(f"{'copies':>6} {'docs':>6} {'sentences':>9} {'seconds':>8} {'docs/s':>8} {'sent/s':>8} {'peak MB':>8}")
    for r in runs:
        print(f"{r['copies']:>6} {r['documents']:>6} {r['sentences']:>9} {r['seconds']:>8} "
              f"{r['documents_per_s']:>8} {r['sentences_per_s']:>8} {r['peak_rss_mb']:>8}")
    result = {"runs": runs, "workers": args.workers, "zim": str(args.zim), "perplexity": args.perplexity, **precision}
    if len(runs) >= 2:
        result["rss_ratio"] = round(runs[-1]["peak_rss_mb"] / runs[0]["peak_rss_mb"], 3)
        result["driver_rss_ratio_8x"] = round(runs[-1]["driver_peak_rss_mb"] / runs[0]["driver_peak_rss_mb"], 3)
        print(f"peak RSS ratio {runs[-1]['copies']}x / {runs[0]['copies']}x: {result['rss_ratio']} (target <= 1.5), "
              f"driver alone {result['driver_rss_ratio_8x']} (target <= 1.2)")
    if precision:
        print(f"perplexity filter, default precision vs fp32: {precision['default_filters']['sentences_per_s']} vs "
              f"{precision['fp32']['sentences_per_s']} sentences/s ({precision['speedup_vs_fp32']}x, target >= 3), "
              f"decisions agree on {precision['perplexity_decision_agreement']:.1%} (target >= 97%), "
              f"Spearman {precision['perplexity_spearman']}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
