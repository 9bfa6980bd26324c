"""The Ray executor (issue 8): same output as the local executor on a real two-node Ray cluster
(a head and a worker node on this machine), a killed worker's part retried, a failing part
reported after the rest finished."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from realsyn.config import ConfigError, RayConfig, load_config
from realsyn.pipeline import NAMES
from realsyn.runtime.launch import make_executor

ray = pytest.importorskip("ray")

from realsyn.runtime.ray_executor import KILL_DIR, KILL_STAGES, PartsFailed, RayExecutor, describe, stage_of  # noqa: E402

# Fast settings: the template LLM (no SmolLM2 generation), no perplexity filter, sentences of 20+
# words only (1.4k of 3.4k: embedding them dominates the run), 11 parts.
FAST = ["models.llm=template", "extract.sentences.perplexity=false", "extract.sentences.min_words=20", "extract.docs_per_part=8",
        "synth.language=null", "report.sim_sample=100", "report.sample=500"]
NODE = {"num_cpus": 1, "object_store_memory": 150 << 20}
# Files whose content is a clock reading or a cache (not output): compared without those fields.
TIMES = {"start_time", "end_time", "duration"}


def realsyn(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "from realsyn.cli import app; app()", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600)
    assert not check or proc.returncode == 0, proc.stderr[-3000:]
    return proc


def run_pipeline(zim: Path, out: Path | str, *options: str, env: dict[str, str] | None = None,
                 check: bool = True) -> subprocess.CompletedProcess:
    sets = [a for s in FAST for a in ("--set", s)]
    return realsyn("run", str(zim), "--out", str(out), "--quiet", *sets, *options, env=env, check=check)


def contents(root: Path) -> dict[str, object]:
    """Every output file of a workspace by relative path, read back as data (not bytes or mtimes)."""
    out: dict[str, object] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if not p.is_file() or p.name in {"manifest.json", "config.yaml", ".realsyn.lock"} or p.name.startswith("_cache") \
                or rel.startswith("report/"):
            continue
        if p.suffix == ".parquet":
            out[rel] = pq.read_table(p).to_pylist()
        elif p.suffix == ".tar":
            with tarfile.open(p) as tar:
                out[rel] = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
        elif p.suffix == ".npy":
            out[rel] = np.load(p).tolist()
        elif p.suffix == ".json":
            out[rel] = {k: v for k, v in json.loads(p.read_text()).items() if k not in TIMES}
        else:
            out[rel] = p.read_bytes()
    return out


def counts(root: Path) -> dict[str, object]:
    return {k: v["counts"] for k, v in json.loads((root / "manifest.json").read_text())["stages"].items()}


def assert_same(a: Path, b: Path) -> None:
    ca, cb = contents(a), contents(b)
    assert sorted(ca) == sorted(cb)
    assert [k for k in ca if ca[k] != cb[k]] == []
    ma, mb = counts(a), counts(b)
    for m in (ma, mb):  # the report's size follows its page (paths, times)
        m.pop("report", None)
    assert ma == mb


@pytest.fixture(scope="module")
def cluster(s3_env: dict[str, str]):
    """A head node and a worker node (one CPU each) on this machine; stopped even on failure. The
    nodes start with the test S3 endpoint's credentials, as real nodes have theirs."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    try:
        c.add_node(**NODE)
        c.wait_for_nodes()
        yield c.address
    finally:
        c.shutdown()


@pytest.fixture(scope="module")
def zim(data_dir: Path) -> Path:
    return data_dir / "wiki-raycharles" / "wikipedia_en_ray_charles_2015-06.zim"


@pytest.fixture(scope="module")
def local_run(zim: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local") / "work"
    run_pipeline(zim, out, "--executor", "local", "--workers", "2")
    return out


def test_make_executor_ray_and_resources():
    cfg = load_config(None, {"runtime.ray.num_gpus.embed": 0.5, "runtime.ray.num_cpus.extract": 2})
    ex = make_executor("ray", 3, cfg.runtime.ray)
    assert isinstance(ex, RayExecutor) and ex.workers == 3
    assert ex._options("embed")["num_gpus"] == 0.5 and ex._options("embed")["num_cpus"] == 1.0
    assert ex._options("extract")["num_cpus"] == 2 and ex._options("synth")["num_gpus"] == 0.0
    with pytest.raises(ConfigError):
        load_config(None, {"runtime.ray.num_gpus.embed": -1})
    with pytest.raises(ConfigError):
        make_executor("dask")
    assert list(RayExecutor().map(math.sqrt, [])) == [] and not ray.is_initialized()  # nothing to do: no cluster
    from realsyn.embed import stage

    assert stage_of(stage._process) == "embed"
    assert describe(stage._Task("images", 3, Path("/w"), Path("/w/embed"), "bridge", "cpu", 8, "float16", 1)) \
        == "_Task(kind='images', index=3, work=w, out=embed, model='bridge', device='cpu', batch_size=8, dtype='float16', threads=1)"


@pytest.mark.slow
def test_model_stage_parts_run_on_actors_that_load_once(cluster: str):
    def which_actor(task: int) -> tuple[str | None, int, int]:  # nested: sent by value, workers cannot import tests
        import builtins
        import os
        import time

        import ray

        model = builtins.__dict__.setdefault("_realsyn_test_model", time.monotonic_ns())  # loaded once per process
        return ray.get_runtime_context().get_actor_id(), os.getpid(), model

    ex = RayExecutor(RayConfig(address=cluster, actors=[stage_of(which_actor)]), workers=5)  # the cluster holds 2
    with ex:
        runs = list(ex.map(which_actor, range(12)))
    actors = {a for a, _, _ in runs}
    assert None not in actors and 1 <= len(actors) <= 2  # every part ran on one of the two actors
    assert len(set(runs)) == len(actors)  # each actor loaded its model once
    with RayExecutor(RayConfig(address=cluster, actors=[]), workers=2) as plain:
        assert {a for a, _, _ in plain.map(which_actor, range(4))} == {None}  # other stages: plain tasks


@pytest.mark.slow
def test_failing_part_reported_after_the_rest(cluster: str):
    ex = RayExecutor(RayConfig(address=cluster, max_retries=1))
    with ex:
        results, error = [], None
        try:
            for r in ex.map(math.sqrt, [4.0, -1.0, 9.0, 16.0]):
                results.append(r)
        except PartsFailed as exc:
            error = str(exc)
    assert sorted(results) == [2.0, 3.0, 4.0]
    assert error is not None and "1 part(s) failed" in error and "math domain error" in error


@pytest.mark.slow
def test_killed_worker_part_is_retried(cluster: str, local_run: Path, zim: Path, tmp_path: Path):
    """A Ray run whose workers are killed in extract and embed retries those parts and gives the
    local executor's output (also the check that Ray and local agree: a run without kills would
    only repeat it, and the object-store test below is one)."""
    markers = tmp_path / "markers"
    markers.mkdir()
    run_pipeline(zim, tmp_path / "work", "--executor", "ray", "--set", f"runtime.ray.address={cluster}",
                 env={KILL_STAGES: "extract,embed", KILL_DIR: str(markers)})
    assert sorted(p.name for p in markers.iterdir()) == ["killed-embed", "killed-extract"]
    assert counts(tmp_path / "work")["extract"]["parts"] > 4
    assert_same(local_run, tmp_path / "work")
    assert not list((tmp_path / "work").rglob("*.tmp-*"))  # nothing half-written is left


def fetch(url: str, dest: Path) -> Path:
    """The store's copy of a workspace, downloaded into `dest`."""
    import fsspec

    fs, base = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    for path in fs.find(base):
        target = dest / path[len(base) + 1:]
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(path, str(target))
    return dest


def uploaded(url: str, folder: str) -> dict[str, object]:
    """When each object under `folder` of a store workspace was last written."""
    import fsspec

    fs, base = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    return {p: i["LastModified"] for p, i in fs.find(f"{base}/{folder}", detail=True).items()}


def stage_times(root: Path) -> dict[str, float]:
    return {k: v["started"] for k, v in json.loads((root / "manifest.json").read_text())["stages"].items()}


@pytest.mark.slow
def test_object_store_workspace_equals_local_and_resumes_elsewhere(s3_env: dict[str, str], local_run: Path, zim: Path,
                                                                   tmp_path: Path):
    """`--out s3://…`: the store ends up with the local executor's output. A run killed mid-stage on
    one machine finishes on another (an empty scratch) from what the store holds: finished stages
    are not redone and the output is still identical."""
    url = "s3://realsyn/e2e"
    first = run_pipeline(zim, url, "--workers", "1", env={**s3_env, "REALSYN_SCRATCH": str(tmp_path / "machine-a"),
                                                           "REALSYN_FAULT": "synth:2"}, check=False)
    assert first.returncode == -signal.SIGKILL  # machine a dies at its second synth part
    before = stage_times(fetch(url, tmp_path / "before"))
    assert {"extract", "embed", "retrieve"} <= set(before)
    assert not list((tmp_path / "before").rglob("*.tmp-*")) and any((tmp_path / "before" / "synth").glob("part-*"))
    synth_parts = {p: t for p, t in uploaded(url, "synth").items() if "/part-" in p}
    run_pipeline(zim, url, "--workers", "2", env={**s3_env, "REALSYN_SCRATCH": str(tmp_path / "machine-b")})
    after = fetch(url, tmp_path / "after")
    assert {k: stage_times(after)[k] for k in ("extract", "embed", "retrieve")} == \
        {k: before[k] for k in ("extract", "embed", "retrieve")}  # not redone on machine b
    assert synth_parts and {p: uploaded(url, "synth")[p] for p in synth_parts} == synth_parts  # nor the finished parts
    assert_same(local_run, after)
    status = realsyn("status", url, env={**s3_env, "REALSYN_SCRATCH": str(tmp_path / "machine-c")})
    assert "stale" not in status.stdout and status.stdout.count(" done ") == len(NAMES)


@pytest.mark.slow
def test_ray_cluster_with_object_store_workspace(s3_env: dict[str, str], cluster: str, local_run: Path, zim: Path,
                                                 tmp_path: Path):
    url = "s3://realsyn/ray"
    run_pipeline(zim, url, "--executor", "ray", "--set", f"runtime.ray.address={cluster}",
                 env={**s3_env, "REALSYN_SCRATCH": str(tmp_path / "scratch")})
    assert_same(local_run, fetch(url, tmp_path / "store"))


@pytest.mark.slow
def test_ray_retrieve_on_a_synthetic_pool_equals_local(cluster: str, tmp_path: Path):
    """The out-of-core index and the bucketed join as Ray tasks on two nodes: the same index
    and pairs as the local executor (a 20k-sentence synthetic workspace split in 9 parts)."""
    import shutil

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from scale import make_workspace
    from test_scale_workspace import SPLIT

    make_workspace(tmp_path / "local", 20_000, 2_500, 32, docs_per_part=50)
    shutil.copytree(tmp_path / "local", tmp_path / "ray")
    realsyn("retrieve", "--out", str(tmp_path / "local"), *SPLIT)
    realsyn("retrieve", "--out", str(tmp_path / "ray"), *SPLIT, "--executor", "ray", "--set", f"runtime.ray.address={cluster}")
    assert counts(tmp_path / "local")["retrieve"]["blocks"] >= 4
    assert_same(tmp_path / "local", tmp_path / "ray")


@pytest.mark.slow
def test_ray_clustered_semantic_dedup_on_an_object_store_equals_local(s3_env: dict[str, str], cluster: str, tmp_path: Path):
    """embed's semantic dedup past the exact limit (clusters, pair tasks) on two Ray nodes with an
    `s3://` workspace: the same dedup tables and counts as the local executor on a local folder."""
    import fsspec

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from scale import make_workspace

    make_workspace(tmp_path / "local", 24_000, 3_000, 32, docs_per_part=50, duplicates=20, dedup=False)
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    for p in sorted((tmp_path / "local").rglob("*")):
        if p.is_file():
            fs.put_file(str(p), f"realsyn/semdedup/{p.relative_to(tmp_path / 'local').as_posix()}")
    realsyn("embed", "--out", str(tmp_path / "local"), "--quiet", "--workers", "2")
    realsyn("embed", "--out", "s3://realsyn/semdedup", "--quiet", "--executor", "ray", "--set", f"runtime.ray.address={cluster}",
            env={**s3_env, "REALSYN_SCRATCH": str(tmp_path / "scratch")})
    store = fetch("s3://realsyn/semdedup", tmp_path / "store")
    local, remote = counts(tmp_path / "local")["embed"], counts(store)["embed"]
    assert local["semantic_dedup"]["sentences"]["method"] == "clusters"
    for c in (local, remote):
        for how in c["semantic_dedup"].values():
            how.pop("seconds", None)  # a clock reading
    assert remote == local
    for name in ("dedup_sentences.parquet", "dedup_images.parquet"):
        assert pq.read_table(store / "embed" / name).equals(pq.read_table(tmp_path / "local" / "embed" / name)), name
