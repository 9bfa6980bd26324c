"""realsyn's image downloader against img2dataset on the same URLs from a loopback server.

The server (its own process, a thread per connection) serves N URLs with real photos from
`../shared/data` (the Gutenberg figures and the EPUB images, 5-200 KB), a per-request latency,
and a share of 404s, slow responses, connections reset before any reply, and redirects. The same
URL list is fetched by
- realsyn: `Downloader.fetch_each` in P processes of T threads, outcomes stored by
  `DownloadStore` (parquet batches on local disk), as extract stores them; the private-address
  guard stays on, the loopback server admitted by an `allow_hosts` rule;
- img2dataset itself, installed by this script into its own virtual environment
  (`--img2dataset-venv`, created on first use), with the same P and T, `--resize_mode no`,
  `--disable_all_reencoding True`, `--compute_hash None`, output format `files`, the same timeout
  and retries.
Figures per tool: URLs/s (wall time of the whole command), success rate, how many stored bytes
are identical to the server's (by sha256), peak RSS (largest process: VmHWM of realsyn's
workers, GNU time's maximum for img2dataset). The two runs alternate `--repeats`
times; each keeps its fastest round.

    python benchmarks/download.py [--urls 4000] [--processes 2] [--threads 32] [--repeats 2] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import venv
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
VENV = Path.home() / ".cache" / "realsyn" / "img2dataset-venv"
SHARES = {"missing": 0.05, "slow": 0.02, "reset": 0.02, "redirect": 0.05}  # the rest: a photo
LATENCY, SLOW = 0.02, 1.5  # seconds per request; a slow response's delay (below the timeout)
TIMEOUT = 5


def photos() -> list[bytes]:
    found = sorted(DATA.glob("gutenberg/*/images/*")) + sorted(DATA.glob("epub3/**/*.jpg")) + sorted(DATA.glob("epub3/**/*.png"))
    return [p.read_bytes() for p in found if p.suffix.lower() in (".jpg", ".jpeg", ".png") and p.stat().st_size > 4096]


def plan(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """(kind, photo) per URL index: a seeded mix of the SHARES."""
    rng, images = random.Random(seed), len(photos())
    kinds = []
    for _ in range(n):
        r, kind = rng.random(), "ok"
        for name, share in SHARES.items():
            if r < share:
                kind = name
                break
            r -= share
        kinds.append((kind, rng.randrange(images)))
    return kinds


def serve(port_box, n: int) -> None:
    """The server process: `/u/K` per the plan, `/photo/J` the redirect targets."""
    images, kinds = photos(), plan(n)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _send(self, status: int, body: bytes = b"", headers: tuple = ()) -> None:
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            time.sleep(LATENCY)
            head, _, rest = self.path.partition("/")[2].partition("/")
            k = int(rest) if rest.isdigit() else -1
            if head == "photo" and 0 <= k < len(images):
                return self._send(200, images[k], (("Content-Type", "image/png"),))
            if head != "u" or not 0 <= k < n:
                return self._send(404)
            kind, j = kinds[k]
            if kind == "missing":
                return self._send(404)
            if kind == "reset":
                self.close_connection = True
                self.connection.shutdown(2)
                return None
            if kind == "redirect":
                return self._send(302, headers=(("Location", f"/photo/{j}"),))
            if kind == "slow":
                time.sleep(SLOW)
            return self._send(200, images[j], (("Content-Type", "image/png"),))

    class Server(ThreadingHTTPServer):
        daemon_threads, request_queue_size = True, 1024

        def handle_error(self, request, client_address):
            pass

    httpd = Server(("127.0.0.1", 0), Handler)
    port_box.put(httpd.server_address[1])
    httpd.serve_forever()


def _digest(data: bytes | None) -> str | None:
    return hashlib.sha256(data).hexdigest() if data is not None else None


def expected(n: int) -> dict[str, str | None]:
    """The sha256 of the bytes each URL serves (None: no image)."""
    images = [_digest(p) for p in photos()]
    return {f"u/{k}": (images[j] if kind in ("ok", "slow", "redirect") else None) for k, (kind, j) in enumerate(plan(n))}


def _realsyn_worker(args: tuple[list[str], str, int, int, str]) -> int:
    from realsyn.config import DownloadConfig
    from realsyn.io.download import Downloader, DownloadStore

    urls, out, threads, port, part = args
    cfg = DownloadConfig(enabled=True, threads=threads, timeout=TIMEOUT, retries=0, allow_hosts=[f"127.0.0.1:{port}"])
    store = DownloadStore(Path(out), part)
    sink = store.sink()
    for res in Downloader(cfg).fetch_each(urls):
        sink.add(res)
    sink.flush()
    store.merge()
    return _hwm_kb()


def _hwm_kb() -> int:
    """This process's peak RSS in KiB (VmHWM: ru_maxrss would include the parent's at fork time)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_realsyn(urls: list[str], out: Path, processes: int, threads: int, port: int) -> dict:
    per = -(-len(urls) // processes)
    jobs = [(urls[i * per:(i + 1) * per], str(out), threads, port, f"p{i:03d}") for i in range(processes)]
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(processes) as pool:
        rss = pool.map(_realsyn_worker, jobs)
    seconds = time.perf_counter() - t0
    got: dict[str, str | None] = {}
    for f in out.glob("*/all.parquet"):
        for r in pq.read_table(f, columns=["url", "status", "data"]).to_pylist():
            got[r["url"].split("/", 3)[3]] = _digest(r["data"]) if r["status"] == "ok" else None
    return {"seconds": seconds, "got": got, "peak_rss_mb": max(rss) / 1024}


def ensure_img2dataset(env: Path) -> Path:
    exe = env / "bin" / "img2dataset"
    if not exe.exists():
        print(f"installing img2dataset into {env} (once)", file=sys.stderr)
        venv.create(env, with_pip=True)
        subprocess.run([str(env / "bin" / "pip"), "install", "-q", "img2dataset"], check=True)
    return exe


def run_img2dataset(exe: Path, urls: list[str], out: Path, processes: int, threads: int) -> dict:
    listing = out.parent / f"{out.name}-urls.parquet"
    pq.write_table(pa.table({"url": urls}), listing)
    cmd = ["/usr/bin/time", "-f", "MAXRSS %M", str(exe), "--url_list", str(listing), "--input_format", "parquet",
           "--url_col", "url", "--output_folder", str(out), "--output_format", "files", "--processes_count", str(processes),
           "--thread_count", str(threads), "--resize_mode", "no", "--disable_all_reencoding", "True",
           "--compute_hash", "None", "--timeout", str(TIMEOUT), "--retries", "0", "--number_sample_per_shard", "10000",
           "--disallowed_header_directives", "[]", "--enable_wandb", "False"]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"img2dataset failed: {proc.stderr[-2000:]}")
    got: dict[str, str | None] = {}
    for meta in out.glob("*.parquet"):
        for r in pq.read_table(meta, columns=["url", "key", "status"]).to_pylist():
            path = out / meta.stem / f"{r['key']}.jpg"
            got[r["url"].split("/", 3)[3]] = _digest(path.read_bytes()) if r["status"] == "success" and path.exists() else None
    rss = int(proc.stderr.rsplit("MAXRSS", 1)[1].split()[0])  # the largest process (GNU time: max over the tree's waits)
    return {"seconds": seconds, "got": got, "peak_rss_mb": rss / 1024}


def figures(run: dict, want: dict[str, str | None]) -> dict:
    got = run["got"]
    ok = [u for u, data in got.items() if data is not None]
    same = sum(got[u] == want.get(u) for u in ok)
    return {"urls_per_s": round(len(want) / run["seconds"], 1), "seconds": round(run["seconds"], 2),
            "success_rate": round(len(ok) / len(want), 4), "expected_success_rate": round(sum(v is not None for v in want.values()) / len(want), 4),
            "bytes_identical": same, "bytes_differ": len(ok) - same,
            "peak_rss_mb": round(run["peak_rss_mb"], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--urls", type=int, default=4000)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--img2dataset-venv", type=Path, default=VENV)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    exe = ensure_img2dataset(a.img2dataset_venv)
    box: mp.Queue = mp.get_context("spawn").Queue()
    server = mp.get_context("spawn").Process(target=serve, args=(box, a.urls), daemon=True)
    server.start()
    port = box.get(timeout=60)
    urls = [f"http://127.0.0.1:{port}/u/{k}" for k in range(a.urls)]
    want = expected(a.urls)
    best: dict[str, dict] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(a.repeats):
                for tool in ("realsyn", "img2dataset"):
                    out = Path(tmp) / f"{tool}-{r}"
                    out.mkdir()
                    run = run_realsyn(urls, out, a.processes, a.threads, port) if tool == "realsyn" else \
                        run_img2dataset(exe, urls, out, a.processes, a.threads)
                    f = figures(run, want)
                    print(f"round {r} {tool}: {json.dumps(f)}", file=sys.stderr, flush=True)
                    if tool not in best or f["urls_per_s"] > best[tool]["urls_per_s"]:
                        best[tool] = f
    finally:
        server.terminate()
    ratio = round(best["realsyn"]["urls_per_s"] / best["img2dataset"]["urls_per_s"], 2)
    print(f"{'tool':>12} {'URLs/s':>8} {'success':>8} {'identical':>9} {'RSS MB':>7}")
    for tool, f in best.items():
        print(f"{tool:>12} {f['urls_per_s']:>8} {f['success_rate']:>8} {f['bytes_identical']:>9} {f['peak_rss_mb']:>7}")
    print(f"realsyn / img2dataset URLs/s: {ratio} (target >= 1)")
    if a.json:
        print(json.dumps({"realsyn": best["realsyn"], "img2dataset": best["img2dataset"], "speed_ratio": ratio,
                          "urls": a.urls, "processes": a.processes, "threads": a.threads, "repeats": a.repeats,
                          "shares": SHARES, "latency_s": LATENCY}))


if __name__ == "__main__":
    main()
