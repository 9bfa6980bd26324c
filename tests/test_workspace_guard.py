"""The workspace is the user's data, and every bad config value or workspace state ends in exit 0
or exit 2 with one line (never a traceback): `realsyn` run as a user runs it."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hostile import GOOD_TEXT, _photo, _save
from run_cli import realsyn

FAST = ["--quiet", "--set", "extract.sentences.perplexity=false", "--set", "models.llm=template"]


def one_line_error(done: subprocess.CompletedProcess, *words: str) -> str:
    """Assert exit 2 with exactly one line on stderr (no traceback) containing `words`."""
    err = done.stderr.strip()
    assert done.returncode == 2, f"exit {done.returncode}: {err[-2000:]}"
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith("realsyn: error: "), err[-2000:]
    for w in words:
        assert w in err, err
    return err


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """Three small pages with four distinct photos."""
    root = tmp_path_factory.mktemp("site")
    for i in range(3):
        (root / f"p{i}.jpg").write_bytes(_save(_photo(100 + i, size=(240, 180)), "JPEG", quality=90))
        (root / f"page{i}.html").write_text(f"<html><body><p>{GOOD_TEXT[i]}</p><img src='p{i}.jpg'>"
                                            f"<p>{' '.join(GOOD_TEXT)}</p></body></html>")
    (root / "p3.jpg").write_bytes(_save(_photo(200, size=(200, 200)), "PNG"))
    (root / "page0.html").write_text((root / "page0.html").read_text().replace("</body>", "<img src='p3.jpg'></body>"))
    return root


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and p.name != ".realsyn.lock" and p.name != "manifest.json"}


def test_out_on_a_folder_of_the_user_is_refused(site: Path, tmp_path: Path):
    mine = tmp_path / "mine"
    for sub in ("export", "report"):
        (mine / sub).mkdir(parents=True)
        (mine / sub / "precious.txt").write_text("keep me")
    before = files(mine)
    one_line_error(realsyn("run", str(site), "--out", str(mine), *FAST, check=False), "not a realsyn workspace")
    assert files(mine) == before and sorted(p.name for p in mine.iterdir()) == ["export", "report"]
    (tmp_path / "afile").write_text("x")
    one_line_error(realsyn("run", str(site), "--out", str(tmp_path / "afile"), *FAST, check=False), "is a file")


@pytest.mark.parametrize("damage", ["truncated", "not a manifest"])
def test_damaged_manifest_is_one_line(site: Path, tmp_path: Path, damage: str):
    work = tmp_path / "work"
    realsyn("run", str(site), "--out", str(work), "--until", "extract", *FAST)
    m = work / "manifest.json"
    m.write_text(m.read_text()[:40] if damage == "truncated" else json.dumps([1, 2]))
    for cmd in (["run", str(site), "--out", str(work), *FAST], ["status", str(work)], ["embed", "--out", str(work)]):
        one_line_error(realsyn(*cmd, check=False), "manifest.json is damaged")


@pytest.mark.parametrize("setting,words", [
    ("runtime.seed=-1", ("runtime.seed", ">= 0")),
    ("runtime.seed=99999999999", ("runtime.seed", "<= 2147483647")),
    ("retrieve.k=0", ("retrieve.k", ">= 1")),
    ("retrieve.k=500", ("retrieve.k", "<= 100")),
    ("report.topics=100000", ("report.topics", "<= 1000")),
    ("synth.prompt=PROMPT", ("synth.prompt", "not a prompt")),
    ("synth.prompt=/etc/hostname", ("synth.prompt", "needs string fields")),
    ("extract.max_item_mib=0", ("extract.max_item_mib", ">= 1")),
])
def test_bad_config_values_are_one_line(site: Path, tmp_path: Path, setting: str, words: tuple[str, ...]):
    (tmp_path / "bin.yaml").write_bytes(bytes(range(256)))
    setting = setting.replace("PROMPT", str(tmp_path / "bin.yaml"))
    done = realsyn("run", str(site), "--out", str(tmp_path / "w"), *FAST, "--set", setting, check=False)
    one_line_error(done, *words)


@pytest.mark.slow
def test_k_and_topics_beyond_the_pool(site: Path, tmp_path: Path):
    """k and topics far beyond what the tiny pool holds: the run still finishes (fewer texts per
    image, fewer topics) with exit 0."""
    done = realsyn("run", str(site), "--out", str(tmp_path / "w"), *FAST, "--set", "retrieve.k=100",
                   "--set", "report.topics=1000", "--set", "synth.per_text=first", check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    pairs = pq.read_table(next((tmp_path / "w" / "retrieve" / "pairs").glob("part-*.parquet"))).to_pylist()
    assert pairs and all(1 <= len(p["text_ids"]) < 100 for p in pairs)


def test_non_list_obelics_columns_are_one_line(tmp_path: Path):
    pq.write_table(pa.table({"texts": ["a text"], "images": [None]}), tmp_path / "o.parquet")
    one_line_error(realsyn("run", str(tmp_path / "o.parquet"), "--out", str(tmp_path / "w"), *FAST, check=False),
                   "column 'texts'", "needs a list")


def test_deleted_or_changed_part_is_damaged_and_redone(site: Path, tmp_path: Path):
    work = tmp_path / "work"
    realsyn("run", str(site), "--out", str(work), "--until", "embed", *FAST)
    want = files(work)
    part = sorted((work / "extract" / "images").glob("part-*.parquet"))[0]
    part.unlink()
    status = realsyn("status", str(work)).stdout
    assert "extract   damaged" in status and "extract/images/part-00000.parquet" in status, status
    realsyn("run", str(site), "--out", str(work), "--until", "embed", *FAST)
    assert files(work) == want  # recreated identically; embed (same key) stays done
    assert "damaged" not in realsyn("status", str(work)).stdout
    emb = work / "embed" / "images" / "part-00000.parquet"
    emb.write_bytes(emb.read_bytes()[:-12] + b"\0" * 12)  # same size, other content: the mtime tells
    assert "embed     damaged" in realsyn("status", str(work)).stdout
    realsyn("run", str(site), "--out", str(work), "--until", "embed", *FAST)
    assert files(work) == want


def test_one_run_at_a_time(site: Path, tmp_path: Path):
    work = tmp_path / "work"
    realsyn("run", str(site), "--out", str(work), "--until", "extract", *FAST)
    with (work / ".realsyn.lock").open("a") as held:  # another run holds the workspace
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 4242 on elsewhere\n")
        held.flush()
        one_line_error(realsyn("run", str(site), "--out", str(work), *FAST, check=False), "in use by another realsyn run")
    # released (as when that run is killed): the lock is taken over
    realsyn("run", str(site), "--out", str(work), "--until", "extract", *FAST)


@pytest.mark.slow
def test_two_runs_on_one_workspace(site: Path, tmp_path: Path):
    """Two runs started together: one is refused with one line, the other equals a clean run."""
    clean = tmp_path / "clean"
    realsyn("run", str(site), "--out", str(clean), "--until", "embed", *FAST)
    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "realsyn.cli", "run", str(site), "--out", str(work), "--until", "embed", *FAST]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in outs)
    assert codes == [0, 2], outs
    err = next(e for rc, e in outs if rc == 2).strip()
    assert len(err.splitlines()) == 1 and "in use by another realsyn run" in err, err
    assert files(work) == files(clean)
