"""img2dataset output as an image source: an MMC4 shard whose image URLs are served by a loopback
server, and img2dataset output for those URLs written in its three formats (webdataset, parquet,
files: metadata table per shard, `_stats.json`, the images). Extract takes the bytes from the
output, records img2dataset's failures with their message, and asks the server for nothing."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from test_download import _send, _Server

from realsyn.io.img2dataset import Index, build
from realsyn.runtime.executor import LocalExecutor

PHOTOS = sorted((Path(__file__).resolve().parents[2] / "shared" / "data" / "gutenberg" / "30621-h" / "images").glob("*.png"))[:40]
N = 24  # URLs: 0-15 fetched by img2dataset, 16-19 failed, 20-23 absent from its output
FAILED = "HTTP Error 404: Not Found"


def _write_output(folder: Path, fmt: str, urls: list[str], images: list[bytes]) -> None:
    """img2dataset's output for the first 20 URLs: two shards of 10, URLs 16-19 failed."""
    folder.mkdir(parents=True)
    for shard in range(2):
        rows, name = [], f"{shard:05d}"
        tar = wds.TarWriter(str(folder / f"{name}.tar")) if fmt == "webdataset" else None
        if fmt == "files":
            (folder / name).mkdir()
        for k in range(shard * 10, shard * 10 + 10):
            key, ok = f"{shard:05d}{k:04d}", k < 16
            meta = {"url": urls[k], "key": key, "status": "success" if ok else "failed_to_download",
                    "error_message": None if ok else FAILED, "width": 0, "height": 0}
            if ok and tar is not None:
                tar.write({"__key__": key, "jpg": images[k], "txt": "", "json": json.dumps(meta).encode()})
            if ok and fmt == "files":
                (folder / name / f"{key}.jpg").write_bytes(images[k])
                (folder / name / f"{key}.json").write_text(json.dumps(meta))
            rows.append({**meta, **({"jpg": images[k] if ok else None} if fmt == "parquet" else {})})
        if tar is not None:
            tar.close()
        pq.write_table(pa.Table.from_pylist(rows), folder / f"{name}.parquet")
        (folder / f"{name}_stats.json").write_text(json.dumps({"count": 10, "successes": sum(r["status"] == "success" for r in rows)}))


def _serve(data: bytes):
    return lambda h, s: _send(h, 200, data)


@pytest.fixture(scope="module")
def server():
    images = {f"/p/{k}.png": PHOTOS[k].read_bytes() for k in range(N)}
    srv = _Server({p: _serve(data) for p, data in images.items()})
    yield srv, [srv.url(f"/p/{k}.png") for k in range(N)], [images[f"/p/{k}.png"] for k in range(N)]
    srv.close()


def _text(k: int) -> str:
    return f"Figure {k} shows the apparatus that was used in experiment {k}."


def _mmc4(path: Path, urls: list[str]) -> None:
    lines = [{"url": f"http://page/{k}", "text_list": [_text(k)], "image_info": [{"raw_url": u, "matched_text_index": 0}]}
             for k, u in enumerate(urls)]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))


def _obelics(path: Path, urls: list[str]) -> None:
    rows = [{"texts": [_text(100 + k), None], "images": [None, u], "url": f"http://obelics/{k}"} for k, u in enumerate(urls)]
    pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.mark.parametrize("fmt", ["webdataset", "parquet", "files"])
def test_index_finds_every_url_with_its_bytes(tmp_path, server, fmt):
    _, urls, images = server
    _write_output(tmp_path / "i2d", fmt, urls, images)
    with LocalExecutor(1) as ex:
        index = Index(build(ex, [tmp_path / "i2d"], tmp_path / "sources"))
    found = index.find(urls + [u.replace("/p/", "/p/%7E") for u in urls[:2]])
    assert sorted(found, key=urls.index) == urls[:20]
    assert all(found[urls[k]].data == images[k] for k in range(16))
    assert all(found[urls[k]].data is None and found[urls[k]].error == FAILED for k in range(16, 20))


def test_extract_takes_images_from_img2dataset_output(tmp_path, server):
    srv, urls, images = server
    _write_output(tmp_path / "i2d", "webdataset", urls, images)
    _mmc4(tmp_path / "docs.jsonl", urls[::2])  # an MMC4 shard and an OBELICS-style parquet
    _obelics(tmp_path / "docs.parquet", urls[1::2])
    work = tmp_path / "work"
    cmd = [sys.executable, "-c", "from realsyn.cli import app; app()", "extract", str(tmp_path / "docs.jsonl"),
           str(tmp_path / "docs.parquet"), "--out", str(work), "--images", str(tmp_path / "i2d"), "--quiet", "--workers", "1",
           "--set", "extract.sentences.perplexity=false"]
    srv.hits.clear()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = {r["url"]: r for r in pq.read_table(work / "extract" / "images").to_pylist()}
    blobs = {r["image_id"]: r["data"] for r in pq.read_table(work / "extract" / "blobs").to_pylist()}
    for k in range(16):  # the shard's bytes: the id hashes them, the blob holds them
        r = rows[urls[k]]
        assert r["image_id"] == hashlib.sha256(images[k]).hexdigest()[:32]
        assert r["status"] != "kept" or blobs[r["image_id"]] == images[k]
    assert sum(rows[u]["status"] == "kept" for u in urls[:16]) >= 12
    assert [(rows[u]["reason"], rows[u]["detail"]) for u in urls[16:20]] == [("not_downloaded", FAILED)] * 4
    assert [(rows[u]["reason"], rows[u]["detail"]) for u in urls[20:]] == [("not_downloaded", None)] * 4
    assert sum(srv.hits.values()) == 0  # no network
    # with download on, only the URLs absent from the output are fetched
    p = subprocess.run(cmd + ["--set", "download.enabled=true", "--set", f"download.allow_hosts=['127.0.0.1:{srv.port}']"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert sorted(srv.hits) == sorted(f"/p/{k}.png" for k in range(20, N))
    rows = {r["url"]: r for r in pq.read_table(work / "extract" / "images").to_pylist()}
    assert all(rows[u]["image_id"] == hashlib.sha256(images[20 + i]).hexdigest()[:32] for i, u in enumerate(urls[20:]))


def test_a_folder_without_shards_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "d.jsonl").write_text(json.dumps({"url": "http://a", "text_list": ["x"], "image_info": []}) + "\n")
    p = subprocess.run([sys.executable, "-c", "from realsyn.cli import app; app()", "extract", str(tmp_path / "d.jsonl"),
                        "--out", str(tmp_path / "w"), "--images", str(tmp_path / "empty"), "--quiet"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "no img2dataset shard" in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run([sys.executable, "-c", "from realsyn.cli import app; app()", "extract", str(tmp_path / "d.jsonl"),
                        "--out", str(tmp_path / "w"), "--images", str(tmp_path / "nowhere"), "--quiet"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "not a folder" in p.stderr and "Traceback" not in p.stderr


def test_a_download_killed_midway_fetches_only_what_was_missing(tmp_path):
    """SIGKILL while images download (batches of outcomes on disk), re-run: the URLs already stored
    are not asked for again, and the tables equal an uninterrupted run's."""
    n = 60
    photos = {f"/slow/{k}.png": PHOTOS[k % len(PHOTOS)].read_bytes() + bytes([k]) for k in range(n)}

    def slow(data):
        def route(h, s):
            time.sleep(0.1)
            _send(h, 200, data)
        return route

    srv = _Server({p: slow(d) for p, d in photos.items()})
    try:
        urls = [srv.url(p) for p in photos]
        _mmc4(tmp_path / "docs.jsonl", urls)
        sets = ["extract.sentences.perplexity=false", "download.enabled=true", "download.threads=2",
                f"download.allow_hosts=['127.0.0.1:{srv.port}']"]

        def cmd(work):
            return [sys.executable, "-c", "from realsyn.cli import app; app()", "extract", str(tmp_path / "docs.jsonl"),
                    "--out", str(work), "--quiet", "--workers", "1", *[a for s in sets for a in ("--set", s)]]

        proc = subprocess.Popen(cmd(tmp_path / "w"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        batches = tmp_path / "w" / "download"
        deadline = time.time() + 120
        while time.time() < deadline and not list(batches.glob("*/b-*.parquet")):
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        stored = {r["url"] for p in batches.glob("*/b-*.parquet") for r in pq.read_table(p, columns=["url"]).to_pylist()}
        assert 0 < len(stored) < n, "the run ended before it could be killed"
        srv.hits.clear()
        subprocess.run(cmd(tmp_path / "w"), check=True, capture_output=True, timeout=300)
        assert sum(srv.hits.values()) == n - len(stored) and not any(srv.url(p) in stored for p in srv.hits)
        subprocess.run(cmd(tmp_path / "ref"), check=True, capture_output=True, timeout=300)
        for t in ("images", "sentences"):
            assert pq.read_table(tmp_path / "w" / "extract" / t).equals(pq.read_table(tmp_path / "ref" / "extract" / t)), t
        # the download store is in img2dataset's layout: another workspace takes its images from it, offline
        srv.hits.clear()
        sets[1] = "download.enabled=false"
        subprocess.run(cmd(tmp_path / "again") + ["--images", str(batches)], check=True, capture_output=True, timeout=300)
        assert sum(srv.hits.values()) == 0
        for t in ("images", "sentences"):
            assert pq.read_table(tmp_path / "again" / "extract" / t).equals(pq.read_table(tmp_path / "ref" / "extract" / t)), t
    finally:
        srv.close()
