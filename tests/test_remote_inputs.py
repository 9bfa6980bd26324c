"""Inputs as fsspec URLs: fetched once into WORK/_inputs, refetched when the remote object changes;
`realsyn extract` over a real local HTTP server gives the same tables as the local file."""

from __future__ import annotations

import functools
import http.server
import json
import subprocess
import threading
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest
from run_cli import realsyn

from realsyn.io.readers import InputError
from realsyn.io.remote import FOLDER, is_url, localize


@pytest.fixture()
def memfs():
    fs = fsspec.filesystem("memory")
    yield fs
    if fs.exists("/realsyn-test"):
        fs.rm("/realsyn-test", recursive=True)


def test_local_paths_pass_through(tmp_path):
    assert not is_url("/data/x.zim") and not is_url("file:///data/x.zim") and is_url("s3://b/x.zim")
    assert localize("/data/x.zim", tmp_path) == Path("/data/x.zim")
    assert localize("file:///data/x.zim", tmp_path) == Path("/data/x.zim")
    assert not (tmp_path / FOLDER).exists()


def test_file_fetched_once_and_again_when_changed(memfs, tmp_path):
    memfs.pipe("/realsyn-test/docs.jsonl", b'{"a": 1}\n')
    first = localize("memory://realsyn-test/docs.jsonl", tmp_path)
    assert first.read_bytes() == b'{"a": 1}\n' and first.parent.parent == tmp_path / FOLDER
    stamp = first.stat().st_mtime_ns
    assert localize("memory://realsyn-test/docs.jsonl", tmp_path) == first and first.stat().st_mtime_ns == stamp
    memfs.pipe("/realsyn-test/docs.jsonl", b'{"a": 1}\n{"b": 2}\n')  # another size: another version
    second = localize("memory://realsyn-test/docs.jsonl", tmp_path)
    assert second != first and second.read_bytes().count(b"\n") == 2
    assert not list((tmp_path / FOLDER).rglob(".*.part"))


def test_folder_fetched_whole(memfs, tmp_path):
    memfs.pipe("/realsyn-test/site/a.html", b"<p>One.</p>")
    memfs.pipe("/realsyn-test/site/img/b.png", b"png")
    local = localize("memory://realsyn-test/site", tmp_path)
    assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()) == ["a.html", "img/b.png"]
    assert localize("memory://realsyn-test/site", tmp_path) == local
    memfs.pipe("/realsyn-test/site/c.html", b"<p>Two.</p>")  # a file added: a new version of the folder
    again = localize("memory://realsyn-test/site", tmp_path)
    assert again != local and (again / "c.html").exists()


def test_missing_remote_input_is_an_input_error(memfs, tmp_path):
    with pytest.raises(InputError, match="input not found"):
        localize("memory://realsyn-test/nope.jsonl", tmp_path)


def _extract(inp: str, work: Path) -> subprocess.CompletedProcess:
    return realsyn("extract", inp, "--out", str(work), "--quiet", "--workers", "1",
                   "--set", "extract.sentences.perplexity=false", check=False, timeout=600)


def test_extract_over_http_equals_local(data_dir, tmp_path):
    pytest.importorskip("aiohttp")  # fsspec's http filesystem (extra realsyn[http])
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(data_dir / "mmc4"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/docs_shard_151_partial.jsonl"
        remote = _extract(url, tmp_path / "remote")
        local = _extract(str(data_dir / "mmc4" / "docs_shard_151_partial.jsonl"), tmp_path / "local")
        assert remote.returncode == 0 and local.returncode == 0, remote.stderr[-2000:]
        for kind in ("images", "sentences"):
            a, b = (pq.read_table(w / "extract" / kind).drop_columns(["source"]) for w in (tmp_path / "remote", tmp_path / "local"))
            assert a.num_rows > 0 and a.equals(b)
        manifest = json.loads((tmp_path / "remote" / "manifest.json").read_text())
        assert manifest["stages"]["extract"]["inputs"][0].startswith(f"{FOLDER}/")  # holds wherever the workspace goes
        status = realsyn("status", str(tmp_path / "remote")).stdout
        assert status.startswith("extract   done") and "stale" not in status
        missing = _extract(url.replace("docs_", "nope_"), tmp_path / "missing")
        assert missing.returncode == 2 and "input not found" in missing.stderr and "Traceback" not in missing.stderr
    finally:
        server.shutdown()


def test_missing_protocol_package_is_one_line(tmp_path):
    try:
        import gcsfs  # noqa: F401
        pytest.skip("gcsfs is installed")
    except ImportError:
        pass
    done = _extract("gs://some-bucket/docs.jsonl", tmp_path / "w")
    assert done.returncode == 2 and "gcsfs" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "w").exists()
    done = _extract(str(tmp_path / "docs.jsonl"), "gs://some-bucket/work")  # a workspace URL, too
    assert done.returncode == 2 and "gcsfs" in done.stderr and "Traceback" not in done.stderr
