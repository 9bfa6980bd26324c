"""Planning without reading: tasks carry shard descriptions, read their own shards, and the
tables do not depend on how the inputs were cut nor on the number of workers."""

import gzip
import json
import pickle
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from realsyn.config import load_config
from realsyn.extract.stage import _Shards
from realsyn.io.policy import DEFAULT
from realsyn.io.readers import plan, read_documents, read_shard
from realsyn.pipeline import run_stage
from realsyn.runtime.context import Context
from realsyn.runtime.executor import LocalExecutor
from realsyn.runtime.workspace import Workspace

SAMPLES = ["wiki-raycharles/wikipedia_en_ray_charles_2015-06.zim", "mmc4/docs_shard_151_partial.jsonl",
           "warc/iana.warc.gz", "warc-outside", "gutenberg", "gutenberg/30621-h", "epub3/30", "epub3/30/WCAG"]


def _docs(docs) -> list:
    return [(d.doc_id, d.source, d.title, [(i.kind, i.text, i.url, i.data) for i in d.items]) for d in docs]


def test_shards_read_what_the_whole_input_reads(data_dir, tmp_path):
    for rel in SAMPLES:
        shards = list(plan(data_dir / rel, DEFAULT, 16 << 10, 16, tmp_path))
        first: dict = {}  # a URL captured again in a later range (monalisa.warc.gz): the stage keeps the first
        for d in (d for s in shards for d in read_shard(s)):
            first.setdefault(d.doc_id, d)
        assert _docs(first.values()) == _docs(read_documents(data_dir / rel)), rel
        if "warc" in rel:  # record ranges, their images found through the planner's index
            assert len(shards) > 3 and all(Path(s.index).is_file() for s in shards), rel
            for f in {s.path for s in shards}:  # each file's ranges follow each other from byte 0 to the end
                mine = [s for s in shards if s.path == f]
                assert mine[0].start == 0 and mine[-1].stop is None, rel
                assert all(a.stop == b.start for a, b in zip(mine, mine[1:])), rel


def test_a_task_carries_a_description_not_content(data_dir, tmp_path):
    """The pickled task stays the same size whether its shard covers 16 KiB or the whole input."""
    for rel in ("wiki-raycharles/wikipedia_en_ray_charles_2015-06.zim", "mmc4/docs_shard_151_partial.jsonl",
                "gutenberg/30621-h", "epub3/30/WCAG", "warc/iana.warc.gz"):
        sizes = {}
        for kib, docs in ((16, 2), (1 << 20, 100_000)):
            cfg = load_config(None, {"extract.shard_kib": kib, "extract.docs_per_part": docs})
            tasks = list(_Shards([data_dir / rel], tmp_path, cfg))
            sizes[kib] = max(len(pickle.dumps(t)) for t in tasks), len(tasks)
        (small, n_small), (big, n_big) = sizes[16], sizes[1 << 20]
        assert n_big == 1 and n_small > 1, (rel, sizes)
        assert big < 4096 and big <= small + 256, (rel, sizes)  # a description: bytes, whatever it covers


def _mmc4_with_repeats(path: Path) -> list[str]:
    """An MMC4 file of 400 documents where 40 URLs come back later (a re-crawl), some with other text."""
    lines = []
    for k in range(400):
        url = f"http://site/{k % 360}"
        text = f"Document {k % 360} says something about topic {k} in a sentence long enough to keep."
        lines.append(json.dumps({"url": url, "text_list": [text, f"And a second sentence, number {k}, follows here."],
                                 "image_info": []}))
    path.write_text("\n".join(lines) + "\n")
    return lines


def _extract(inputs: list[Path], work: Path, workers: int, **overrides) -> dict:
    overrides = {"extract.sentences.perplexity": False, **overrides}
    ctx = Context(Workspace(work), load_config(None, overrides), LocalExecutor(workers), inputs)
    with ctx.executor:
        return run_stage(ctx, "extract")


def _tables(work: Path) -> dict:
    return {t: pq.read_table(sorted((work / "extract" / t).glob("part-*.parquet"))) for t in ("images", "sentences")}


def test_repeated_documents_across_ranges_are_dropped_as_in_one_pass(tmp_path):
    """Byte ranges of one file each see part of it; a URL repeated in a later range is dropped as
    a whole-file read drops it, with the same counts."""
    src = tmp_path / "repeats.jsonl"
    _mmc4_with_repeats(src)
    whole = _extract([src], tmp_path / "whole", 1, **{"extract.shard_kib": 1 << 20})
    ranged = _extract([src], tmp_path / "ranged", 2, **{"extract.shard_kib": 16, "extract.docs_per_part": 8})
    assert whole["documents"] == ranged["documents"] == 360
    assert whole["documents_skipped"] == ranged["documents_skipped"] == {"repeated_document": 40}
    for name, table in _tables(tmp_path / "whole").items():
        assert table.equals(_tables(tmp_path / "ranged")[name]), name
    assert ranged["parts"] > whole["parts"]


def test_obelics_row_ranges(tmp_path):
    """An OBELICS parquet of several row groups, one larger than a shard: row slices read every row once."""
    rows = [{"texts": [f"Row {k} has a sentence that is long enough to be kept by the filters.", None],
             "images": [None, None], "url": f"http://o/{k % 90}"} for k in range(100)]
    path = tmp_path / "o.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=30)
    shards = list(plan(path, DEFAULT, 1024, 16))
    assert len(shards) > 4
    first = {}  # a repeated URL in a later range is seen by its own shard; extract drops it (test above)
    for d in (d for s in shards for d in read_shard(s)):
        first.setdefault(d.doc_id, d)
    assert _docs(first.values()) == _docs(read_documents(path))
    assert len(first) == 90


@pytest.mark.slow
def test_tables_equal_for_1_2_4_workers_and_any_shard_size(data_dir, tmp_path):
    inputs = [data_dir / rel for rel in ("wiki-raycharles/wikipedia_en_ray_charles_2015-06.zim",
                                         "mmc4/docs_shard_151_partial.jsonl", "warc-outside", "gutenberg", "epub3/30")]
    runs = {(1, 256): _extract(inputs, tmp_path / "a", 1), (2, 16): _extract(inputs, tmp_path / "b", 2, **{"extract.shard_kib": 16}),
            (4, 256): _extract(inputs, tmp_path / "c", 4)}
    ref = _tables(tmp_path / "a")
    for work in ("b", "c"):
        for name, table in _tables(tmp_path / work).items():
            assert table.equals(ref[name]), (work, name)
    counts = [{k: v for k, v in c.items() if k != "parts"} for c in runs.values()]
    assert counts[0] == counts[1] == counts[2]


def test_a_book_after_small_pages_is_still_sliced(data_dir, tmp_path):
    """An HTML folder: small pages are grouped, a long file that follows them gets its own slices."""
    (tmp_path / "a.html").write_text("<html><body><p>A short page about a lighthouse on the coast.</p></body></html>")
    (tmp_path / "b.htm").write_bytes((data_dir / "gutenberg" / "30621-h" / "30621-h.htm").read_bytes())
    shards = list(plan(tmp_path, DEFAULT, 64 << 10, 16))
    assert shards[0].files == ("a.html",) and all(s.files == ("b.htm",) for s in shards[1:])
    assert [s.slice for s in shards[1:]] == [(j, len(shards) - 1) for j in range(len(shards) - 1)] and len(shards) > 3
    assert _docs(d for s in shards for d in read_shard(s)) == _docs(read_documents(tmp_path))


@pytest.mark.parametrize("suffix", [".warc.gz", ".warc"])
def test_a_truncated_warc_in_ranges_reads_what_a_whole_read_reads(data_dir, tmp_path, suffix):
    """A WARC (compressed or plain) cut mid-record: a whole read counts one damaged tail, and its
    ranges give the documents and the skip counts of the whole read (the index pass counts nothing)."""
    from realsyn.io.readers.base import SKIPPED

    data = (data_dir / "warc" / "iana.warc.gz").read_bytes()
    if suffix == ".warc":
        data = gzip.decompress(data)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    before = SKIPPED.copy()
    whole = _docs(read_documents(cut))
    counted = SKIPPED - before
    assert counted["damaged_stream_tail"] == 1
    shards = list(plan(cut, DEFAULT, 16 << 10, 16, tmp_path / "scratch"))
    first: dict = {}
    for d in (d for s in shards for d in read_shard(s)):
        first.setdefault(d.doc_id, d)
    assert len(shards) > 1 and whole and _docs(first.values()) == whole
    assert SKIPPED - before == counted + counted
