"""Safe image download for inputs whose images are only URLs (OBELICS, MMC4), off by default.

img2dataset-grade behaviour (config section `download`): a pool of threads per worker process,
a time limit per attempt (connect, each read and the whole body), retries with backoff for
transient failures only (timeouts, connection errors, HTTP 408/429/5xx), redirects followed up to
a limit, a size cap (Content-Length and the bytes actually read), and the `X-Robots-Tag` header
honoured (`noai`, `noimageai`, ... for every agent or for `realsyn`).

Server-side request forgery guard: every host (the first one and every redirect target) is
resolved once; if any of its addresses is not public (private, loopback, link-local, multicast,
reserved, unspecified, shared, IPv4-mapped forms of those; IPv6 transition forms that embed an
IPv4 address: IPv4-compatible, NAT64, 6to4, Teredo; discard and documentation ranges) the URL is refused as
`private_address` unless `allow_private` or an `allow_hosts` rule admits it. The connection is
then made to the checked address itself (the Host header and TLS SNI / certificate check keep
the name), so a second DNS answer cannot point it elsewhere (DNS rebinding).

Every URL gets a `Fetched` record: status `ok` or `error`, a precise error (`timeout`,
`connection_error`, `dns_error`, `private_address`, `too_large`, `too_many_redirects`,
`robots_disallowed`, `http_NNN`, `bad_url`, `unsupported_scheme`, `ssl_error`, `empty`), the
HTTP status, the final URL and the number of attempts. `DownloadStore` keeps them on disk in
parquet shards, one per extract part in img2dataset's layout (not one file per URL: 353M URLs
would be 700M files), written in batches as URLs finish, so that a killed run loses only the URLs
in flight and the last second's, and a re-run fetches only the URLs that failed.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import shutil
import socket
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence
from urllib.parse import urljoin

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    LocationParseError,
    NewConnectionError,
    ReadTimeoutError,
    SSLError,
)

from realsyn.config import DownloadConfig, host_rule
from realsyn.io.documents import Document, stable_id
from realsyn.runtime.workspace import atomic_path

__all__ = ["Fetched", "Downloader", "DownloadStore", "download_documents", "STATUS_COLUMNS", "TRANSIENT"]

REDIRECTS = (301, 302, 303, 307, 308)
#: Errors worth another attempt in the same run (a re-run retries every failure).
TRANSIENT = frozenset({"timeout", "connection_error", "http_408", "http_429"} | {f"http_{c}" for c in range(500, 600)})
#: Columns of the per-URL status table (extract/downloads/part-NNNNN.parquet).
STATUS_COLUMNS = ("url", "status", "error", "http_status", "final_url", "attempts", "size", "cached")
_UA_TOKEN = "realsyn"
_CHUNK = 1 << 16

Resolver = Callable[[str, int], Sequence[str]]


@dataclass
class Fetched:
    """The outcome for one URL; `data` holds the body when status is `ok`."""

    url: str
    status: str
    error: str | None = None
    http_status: int | None = None
    final_url: str | None = None
    attempts: int = 0
    data: bytes | None = None
    cached: bool = False

    def row(self) -> dict[str, Any]:
        return {"url": self.url, "status": self.status, "error": self.error, "http_status": self.http_status,
                "final_url": self.final_url, "attempts": self.attempts,
                "size": len(self.data) if self.data is not None else None, "cached": self.cached}


class _Fail(Exception):
    def __init__(self, error: str, http_status: int | None = None, final_url: str | None = None):
        super().__init__(error)
        self.error, self.http_status, self.final_url = error, http_status, final_url


def system_resolver(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (IPv4 and IPv6), in the resolver's order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))


def robots_disallowed(values: Iterable[str], disallowed: Sequence[str], token: str = _UA_TOKEN) -> bool:
    """True when an `X-Robots-Tag` value (`noai, noimageai` or `agent: noai`) disallows us
    (img2dataset's rule: directives without an agent, or for our agent token)."""
    wanted = {d.lower() for d in disallowed}
    for value in values:
        parts = value.split(":", 1)
        agent = parts[0].strip().lower() if len(parts) == 2 else None
        if agent in (None, token) and any(d.strip().lower() in wanted for d in parts[-1].split(",")):
            return True
    return False


NOT_PUBLIC_V6 = tuple(ipaddress.ip_network(n) for n in (
    "::/96",            # IPv4-compatible (::a.b.c.d), deprecated
    "64:ff9b::/96",     # NAT64, well-known prefix: reaches the embedded IPv4 address
    "64:ff9b:1::/48",   # NAT64, local-use prefix
    "2002::/16",        # 6to4: the embedded IPv4 address is the tunnel end
    "2001::/32",        # Teredo: embeds the client's IPv4 address
    "100::/64",         # discard-only
    "2001:2::/48",      # benchmarking
    "2001:db8::/32",    # documentation
    "3fff::/20",        # documentation (RFC 9637)
    "2001:10::/28",     # ORCHID
    "2001:20::/28",     # ORCHIDv2
    "fec0::/10",        # site-local, deprecated
))
"""IPv6 ranges refused whatever Python's `is_global` says: transition forms that embed an IPv4
address (which may be private) and reserved ranges."""


def public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """A global unicast address, not in a transition or reserved IPv6 range (NOT_PUBLIC_V6)."""
    if ip.version == 6:
        if any(ip in net for net in NOT_PUBLIC_V6):
            return False
        if ip.ipv4_mapped is not None:
            return public(ip.ipv4_mapped)
    return ip.is_global and not ip.is_multicast


class Downloader:
    """Fetches URLs under the rules of a `DownloadConfig`; thread-safe (one pool per request)."""

    def __init__(self, cfg: DownloadConfig, resolver: Resolver = system_resolver):
        self.cfg = cfg
        self.resolver = resolver
        self.rules = [host_rule(r) for r in cfg.allow_hosts]

    # -- address policy ---------------------------------------------------------------------

    def allowed(self, address: str, port: int) -> bool:
        """May we connect to `address`:`port`? Public unicast addresses, or an allow rule."""
        ip = ipaddress.ip_address(address)
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in net and (p is None or p == port) for net, p in self.rules):
            return True
        return self.cfg.allow_private or public(ip)

    def _address(self, host: str, port: int) -> str:
        """The one address to connect to, after checking every address `host` resolves to."""
        try:
            addresses = [str(ipaddress.ip_address(host))]  # a literal: no DNS
        except ValueError:
            try:
                addresses = list(self.resolver(host, port))
            except (OSError, UnicodeError):
                raise _Fail("dns_error") from None
        if not addresses:
            raise _Fail("dns_error")
        if not all(self.allowed(a, port) for a in addresses):
            raise _Fail("private_address")
        return addresses[0]

    # -- one request ------------------------------------------------------------------------

    def _request(self, url: str, deadline: float) -> urllib3.BaseHTTPResponse:
        try:
            u = urllib3.util.parse_url(url)
        except LocationParseError:
            raise _Fail("bad_url") from None
        scheme = (u.scheme or "").lower()
        if scheme not in ("http", "https"):
            raise _Fail("unsupported_scheme" if scheme else "bad_url")
        host = (u.host or "").strip("[]")
        if not host:
            raise _Fail("bad_url")
        port = u.port or (443 if scheme == "https" else 80)
        address = self._address(host, port)
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Fail("timeout")
        timeout = urllib3.Timeout(connect=min(self.cfg.timeout, left), read=min(self.cfg.timeout, left))
        name = f"[{host}]" if ":" in host else host
        headers = {"Host": name if u.port in (None, 443 if scheme == "https" else 80) else f"{name}:{port}",
                   "User-Agent": self.cfg.user_agent, "Accept": "image/*,*/*;q=0.8",
                   "Accept-Encoding": "identity"}
        if scheme == "https":
            pool: urllib3.HTTPConnectionPool = urllib3.HTTPSConnectionPool(
                address, port, timeout=timeout, retries=False, cert_reqs="CERT_REQUIRED",
                server_hostname=host, assert_hostname=host)
        else:
            pool = urllib3.HTTPConnectionPool(address, port, timeout=timeout, retries=False)
        try:
            return pool.urlopen("GET", u.request_uri, headers=headers, redirect=False, retries=False,
                                preload_content=False, assert_same_host=False, release_conn=False)
        except (ConnectTimeoutError, ReadTimeoutError, TimeoutError):
            raise _Fail("timeout") from None
        except SSLError:
            raise _Fail("ssl_error") from None
        except (NewConnectionError, HTTPError, OSError):
            raise _Fail("connection_error") from None

    def _body(self, resp: urllib3.BaseHTTPResponse, deadline: float) -> bytes:
        length = resp.headers.get("Content-Length")
        if length and length.strip().isdigit() and int(length) > self.cfg.max_bytes:
            raise _Fail("too_large")
        buf = bytearray()
        try:
            while True:
                chunk = resp.read1(_CHUNK)  # at most one recv: a trickling server meets the deadline
                if not chunk:
                    break
                buf += chunk
                if len(buf) > self.cfg.max_bytes:
                    raise _Fail("too_large")
                if time.monotonic() > deadline:
                    raise _Fail("timeout")
        except (ReadTimeoutError, TimeoutError):
            raise _Fail("timeout") from None
        except (HTTPError, OSError):
            raise _Fail("connection_error") from None
        return bytes(buf)

    def _attempt(self, url: str) -> tuple[bytes, int, str]:
        """One attempt: follow redirects, return (body, status, final URL) or raise _Fail."""
        deadline = time.monotonic() + self.cfg.timeout
        current, last = url, None
        for _ in range(self.cfg.max_redirects + 1):
            try:
                resp = self._request(current, deadline)
            except _Fail as exc:  # keep where it happened: the last status and the refused URL
                raise _Fail(exc.error, last, current if last else None) from None
            last = resp.status
            try:
                location = resp.headers.get("Location")
                if resp.status in REDIRECTS and location:
                    try:
                        current = urljoin(current, location.strip())
                    except ValueError:
                        raise _Fail("bad_url", resp.status, current) from None
                    continue
                if not 200 <= resp.status < 300:
                    raise _Fail(f"http_{resp.status}", resp.status, current)
                if self.cfg.disallowed_directives and robots_disallowed(
                        resp.headers.getlist("X-Robots-Tag"), self.cfg.disallowed_directives):
                    raise _Fail("robots_disallowed", resp.status, current)
                try:
                    body = self._body(resp, deadline)
                except _Fail as exc:
                    raise _Fail(exc.error, resp.status, current) from None
                if not body:
                    raise _Fail("empty", resp.status, current)
                return body, resp.status, current
            finally:
                resp.release_conn()
                resp.close()
        raise _Fail("too_many_redirects", None, current)

    def fetch(self, url: str) -> Fetched:
        """Fetch one URL, retrying transient failures; never raises."""
        attempts = 0
        while True:
            attempts += 1
            try:
                body, status, final = self._attempt(url)
                return Fetched(url, "ok", None, status, final, attempts, body)
            except _Fail as exc:
                failed = Fetched(url, "error", exc.error, exc.http_status, exc.final_url, attempts)
            except Exception as exc:  # noqa: BLE001 - robustness: one URL never fails a part
                failed = Fetched(url, "error", f"unexpected_{type(exc).__name__}", None, None, attempts)
            if failed.error not in TRANSIENT or attempts > self.cfg.retries:
                return failed
            time.sleep(self.cfg.backoff * 2 ** (attempts - 1))

    def fetch_each(self, urls: Sequence[str]) -> Iterator[Fetched]:
        """Fetch URLs with `threads` threads; each result as soon as it is done (at most 2 x
        `threads` URLs submitted at a time, so memory holds a few bodies, not the part's)."""
        if not urls:
            return
        threads, todo = min(self.cfg.threads, len(urls)), iter(urls)
        with ThreadPoolExecutor(max_workers=threads) as pool:
            running = {pool.submit(self.fetch, u) for u in islice(todo, 2 * threads)}
            while running:
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                running |= {pool.submit(self.fetch, u) for u in islice(todo, len(finished))}
                yield from (f.result() for f in finished)


FLUSH_ROWS, FLUSH_SECONDS = 64, 1.0  # a batch of outcomes is written at whichever comes first
STORE_SCHEMA = pa.schema([("url", pa.string()), ("status", pa.string()), ("error", pa.string()),
                          ("http_status", pa.int32()), ("final_url", pa.string()), ("attempts", pa.int32()),
                          ("data", pa.binary())])
SHARD_SCHEMA = pa.schema([("key", pa.string()), ("url", pa.string()), ("status", pa.string()),
                          ("error_message", pa.string()), ("http_status", pa.int32()), ("final_url", pa.string()),
                          ("attempts", pa.int32()), ("jpg", pa.binary())])


class DownloadStore:
    """The outcomes of one extract part's URLs under `root`: batches `PART/b-NNNNN.parquet` while
    it runs, merged when the part's download ends into `PART.parquet` (the last outcome of each
    URL) and `PART_stats.json`, in img2dataset's `parquet` output layout (`key`, `url`, `status`
    `success` or `failed_to_download`, `error_message`, the bytes in `jpg`), so a download folder
    is itself an image source (`--images WORK/download`). Only successes are served; failures are
    fetched again. PART is a number (img2dataset's shard names are)."""

    def __init__(self, root: Path, part: str):
        self.root, self.part, self.folder = Path(root), part, Path(root) / part

    @property
    def shard(self) -> Path:
        return self.root / f"{self.part}.parquet"

    def _files(self) -> list[Path]:
        """The merged shard, then the batches in order (a later outcome of a URL replaces an earlier one)."""
        return [p for p in (self.shard,) if p.exists()] + sorted(self.folder.glob("b-*.parquet"))

    def _read(self, path: Path, columns: list[str] | None = None) -> pa.Table | None:
        """A batch, or the merged shard with the batches' columns; None for a batch a crash cut short."""
        try:
            if path != self.shard:
                return pq.read_table(path, columns=columns)
            t = pq.read_table(path)
            ok = pc.equal(t["status"], "success")
            t = pa.table({"url": t["url"], "status": pc.if_else(ok, "ok", "error"), "error": t["error_message"],
                          "http_status": t["http_status"], "final_url": t["final_url"], "attempts": t["attempts"],
                          "data": t["jpg"]}, schema=STORE_SCHEMA)
            return t.select(columns) if columns else t
        except (OSError, pa.ArrowException):  # those URLs are fetched again
            return None

    def load(self) -> dict[str, Fetched]:
        """Every recorded outcome, the last one of each URL."""
        got: dict[str, Fetched] = {}
        for f in self._files():
            if (t := self._read(f)) is not None:
                got.update((r["url"], Fetched(**r)) for r in t.to_pylist())
        return got

    def merge(self) -> None:
        """Fold the batches into the shard (one file at a time in memory) and its stats."""
        files = self._files()
        if not any(f != self.shard for f in files):
            return
        last: dict[str, tuple[int, str]] = {}  # url -> (file, status) of its last outcome
        for i, f in enumerate(files):
            if (t := self._read(f, ["url", "status"])) is not None:
                last.update((u, (i, st)) for u, st in zip(t["url"].to_pylist(), t["status"].to_pylist()))
        rows = 0
        with atomic_path(self.shard) as tmp, pq.ParquetWriter(tmp, SHARD_SCHEMA, compression="zstd") as w:
            for i, f in enumerate(files):
                if (t := self._read(f)) is not None:
                    t = t.filter(pa.array([last[u][0] == i for u in t["url"].to_pylist()]))
                    w.write_table(_as_shard(t, rows))
                    rows += len(t)
        failed = sorted(stable_id("download", u, length=32) for u, (_, st) in last.items() if st != "ok")
        with atomic_path(self.root / f"{self.part}_stats.json") as tmp:
            tmp.write_text(json.dumps({"count": len(last), "successes": len(last) - len(failed), "failed_urls": failed}))
        shutil.rmtree(self.folder, ignore_errors=True)

    def sink(self) -> _Sink:
        return _Sink(self.folder, 1 + max((int(p.stem[2:]) for p in self.folder.glob("b-*.parquet")), default=0))

    @staticmethod
    def state(root: Path) -> str:
        """A short hash of the failure set of every part under `root`: it changes when a failure is
        retried or recovers."""
        h = hashlib.sha256()
        for f in sorted(Path(root).glob("*_stats.json")):
            h.update(f"{f.name}\n".encode() + "\n".join(json.loads(f.read_text())["failed_urls"]).encode())
        return h.hexdigest()[:16]


def _as_shard(t: pa.Table, first: int) -> pa.Table:
    """Outcomes in img2dataset's layout, keyed by row number from `first`."""
    ok = pc.equal(t["status"], "ok")
    return pa.table({"key": [f"{first + i:09d}" for i in range(len(t))], "url": t["url"],
                     "status": pc.if_else(ok, "success", "failed_to_download"), "error_message": t["error"],
                     "http_status": t["http_status"], "final_url": t["final_url"], "attempts": t["attempts"],
                     "jpg": t["data"]}, schema=SHARD_SCHEMA)


def _write(results: list[Fetched], path: Path) -> None:
    rows = {name: [getattr(r, name) for r in results] for name in STORE_SCHEMA.names}
    with atomic_path(path) as tmp:
        pq.write_table(pa.table(rows, schema=STORE_SCHEMA), tmp, compression="zstd")


class _Sink:
    """Outcomes written in numbered batches of FLUSH_ROWS, or after FLUSH_SECONDS."""

    def __init__(self, folder: Path, first: int):
        self.folder, self.n, self.since = folder, first, time.monotonic()
        self.buf: list[Fetched] = []

    def add(self, result: Fetched) -> None:
        self.buf.append(result)
        if len(self.buf) >= FLUSH_ROWS or time.monotonic() - self.since >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            _write(self.buf, self.folder / f"b-{self.n:05d}.parquet")
            self.n, self.buf = self.n + 1, []
        self.since = time.monotonic()


def download_documents(docs: Sequence[Document], cfg: DownloadConfig, store: DownloadStore,
                       downloader: Downloader | None = None) -> list[Fetched]:
    """Fill in the image items of `docs` that have a URL but no bytes: stored successes are
    reused, everything else is fetched (`threads` at a time) and stored as it finishes. A failed
    item gets `error='download_<error>'`. Returns one record per distinct URL, in order of appearance."""
    items = [i for d in docs for i in d.items if i.kind == "image" and i.data is None and i.url and not i.error]
    urls = list(dict.fromkeys(i.url for i in items if i.url))
    known = store.load()
    results = {u: replace(known[u], cached=True) for u in urls if u in known and known[u].status == "ok"}
    todo = [u for u in urls if u not in results]
    sink = store.sink()
    for res in (downloader or Downloader(cfg)).fetch_each(todo):
        sink.add(res)
        results[res.url] = res
    sink.flush()
    store.merge()
    for item in items:
        res = results[item.url or ""]  # every item here has a URL (see `items`)
        if res.status == "ok":
            item.data = res.data
        else:
            item.error = f"download_{res.error}"
    return [results[u] for u in urls]
