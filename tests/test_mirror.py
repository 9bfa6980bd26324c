"""A workspace in an object store, through a local mirror (issue 8), against a real S3 endpoint
on loopback: uploads on atomic write, downloads of what is missing, a finished stage's folder made
equal in the store, and a worker on another node fetching what its stage reads."""

from __future__ import annotations

import uuid
from pathlib import Path

import fsspec
import pyarrow as pa
import pytest

from realsyn.runtime import mirror
from realsyn.runtime.mirror import Mirror, StoreError, _in_worker, mirrored
from realsyn.runtime.workspace import Workspace, fingerprint, write_table


@pytest.fixture()
def url(s3_env) -> str:
    return f"s3://realsyn/unit-{uuid.uuid4().hex[:8]}"


@pytest.fixture(autouse=True)
def no_mirror_after():
    yield
    mirror.activate(None)


def store(url: str) -> dict[str, int]:
    fs, base = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    return {p[len(base) + 1:]: i["size"] for p, i in fs.find(base, detail=True).items()}


def test_mirrored_rules():
    assert mirrored("extract/images/part-00000.parquet") and mirrored("manifest.json") and mirrored("_inputs/k/a.zim")
    assert not mirrored("download/ab/abcd.bin") and not mirrored("synth/_cache-host.sqlite")
    assert not mirrored("embed/images/part-00000.parquet.tmp-123")


def test_workspace_in_store(url: str, tmp_path: Path):
    ws = Workspace(url, scratch=tmp_path / "a")
    assert ws.root.parent == tmp_path / "a" and mirror.active() is ws.mirror
    ws.begin("embed", "k1")
    write_table(pa.table({"x": [1, 2]}), ws.dir("embed") / "images" / "part-00000.parquet")
    (ws.dir("embed") / "_cache-host.sqlite").write_bytes(b"cache")  # node-local: never uploaded
    files = store(url)
    assert "embed/images/part-00000.parquet" in files and "manifest.json" in files  # uploaded when written
    (ws.dir("embed") / "images" / "part-00000.parquet").unlink()  # a stage deletes a file ...
    write_table(pa.table({"x": [3]}), ws.dir("embed") / "dedup_images.parquet")
    ws.finish("embed", {"n": 1}, 1.0)
    assert sorted(k for k in store(url) if k.startswith("embed/")) == ["embed/dedup_images.parquet"]  # ... and so does the store

    other = Workspace(url, scratch=tmp_path / "b")  # another machine: the manifest comes from the store
    assert other.is_current("embed", "k1") and not other.dir("embed").exists()
    other.pull(["embed"])
    assert (other.dir("embed") / "dedup_images.parquet").read_bytes() == (ws.dir("embed") / "dedup_images.parquet").read_bytes()
    other.begin("embed", "k2")  # another key: the stage is wiped here and in the store
    assert not [k for k in store(url) if k.startswith("embed/")]


def test_new_store_forgets_a_stale_scratch(url: str, tmp_path: Path):
    ws = Workspace(url, scratch=tmp_path)
    ws.root.mkdir(parents=True)
    (ws.root / "manifest.json").write_text('{"stages": {"extract": {"status": "done", "key": "k"}}}')
    assert not Workspace(url, scratch=tmp_path).is_current("extract", "k")


def test_worker_on_another_node_fetches_what_its_stage_reads(url: str, tmp_path: Path):
    driver = Workspace(url, scratch=tmp_path / "driver")
    driver.begin("extract", "k")
    write_table(pa.table({"x": [1]}), driver.dir("extract") / "images" / "part-00000.parquet")
    driver.begin("retrieve", "k")
    write_table(pa.table({"x": [2]}), driver.dir("retrieve") / "index.parquet")  # the stage's own index
    node = Mirror(url, tmp_path / "node")  # the same workspace on a node with an empty scratch
    seen = _in_worker(node.spec, ("extract",), "retrieve", lambda task: sorted(
        p.relative_to(node.local).as_posix() for p in node.local.rglob("*.parquet")), None)
    assert seen == ["extract/images/part-00000.parquet", "retrieve/index.parquet"]


def test_inputs_copy_fingerprint_is_its_relative_path(tmp_path: Path):
    a = tmp_path / "a" / "_inputs" / "0123" / "x.zim"
    b = tmp_path / "b" / "_inputs" / "0123" / "x.zim"  # on another machine, not even fetched
    assert fingerprint([a], tmp_path / "a") == fingerprint([b], tmp_path / "b") \
        != fingerprint([tmp_path / "a" / "_inputs" / "4567" / "x.zim"], tmp_path / "a")
    own = tmp_path / "data" / "_inputs" / "x.zim"  # a user's folder of that name is an ordinary input
    own.parent.mkdir(parents=True)
    own.write_bytes(b"one")
    first = fingerprint([own], tmp_path / "a")
    own.write_bytes(b"three")
    assert fingerprint([own], tmp_path / "a") != first


def test_store_failure_is_one_line(s3_env, tmp_path: Path):
    m = Mirror("s3://no-such-bucket/work", tmp_path)
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(StoreError, match=r"^workspace s3://no-such-bucket/work: .*bucket does not exist$"):
        m.push(tmp_path / "manifest.json")
