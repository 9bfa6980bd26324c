import json
import os

import pyarrow as pa
import pytest

from realsyn.runtime.executor import LocalExecutor
from realsyn.runtime.workspace import Workspace, atomic_path, part_name, write_json, write_table


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "a" / "x.parquet"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists() and os.listdir(target.parent) == []
    write_table(pa.table({"a": [1]}), target)
    assert target.exists()


def test_stage_key_change_wipes_stage(tmp_path):
    ws = Workspace(tmp_path)
    d = ws.begin("s", "k1")
    (d / part_name(0)).write_text("x")
    ws.finish("s", {"n": 1}, 0.1)
    assert ws.is_current("s", "k1") and not ws.is_current("s", "k2")
    d = ws.begin("s", "k1")  # same key: a resume keeps finished parts
    assert (d / part_name(0)).exists()
    d = ws.begin("s", "k2")  # new key: redo from scratch
    assert not (d / part_name(0)).exists() and ws.stage("s")["status"] == "running"


def test_leftovers_of_killed_writers_are_dropped(tmp_path):
    ws = Workspace(tmp_path)
    d = ws.begin("s", "k1")
    (d / "t").mkdir()
    leftover = d / "t" / f"{part_name(3)}.tmp-99999"  # a worker killed while writing part 3
    leftover.write_text("half")
    (d / "t" / part_name(3)).write_text("x")  # the retried part
    ws.finish("s", {"n": 1}, 0.1)
    assert not leftover.exists() and (d / "t" / part_name(3)).exists()


def _square(x: int) -> int:
    return x * x


@pytest.mark.parametrize("workers", [1, 2])
def test_local_executor_runs_every_task(workers):
    with LocalExecutor(workers) as ex:
        assert sorted(ex.map(_square, iter(range(20)))) == [x * x for x in range(20)]


def test_status_shows_tasks_done_of_a_running_stage(tmp_path, monkeypatch):
    """`realsyn status` from another shell, while a stage runs: tasks done / total, items, rate."""
    from run_cli import realsyn

    from realsyn.runtime import progress

    ws = Workspace(tmp_path)
    ws.begin("embed", "some-key")
    monkeypatch.setattr(progress, "SINK_SECONDS", 0.0)
    progress.set_sink(lambda p: write_json({"stage": "embed", **p}, ws.progress_path))
    seen = []

    def task(n: int) -> int:
        if n == 3:  # the third of four tasks: two are done
            seen.append(realsyn("status", str(tmp_path)).stdout)
        return 10 * n

    try:
        with LocalExecutor(1) as ex:
            assert ex.run(task, [1, 2, 3, 4], "embed", "items") == 100
    finally:
        progress.set_sink(None)
    line = next(x for x in seen[0].splitlines() if x.startswith("embed"))
    assert "running" in line and "embed: 2/4 tasks, 30 items" in line and "ETA" in line, line
    assert json.loads(ws.progress_path.read_text())["tasks_done"] == 4
