"""Image download against real local HTTP servers: limits, retries, robots header, SSRF refusals,
DNS pinning, and a re-run that fetches only the URLs that failed."""

from __future__ import annotations

import io
import ipaddress
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from realsyn.config import DownloadConfig
from realsyn.io.documents import Document, Item
from realsyn.io.download import Downloader, DownloadStore, download_documents, public, robots_disallowed


def _png(seed: int, size=(160, 120)) -> bytes:
    """A noise picture (distinct seeds: not perceptual duplicates)."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


PNG = _png(0)
GREEN = _png(1)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):  # clients hang up on purpose (size cap, timeout)
        pass


class _Server:
    """An http.server in a thread; `hits` counts requests per path, `hosts` the Host headers."""

    def __init__(self, routes):
        self.hits: Counter = Counter()
        self.hosts: list[str] = []
        self.full: Counter = Counter()  # requests per path with query, never cleared
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                outer.hits[path] += 1
                outer.full[self.path] += 1
                outer.hosts.append(self.headers.get("Host", ""))
                route = routes.get(path)
                if route is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                try:
                    route(self, outer)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _send(h, status=200, body=b"", headers=()):
    h.send_response(status)
    for k, v in headers:
        h.send_header(k, v)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


def _redirect(target):
    def route(h, srv):
        _send(h, 302, headers=[("Location", target(srv) if callable(target) else target)])
    return route


def _slow(h, srv):
    time.sleep(1.5)
    _send(h, 200, PNG)


def _endless(h, srv):
    h.send_response(200)
    h.send_header("Content-Type", "image/png")
    h.end_headers()  # no length: the body runs until the client hangs up
    block = b"\x00" * 65536
    for _ in range(10_000):
        h.wfile.write(block)


def _trickle(h, srv):
    h.send_response(200)
    h.send_header("Content-Length", "100")
    h.end_headers()
    for _ in range(100):
        h.wfile.write(b"x")
        h.wfile.flush()
        time.sleep(0.05)


def _flaky(h, srv):  # 503 on the first request (per query string), then the image
    if srv.full[h.path] == 1:
        _send(h, 503)
    else:
        _send(h, 200, GREEN)


@pytest.fixture(scope="module")
def servers():
    inner = _Server({"/img.png": lambda h, s: _send(h, 200, PNG, [("Content-Type", "image/png")])})
    routes = {
        "/img.png": lambda h, s: _send(h, 200, PNG, [("Content-Type", "image/png")]),
        "/other.png": lambda h, s: _send(h, 200, _png(2)),
        "/noai.png": lambda h, s: _send(h, 200, PNG, [("X-Robots-Tag", "noai")]),
        "/otherbot.png": lambda h, s: _send(h, 200, PNG, [("X-Robots-Tag", "otherbot: noai, noimageai")]),
        "/ours.png": lambda h, s: _send(h, 200, PNG, [("X-Robots-Tag", "realsyn: noimageai")]),
        "/slow.png": _slow,
        "/endless": _endless,
        "/trickle": _trickle,
        "/big": lambda h, s: _send(h, 200, b"x" * 300_000),
        "/503": lambda h, s: _send(h, 503),
        "/flaky.png": _flaky,
        "/empty": lambda h, s: _send(h, 200, b""),
        "/redirect-ok": _redirect("/img.png"),
        "/loop": _redirect("/loop"),
        "/to-inner": _redirect(lambda s: inner.url("/img.png")),
        "/to-localhost": _redirect(lambda s: f"http://localhost:{inner.port}/img.png"),
        "/to-metadata": _redirect("http://169.254.169.254/latest/meta-data/"),
        "/to-ftp": _redirect("ftp://example.com/x.png"),
    }
    outer = _Server(routes)
    yield outer, inner
    outer.close()
    inner.close()


def _cfg(outer, **kw) -> DownloadConfig:
    base = dict(enabled=True, timeout=0.8, retries=2, backoff=0.0, max_bytes=200_000, threads=4,
                allow_hosts=[f"127.0.0.1:{outer.port}"])
    base.update(kw)
    return DownloadConfig(**base)


def test_default_config_refuses_loopback_and_private_addresses(servers):
    outer, _ = servers
    before = sum(outer.hits.values())
    d = Downloader(DownloadConfig(enabled=True))
    for url in [outer.url("/img.png"), f"http://localhost:{outer.port}/img.png", f"http://[::1]:{outer.port}/",
                f"http://[::ffff:127.0.0.1]:{outer.port}/", "http://2130706433/", "http://0.0.0.0/",
                "http://10.0.0.1/", "http://192.168.1.1/", "http://172.16.0.1/", "http://100.64.0.1/",
                "http://169.254.169.254/latest/meta-data/", "http://224.0.0.1/", "http://[fe80::1]/",
                "http://[fd00::1]/"]:
        r = d.fetch(url)
        assert (r.status, r.error, r.attempts) == ("error", "private_address", 1), url
    assert sum(outer.hits.values()) == before  # refused before any connection
    # IPv6 forms that embed a non-public IPv4 address, and reserved IPv6 ranges: refused, no connection
    for host in ("::7f00:1", "::a00:1", "::ffff:a00:1", "64:ff9b::7f00:1", "64:ff9b::a00:1", "64:ff9b:1::a00:1",
                 "2002:7f00:1::1", "2002:a00:1::", "2001:0:4136:e378:8000:63bf:80ff:fffe", "100::1",
                 "2001:db8::1", "3fff::1", "2001:2::1", "2001:20::1", "fec0::1"):
        r = d.fetch(f"http://[{host}]:{outer.port}/img.png")
        assert (r.status, r.error, r.attempts) == ("error", "private_address", 1), host
    assert public(ipaddress.ip_address("2606:4700::1111")) and public(ipaddress.ip_address("::ffff:8.8.8.8"))
    assert sum(outer.hits.values()) == before
    assert d.fetch("ftp://example.com/a.png").error == "unsupported_scheme"
    assert d.fetch("http://exa mple.com/a.png").error in ("bad_url", "dns_error")
    assert d.fetch("http:///nohost").error == "bad_url"


def test_fetch_ok_redirects_and_policy(servers):
    outer, inner = servers
    d = Downloader(_cfg(outer))
    ok = d.fetch(outer.url("/img.png"))
    assert (ok.status, ok.http_status, ok.data, ok.attempts) == ("ok", 200, PNG, 1)
    r = d.fetch(outer.url("/redirect-ok"))
    assert r.status == "ok" and r.final_url == outer.url("/img.png") and r.data == PNG
    # redirects to a loopback port that is not allowed: refused after the redirect, never connected
    for path in ("/to-inner", "/to-localhost", "/to-metadata"):
        r = d.fetch(outer.url(path))
        assert (r.status, r.error) == ("error", "private_address"), path
    assert inner.hits["/img.png"] == 0
    assert d.fetch(outer.url("/to-ftp")).error == "unsupported_scheme"
    loop = d.fetch(outer.url("/loop"))
    assert loop.error == "too_many_redirects" and loop.attempts == 1
    assert outer.hits["/loop"] == 6  # the first request + max_redirects (5) hops
    # the same redirect with the inner server allowed too
    both = Downloader(_cfg(outer, allow_hosts=[f"127.0.0.1:{outer.port}", f"127.0.0.1:{inner.port}"]))
    assert both.fetch(outer.url("/to-inner")).data == PNG and inner.hits["/img.png"] == 1
    assert Downloader(_cfg(outer, allow_hosts=[], allow_private=True)).fetch(outer.url("/img.png")).status == "ok"
    # X-Robots-Tag
    assert d.fetch(outer.url("/noai.png")).error == "robots_disallowed"
    assert d.fetch(outer.url("/ours.png")).error == "robots_disallowed"
    assert d.fetch(outer.url("/otherbot.png")).status == "ok"
    assert Downloader(_cfg(outer, disallowed_directives=[])).fetch(outer.url("/noai.png")).status == "ok"
    assert robots_disallowed(["noindex, nofollow"], ["noindex"]) and not robots_disallowed(["nofollow"], ["noai"])
    # HTTP errors: final ones once, transient ones retried
    r404 = d.fetch(outer.url("/missing.png"))
    assert (r404.error, r404.http_status, r404.attempts) == ("http_404", 404, 1)
    r503 = d.fetch(outer.url("/503"))
    assert (r503.error, r503.attempts) == ("http_503", 3) and outer.hits["/503"] == 3
    assert d.fetch(outer.url("/empty")).error == "empty"


def test_limits_slow_endless_and_big(servers):
    outer, _ = servers
    d = Downloader(_cfg(outer, retries=1))
    t = time.monotonic()
    slow = d.fetch(outer.url("/slow.png"))
    assert (slow.error, slow.attempts) == ("timeout", 2) and outer.hits["/slow.png"] == 2
    endless = d.fetch(outer.url("/endless"))
    assert (endless.error, endless.attempts) == ("too_large", 1)
    big = d.fetch(outer.url("/big"))  # Content-Length above the cap: not read
    assert big.error == "too_large"
    trickle = d.fetch(outer.url("/trickle"))  # each read is quick, the whole body is not
    assert trickle.error == "timeout"
    assert time.monotonic() - t < 8


def test_dns_answer_is_checked_and_pinned(servers):
    outer, _ = servers
    calls: list[str] = []

    def resolver(host, port):
        calls.append(host)
        return {"pics.test": ["127.0.0.1"], "mixed.test": ["127.0.0.1", "10.1.2.3"]}.get(host, [])

    d = Downloader(_cfg(outer), resolver=resolver)
    r = d.fetch(f"http://pics.test:{outer.port}/img.png")
    assert r.status == "ok" and calls == ["pics.test"]  # resolved once, connected to that address
    assert outer.hosts[-1] == f"pics.test:{outer.port}"  # the name still goes in the Host header
    assert d.fetch(f"http://mixed.test:{outer.port}/img.png").error == "private_address"  # one bad answer is enough
    assert d.fetch("http://nowhere.test/x.png").error == "dns_error"
    with pytest.raises(ValueError):
        DownloadConfig(allow_hosts=["localhost:80"])  # rules are addresses, checked after resolution


def test_rerun_retries_only_the_failures(servers, tmp_path):
    outer, _ = servers
    cfg = _cfg(outer, retries=0)
    urls = [outer.url(p) for p in ("/img.png", "/other.png", "/flaky.png?r", "/missing2.png", "/img.png")]
    docs = [Document("d1", "s", [Item("text", text="A red square."), Item("image", url=u)]) for u in urls]
    cache = DownloadStore(tmp_path / "cache", "s000000-00000")
    base = outer.hits.copy()
    first = download_documents(docs, cfg, cache)
    assert [(r.status, r.error) for r in first] == [("ok", None), ("ok", None), ("error", "http_503"),
                                                    ("error", "http_404")]  # one record per distinct URL
    assert [d.items[1].error for d in docs] == [None, None, "download_http_503", "download_http_404", None]
    assert docs[0].items[1].data == PNG and docs[4].items[1].data == PNG
    stats = cache.root / "s000000-00000_stats.json"

    def failed() -> int:
        return len(json.loads(stats.read_text())["failed_urls"])

    assert failed() == 2 and not cache.folder.exists()  # batches merged into the shard
    state = DownloadStore.state(tmp_path / "cache")
    docs2 = [Document("d1", "s", [Item("image", url=u)]) for u in urls]
    second = download_documents(docs2, cfg, cache)
    fetched = outer.hits - base
    assert fetched == Counter({"/img.png": 1, "/other.png": 1, "/flaky.png": 2, "/missing2.png": 2})
    assert [r.cached for r in second] == [True, True, False, False]
    assert second[2].status == "ok" and docs2[2].items[0].data == GREEN
    assert failed() == 1 and DownloadStore.state(tmp_path / "cache") != state


@pytest.mark.slow
def test_pipeline_extract_downloads_and_rerun(servers, tmp_path):
    """`realsyn run --until extract` on an MMC4 file whose images are URLs on the local server."""
    outer, inner = servers
    mmc4 = tmp_path / "docs.jsonl"
    text = ["A red square was painted on the wall of the old station by the river.",
            "The painter used a large brush and bright paint for the square."]
    lines = [{"url": f"http://page/{i}", "text_list": text,
              "image_info": [{"raw_url": outer.url(p), "matched_text_index": 0}]}
             for i, p in enumerate(["/img.png", "/flaky.png?p", "/missing3.png", "/to-inner", "/noai.png"])]
    mmc4.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    work = tmp_path / "work"
    sets = ["download.enabled=true", f"download.allow_hosts=['127.0.0.1:{outer.port}']", "download.retries=0",
            "download.timeout=2", "models.llm=template", "extract.sentences.perplexity=false"]
    cmd = [str(Path(sys.executable).parent / "realsyn"), "run", str(mmc4), "--out", str(work), "--until", "extract",
           "--workers", "1", "--quiet"] + [a for s in sets for a in ("--set", s)]
    outer.hits.clear()
    inner.hits.clear()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr

    def reasons():
        t = pq.read_table(work / "extract" / "images").to_pylist()
        return {r["url"].rsplit("/", 1)[-1].split("?")[0]: r["reason"] for r in t}

    assert reasons() == {"img.png": None, "flaky.png": "download_http_503", "missing3.png": "download_http_404",
                         "to-inner": "download_private_address", "noai.png": "download_robots_disallowed"}
    status = pq.read_table(work / "extract" / "downloads").to_pylist()
    assert [(r["status"], r["error"], r["http_status"]) for r in status] == [
        ("ok", None, 200), ("error", "http_503", 503), ("error", "http_404", 404),
        ("error", "private_address", 302), ("error", "robots_disallowed", 200)]
    assert inner.hits["/img.png"] == 0
    outer.hits.clear()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)  # re-run: failures only
    assert p.returncode == 0, p.stderr
    assert "/img.png" not in outer.hits and outer.hits["/flaky.png"] == 1 and outer.hits["/missing3.png"] == 1
    assert reasons()["flaky.png"] is None
    outer.hits.clear()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)  # the failure set changed: retried
    assert p.returncode == 0, p.stderr
    assert outer.hits == Counter({"/missing3.png": 1, "/to-inner": 1, "/noai.png": 1})
    outer.hits.clear()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)  # same failures: the stage is current
    assert p.returncode == 0, p.stderr
    assert sum(outer.hits.values()) == 0
