"""Hostile inputs, second round: nothing outside the input is read, every read is bounded,
repetition costs nothing, and text with NUL bytes or without a BOM is decoded or counted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import bombs
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from realsyn.config import ExtractConfig
from realsyn.io.policy import ReadPolicy, from_config
from realsyn.io.readers import read_documents
from realsyn.io.readers.base import SKIPPED

SECRET = b"\xff\xd8\xff SECRET BYTES OF A FILE OUTSIDE THE INPUT"
TEXT = "The old lighthouse stands on a rocky island and guides the fishing boats home at night."


def _images(docs) -> list:
    return [i for d in docs for i in d.items if i.kind == "image"]


@pytest.fixture()
def outside(tmp_path: Path) -> Path:
    """A folder beside the input with a secret file and a folder of it."""
    out = tmp_path / "outside"
    (out / "dir").mkdir(parents=True)
    (out / "secret.jpg").write_bytes(SECRET)
    (out / "dir" / "secret.jpg").write_bytes(SECRET)
    return out


def test_obelics_paths_never_leave_the_input(tmp_path: Path, outside: Path):
    data = tmp_path / "in"
    data.mkdir()
    (data / "link.jpg").symlink_to(outside / "secret.jpg")
    (data / "linkdir").symlink_to(outside / "dir")
    (data / "inside.jpg").write_bytes(b"\xff\xd8\xff inside")
    os.mkfifo(data / "fifo.jpg")
    srcs = [str(outside / "secret.jpg"), "../outside/secret.jpg", f"file://{outside / 'secret.jpg'}",
            "..%2Foutside%2Fsecret.jpg", "%2E%2E/outside/secret.jpg", f"file://{str(outside / 'secret.jpg').replace('/', '%2F')}",
            "link.jpg", "linkdir/secret.jpg", "/dev/zero", "inside.jpg", "fifo.jpg"]
    pq.write_table(pa.table({"texts": [[TEXT] + [None] * len(srcs)], "images": [[None] + srcs]}), data / "o.parquet")
    items = _images(read_documents(data / "o.parquet"))
    assert [i.error for i in items] == ["outside_input"] * 9 + [None, "not_a_file"]
    assert all(SECRET not in (i.data or b"") for i in items)
    # a root the user listed is allowed
    allowed = _images(read_documents(data / "o.parquet", from_config(ExtractConfig(images={"roots": [str(outside)]}))))
    assert [i.data for i in allowed[:3]] == [SECRET] * 3 and allowed[6].data == allowed[7].data == SECRET


def test_html_and_epub_folders_never_leave_the_input(tmp_path: Path, outside: Path):
    site = tmp_path / "site"
    (site / "img").mkdir(parents=True)
    (site / "img" / "link.jpg").symlink_to(outside / "secret.jpg")
    (site / "linkdir").symlink_to(outside / "dir")
    (outside / "page.html").write_text(f"<p>{TEXT}</p>")
    (site / "outside.html").symlink_to(outside / "page.html")
    (site / "a.html").write_text(f'<p>{TEXT}</p><img src="img/link.jpg"><img src="linkdir/secret.jpg">'
                                 f'<img src="../../outside/secret.jpg"><img src="%2E%2E/%2E%2E/outside/secret.jpg">'
                                 f'<img src="file://{outside}/secret.jpg">')
    before = SKIPPED["outside_input"]
    docs = list(read_documents(site))
    assert [d.source for d in docs] == ["a.html"]  # the linked page outside is not read
    assert SKIPPED["outside_input"] == before + 2  # the linked page and the linked folder
    assert [i.error for i in _images(docs)] == ["outside_input"] * 4  # file:// is no image at all
    # an unpacked EPUB whose image is a link out of the book
    book = tmp_path / "book"
    (book / "META-INF").mkdir(parents=True)
    (book / "META-INF" / "container.xml").write_text(
        '<container xmlns="urn:oasis:names:tc:opendocument:xmlns:container"><rootfiles>'
        '<rootfile full-path="b.opf"/></rootfiles></container>')
    (book / "b.opf").write_text('<package xmlns="http://www.idpf.org/2007/opf"><manifest><item id="a" href="a.xhtml" '
                                'media-type="application/xhtml+xml"/></manifest><spine><itemref idref="a"/></spine></package>')
    (book / "a.xhtml").write_text(f'<html xmlns="http://www.w3.org/1999/xhtml"><body><p>{TEXT}</p>'
                                  '<img src="s.jpg"/></body></html>')
    (book / "s.jpg").symlink_to(outside / "secret.jpg")
    assert [i.error for i in _images(read_documents(book))] == ["outside_input"]


def test_folder_of_inputs_does_not_follow_links_out(tmp_path: Path, outside: Path):
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    rows = {"texts": [[TEXT, None]], "images": [[None, b"\xff\xd8\xff"]]}
    pq.write_table(pa.table(rows), shelf / "a.parquet")
    pq.write_table(pa.table({"url": ["http://secret/"], **rows}), outside / "s.parquet")
    (shelf / "s.parquet").symlink_to(outside / "s.parquet")
    assert [d.source for d in read_documents(shelf)] == ["row 0"]
    follow = ReadPolicy(follow_symlinks=True)
    assert [d.source for d in read_documents(shelf, follow)] == ["row 0", "http://secret/"]


def test_deep_folder_tree_is_walked_without_recursion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    deep = tmp_path / "site"
    deep.mkdir()
    monkeypatch.chdir(deep)  # build the tree with relative paths (each under PATH_MAX)
    for _ in range(1500):
        os.mkdir("d")
        os.chdir("d")
    Path("p.html").write_text(f"<p>{TEXT}</p>")
    monkeypatch.chdir(tmp_path)
    (deep / "top.html").write_text(f"<p>{TEXT}</p>")
    try:
        docs = list(read_documents(deep))  # the deepest page's path may exceed PATH_MAX: passed over, never a crash
        assert "top.html" in [d.source for d in docs]
    finally:
        subprocess.run(["rm", "-rf", str(deep)], check=True)  # shutil.rmtree (pytest's clean-up) recurses


@pytest.mark.parametrize("fmt", sorted(bombs.BUILDERS))
def test_bombs_stay_bounded(fmt: str, tmp_path: Path, report):
    """Each container's bomb, read and extracted in a process whose address space is capped at
    2 GiB (read naively, each needs 4-40 GB): the image under the cap is read once, the units
    over the cap are refused with their reason, the real photo is kept."""
    build, name = bombs.BUILDERS[fmt]
    path = build(tmp_path / name)
    assert path.stat().st_size < 400_000
    proc = subprocess.run([sys.executable, bombs.__file__, str(path), "2048"], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    report(f"bomb {fmt}: {out}")
    assert out["peak_rss_mib"] < 1024
    if fmt == "mmc4":  # URL-only images; the inflating line is read past
        assert out["reasons"] == {"not_downloaded": 2} and out["skipped"] == {"oversized_line": 1}
        return
    assert out["reasons"]["None"] == 1  # the real photo
    assert out["reasons"]["too_large"] == 1
    assert out["reasons"]["decode_error"] == bombs.REPEAT  # the shared member, once per reference
    assert set(out["skipped"]) <= {"oversized_document", "oversized_row_group"} and out["skipped"]


def test_nul_bytes_and_bomless_utf16_are_decoded(tmp_path: Path):
    site = tmp_path / "site"
    site.mkdir()
    page = f'<html><body><p>{TEXT}</p><img src="x.jpg"></body></html>'
    (site / "x.jpg").write_bytes(b"\xff\xd8\xff")
    (site / "le.html").write_bytes(page.encode("utf-16-le"))
    (site / "be.html").write_bytes(page.encode("utf-16-be"))
    (site / "nul.html").write_bytes(page.encode().replace(b"<p>", b"<p>\0"))
    (site / "u32.html").write_bytes(page.encode("utf-32-le"))
    docs = {d.source: d for d in read_documents(site)}
    assert sorted(docs) == ["be.html", "le.html", "nul.html", "u32.html"]
    for d in docs.values():
        assert [i.text for i in d.items if i.kind == "text"] == [TEXT]
        assert [i.data for i in d.items if i.kind == "image"] == [b"\xff\xd8\xff"]


def test_epub_member_over_the_cap_is_refused_unread(tmp_path: Path):
    book = tmp_path / "b.epub"
    with zipfile.ZipFile(book, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("META-INF/container.xml", '<container xmlns="urn:oasis:names:tc:opendocument:xmlns:container">'
                   '<rootfiles><rootfile full-path="b.opf"/></rootfiles></container>')
        z.writestr("b.opf", '<package xmlns="http://www.idpf.org/2007/opf"><manifest><item id="a" href="a.xhtml" '
                   'media-type="application/xhtml+xml"/></manifest><spine><itemref idref="a"/></spine></package>')
        z.writestr("a.xhtml", f'<html xmlns="http://www.w3.org/1999/xhtml"><body><p>{TEXT}</p><img src="x.jpg"/></body></html>')
        z.writestr("x.jpg", b"\0" * (3 << 20))
    small = ReadPolicy(max_item_bytes=1 << 20)
    assert [i.error for i in _images(read_documents(book, small))] == ["too_large"]


LONG_WORDS = ("electroencephalographically", "counterrevolutionaries", "institutionalisation", "photolithographic",
              "thermoluminescence", "immunohistochemistry", "spectrophotometrically", "incomprehensibilities")


def _peak_run(*args: str) -> tuple[subprocess.CompletedProcess, int]:
    """`realsyn ARGS` in a fresh process (one worker: the stage runs in it); (result, peak RSS MiB)."""
    code = ("import atexit, sys; atexit.register(lambda: sys.stderr.write('\\nPEAK %d\\n' % (int(open("
            "'/proc/self/status').read().split('VmHWM:')[1].split()[0]) // 1024))); "  # ru_maxrss survives exec
            "from realsyn.cli import main; sys.argv = ['realsyn', *sys.argv[1:]]; main()")
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    return done, int(done.stderr.rsplit("PEAK ", 1)[1].split()[0])


@pytest.mark.slow
def test_perplexity_batches_are_bounded_by_memory(tmp_path: Path, report):
    """Sentences of many tokens each (long words, as in long real paragraphs): with a 64 MiB
    model budget the extract worker stays small, and its tables equal those of an unbounded run
    (each row is computed at the same padded shape whatever its batch)."""
    import random

    rng = random.Random(0)
    sentences = [" ".join(["The", *rng.choices(LONG_WORDS, k=70), "were", "observed", "today."]) for _ in range(40)]
    lines = [json.dumps({"url": f"http://x/{d}", "text_list": sentences[d * 10:(d + 1) * 10], "image_info": []})
             for d in range(4)]
    (tmp_path / "long.jsonl").write_text("\n".join(lines) + "\n")
    common = ["extract", str(tmp_path / "long.jsonl"), "--workers", "1", "--quiet",
              "--set", "extract.sentences.max_perplexity=1e9"]
    small, small_peak = _peak_run(*common, "--out", str(tmp_path / "small"), "--set", "models.batch_mib=64")
    assert small.returncode == 0, small.stderr[-3000:]
    big, big_peak = _peak_run(*common, "--out", str(tmp_path / "big"), "--set", "models.batch_mib=1048576")
    assert big.returncode == 0, big.stderr[-3000:]
    report(f"perplexity memory budget: peak RSS {small_peak} MiB at 64 MiB budget, {big_peak} MiB unbounded")
    a, b = (pq.read_table(tmp_path / w / "extract" / "sentences").to_pylist() for w in ("small", "big"))
    assert a == b and sum(r["perplexity"] is not None for r in a) == 40
    assert small_peak < 1800 and big_peak > small_peak + 600  # measured: 1.2 GB against 2.4 GB


@pytest.mark.slow
def test_worker_killed_by_a_signal_is_one_line(tmp_path: Path):
    """A worker that dies (here: SIGKILL at its first write, as the OOM killer would) ends the run
    with exit 2 and one line naming the stage and the parts; a re-run finishes."""
    site = tmp_path / "site"
    site.mkdir()
    for i in range(8):
        (site / f"p{i}.html").write_text(f"<p>{TEXT} Page {i}.</p>")
    args = [sys.executable, "-m", "realsyn.cli", "run", str(site), "--out", str(tmp_path / "w"), "--until", "extract",
            "--workers", "2", "--quiet", "--set", "extract.sentences.perplexity=false", "--set", "extract.docs_per_part=1"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, env={**os.environ, "REALSYN_FAULT": "extract:1"})
    err = done.stderr.strip()
    assert done.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err[-3000:]
    assert "extract: a worker process died while processing part" in err and "likely out of memory" in err, err
    again = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]


def test_full_disk_under_a_memory_mapped_write_is_enospc(tmp_path: Path):
    """The index files are written with plain writes (no memory map): a full disk is an ordinary
    OSError (ENOSPC, or numpy's check of the free space; one line in the CLI), never SIGBUS, and
    no partial file is left."""
    import shutil

    if not shutil.which("unshare"):
        pytest.skip("no unshare")
    disk = tmp_path / "disk"
    disk.mkdir()
    code = ("import numpy as np, pathlib, sys; from realsyn.buckets import save\n"
            "x = np.ones((100_000, 64), np.float32)\n"
            "try:\n    save(x, pathlib.Path(sys.argv[1]) / 'v.npy')\n"
            "except OSError as e:\n    print('FULL' if e.errno == 28 or 'free space' in str(e) else e, sorted(p.name for p in pathlib.Path(sys.argv[1]).iterdir())); sys.exit(3)\n")
    script = f"mount -t tmpfs -o size=1M tmpfs '{disk}' || exit 97; '{sys.executable}' -c \"$0\" '{disk}'"
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script, code], capture_output=True, text=True, timeout=120)
    if done.returncode == 97:
        pytest.skip("no tmpfs in a user namespace here")
    assert done.returncode == 3 and "FULL []" in done.stdout, (done.returncode, done.stdout, done.stderr[-2000:])


def _all_values(work: Path) -> list[bytes]:
    """Every file's bytes, every parquet cell and every tar member of a workspace, as bytes."""
    import tarfile

    out: list[bytes] = []
    for p in sorted(work.rglob("*")):
        if not p.is_file():
            continue
        out.append(p.read_bytes())
        if p.suffix == ".parquet":
            for row in pq.read_table(p).to_pylist():
                out += [v if isinstance(v, bytes) else str(v).encode() for v in row.values()]
        elif p.suffix == ".tar":
            with tarfile.open(p) as tar:
                out += [tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()]
    return out


@pytest.mark.slow
def test_run_never_exports_a_file_outside_the_input(tmp_path: Path, outside: Path):
    """`realsyn run` to the export on inputs whose images point outside them, in every way: exit 0,
    every such image `outside_input`, and neither the outside file's bytes nor its hash anywhere in
    the workspace (tables, blobs, shards)."""
    import hashlib

    from hostile import _photo, _save
    from run_cli import realsyn

    secret = _save(_photo(777, size=(300, 200)), "JPEG", quality=90)  # a real image: it would pass every filter
    (outside / "secret.jpg").write_bytes(secret)
    (outside / "dir" / "secret.jpg").write_bytes(secret)
    data = tmp_path / "in"
    (data / "site").mkdir(parents=True)
    (data / "site" / "link.jpg").symlink_to(outside / "secret.jpg")
    (data / "site" / "ok.jpg").write_bytes(_save(_photo(778, size=(300, 200)), "JPEG", quality=90))
    (data / "site" / "a.html").write_text(f'<p>{TEXT}</p><img src="ok.jpg"><img src="link.jpg">'
                                          '<img src="../../outside/secret.jpg">')
    srcs = [str(outside / "secret.jpg"), "../outside/secret.jpg", f"file://{outside / 'secret.jpg'}",
            "..%2Foutside%2Fsecret.jpg", str(data / "site" / "link.jpg")]
    pq.write_table(pa.table({"texts": [[TEXT] + [None] * len(srcs)], "images": [[None] + srcs]}), data / "o.parquet")
    work = tmp_path / "work"
    realsyn("run", str(data / "site"), str(data / "o.parquet"), "--out", str(work), "--until", "export", "--quiet",
            "--set", "extract.sentences.perplexity=false", "--set", "models.llm=template")
    images = pq.read_table(work / "extract" / "images").to_pylist()
    assert sorted(r["reason"] or "kept" for r in images) == ["kept"] + ["outside_input"] * 7
    digest = hashlib.sha256(secret).hexdigest()[:32].encode()
    for value in _all_values(work):
        assert secret not in value and digest not in value
