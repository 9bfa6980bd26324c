"""Fault injection: `realsyn run` killed with SIGKILL inside every stage, at random times, and on a
full disk; a re-run must give the output of an uninterrupted run (timings and paths aside).

The kill points use the tiny test hook in `realsyn.runtime.workspace` (REALSYN_FAULT=STAGE:N
kills the process at its Nth atomic write into that stage's folder, after the temporary file is
written and before the rename: the worst moment). The disk is filled for real with a small tmpfs
in a private mount namespace (`unshare -rm`) when the kernel allows it, else with the hook's
`enospc` mode.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from realsyn.demo import materialize
from realsyn.runtime.workspace import TMP_MARK

STAGES = ["extract", "embed", "retrieve", "synth", "balance", "export", "report"]
REALSYN = str(Path(sys.executable).parent / "realsyn")
FAST = ["--set", "models.llm=template", "--set", "extract.sentences.perplexity=false",
        "--set", "extract.docs_per_part=4", "--quiet"]
# Not output: timings, how much work this process did (cache hits), the report's size in bytes
# (it names the workspace folder).
_RUN_KEYS = {"seconds", "index_seconds", "started", "finished", "start_time", "end_time", "duration",
             "cached", "generated", "bytes", "files"}


def run(corpus: Path, work: Path, *extra: str, env: dict | None = None, workers: int = 1,
        timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [REALSYN, "run", str(corpus), "--out", str(work), "--workers", str(workers), *FAST, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in _RUN_KEYS}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def snapshot(work: Path) -> dict[str, object]:
    """Every output file's content in a comparable form: parquet as rows, tars as (name, bytes)
    members, JSON without timings, HTML with the workspace path replaced."""
    out: dict[str, object] = {}
    for p in sorted(work.rglob("*")):
        rel = p.relative_to(work).as_posix()
        # the LLM cache (and its WAL) is not output; config.yaml records --workers
        if not p.is_file() or rel.startswith("synth/_cache") or rel in ("config.yaml", ".realsyn.lock"):
            continue
        assert TMP_MARK not in p.name, f"temporary file left behind: {rel}"
        if p.suffix == ".parquet":
            t = pq.read_table(p)
            out[rel] = (t.schema.remove_metadata(), t.to_pylist())
        elif p.suffix == ".tar":
            with tarfile.open(p) as tar:
                out[rel] = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
        elif p.suffix == ".json":
            out[rel] = _strip(json.loads(p.read_text()))
        elif p.suffix == ".npy":
            a = np.load(p, allow_pickle=False)
            out[rel] = (a.dtype.str, a.shape, a.tobytes())
        elif p.suffix == ".html":
            out[rel] = p.read_text().replace(str(work), "WORK")
        else:
            out[rel] = p.read_bytes()
    return out


def assert_same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want), set(got) ^ set(want)
    different = [k for k in want if got[k] != want[k]]
    assert not different, f"outputs differ from the uninterrupted run: {different}"


def assert_no_half_parts(work: Path) -> None:
    """Whatever a kill left behind: every visible (renamed) part is complete."""
    for p in work.rglob("*.parquet"):
        if TMP_MARK not in p.name:
            pq.read_metadata(p)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return materialize(tmp_path_factory.mktemp("faults") / "corpus")


@pytest.fixture(scope="module")
def baseline(corpus, tmp_path_factory) -> tuple[dict, dict[str, int]]:
    work = tmp_path_factory.mktemp("faults") / "baseline"
    p = run(corpus, work)
    assert p.returncode == 0, p.stderr
    files = {s: sum(1 for f in (work / s).rglob("*") if f.is_file()) for s in STAGES}
    return snapshot(work), files


@pytest.mark.slow
def test_sigkill_inside_every_stage_then_rerun(corpus, baseline, tmp_path):
    """Two seeded random kill points per stage, chained in one workspace (each run stops after
    the stage under test), then a plain re-run: identical output."""
    want, files = baseline
    rng = random.Random(9)
    work = tmp_path / "work"
    killed: dict[str, int] = {}
    for stage in STAGES:
        for attempt in range(2):
            n = rng.randint(1, max(1, files[stage] if attempt == 0 else 2))
            p = run(corpus, work, "--until", stage, env={"REALSYN_FAULT": f"{stage}:{n}"})
            assert p.returncode in (0, -signal.SIGKILL), p.stderr[-2000:]
            killed[stage] = killed.get(stage, 0) + (p.returncode == -signal.SIGKILL)
            assert_no_half_parts(work)
    assert all(killed[s] >= 1 for s in STAGES), killed
    p = run(corpus, work)
    assert p.returncode == 0, p.stderr[-2000:]
    assert_same(snapshot(work), want)


@pytest.mark.slow
def test_sigkill_at_random_times_with_two_workers(corpus, baseline, tmp_path):
    """The whole run (2 worker processes) killed from outside at seeded random moments."""
    want, _ = baseline
    rng = random.Random(2024)
    work = tmp_path / "work"
    cmd = [REALSYN, "run", str(corpus), "--out", str(work), "--workers", "2", *FAST]
    kills = 0
    for _ in range(2):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            proc.wait(timeout=rng.uniform(3.0, 14.0))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the run and its workers (its own process group)
            proc.wait()
            kills += 1
        assert_no_half_parts(work)
    assert kills >= 1
    p = run(corpus, work, workers=2)
    assert p.returncode == 0, p.stderr[-2000:]
    assert_same(snapshot(work), want)


def _tmpfs_works(tmp: Path) -> bool:
    if not shutil.which("unshare") or sys.platform != "linux":
        return False
    probe = tmp / "probe"
    probe.mkdir()
    r = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1M tmpfs '{probe}'"],
                       capture_output=True, timeout=30)
    return r.returncode == 0


@pytest.mark.slow
def test_disk_full_then_rerun(corpus, baseline, tmp_path):
    """A run on a disk too small for the workspace fails with ENOSPC; after space is freed the
    re-run finishes with the uninterrupted run's output."""
    want, _ = baseline
    work = tmp_path / "work"
    work.mkdir()
    if _tmpfs_works(tmp_path):
        # a real full disk: a 2 MB tmpfs (extract alone writes ~4 MB), then grown to 100 MB
        saved = tmp_path / "saved"
        cmd = " ".join([REALSYN, "run", f"'{corpus}'", "--out", f"'{work}'", "--workers", "1", *FAST])
        script = (f"mount -t tmpfs -o size=2M tmpfs '{work}' || exit 97; "
                  f"{cmd} 2> '{tmp_path}/first.err'; echo $? > '{tmp_path}/first.rc'; "
                  f"mount -o remount,size=100M '{work}' && {cmd} 2> '{tmp_path}/second.err'; rc=$?; "
                  f"cp -a '{work}/.' '{saved}/'; exit $rc")
        saved.mkdir()
        p = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=600)
        first_rc, first_err = int((tmp_path / "first.rc").read_text()), (tmp_path / "first.err").read_text()
        assert p.returncode == 0, (tmp_path / "second.err").read_text()[-2000:]
        got = snapshot(saved)
        got = {k: v.replace(str(saved), "WORK") if isinstance(v, str) else v for k, v in got.items()}
        got = {k: v.replace(str(work), "WORK") if isinstance(v, str) else v for k, v in got.items()}
    else:  # no mount namespace here: the hook raises ENOSPC at the 2nd write of the export stage
        first = run(corpus, work, env={"REALSYN_FAULT": "export:2:enospc"})
        first_rc, first_err = first.returncode, first.stderr
        p = run(corpus, work)
        assert p.returncode == 0, p.stderr[-2000:]
        got = snapshot(work)
    assert first_rc == 2 and "No space left on device" in first_err, first_err[-2000:]
    assert "Traceback" not in first_err and "realsyn: error: " in first_err, first_err[-2000:]  # one line
    assert_same(got, want)
