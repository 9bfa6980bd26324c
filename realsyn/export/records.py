"""Full records of balanced pairs, looked up in the part files of earlier stages.

Every per-image table is split like the extract parts (part N of retrieve/pairs, synth, embed and
extract holds the images of extract part N), and `balance/SCALE.parquet` keeps that part index: a
lookup reads only the parts named, and falls back to scanning every part for ids not found there
(not for image bytes: extract writes blobs part N with images part N, and a full scan is costly).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from realsyn.runtime.workspace import part_name
from realsyn.tables import EXTRACT_BLOBS, EXTRACT_IMAGES, RETRIEVE_PAIRS, SYNTH

Source = tuple[str, tuple[str, ...]]
"""(folder under WORK, columns; those a table lacks are None). A column `NAME>ALIAS` is read as
NAME and recorded as ALIAS (two sources may have a column of the same name)."""
METADATA: dict[str, Source] = {
    "pairs": (RETRIEVE_PAIRS.folder, ("doc_id", "texts", "sims")),
    "synth": (SYNTH.folder, ("caption>generated_caption", "tags", "syn_text")),
    "images": (EXTRACT_IMAGES.folder, ("url", "source", "width", "height", "format", "alt", "caption>figure_caption",
                                       "path")),
}
BLOBS: Source = (EXTRACT_BLOBS.folder, ("data",))


def lookup(folder: Path, ids: Sequence[str], parts: Iterable[int], columns: Sequence[str],
           fallback: bool = True) -> dict[str, dict[str, Any]]:
    """image_id -> row (the wanted columns present) for the ids found in `folder`'s parts: the
    parts named, then (with `fallback`) every part."""
    found: dict[str, dict[str, Any]] = {}

    def scan(paths: Iterable[Path]) -> None:
        for path in paths:
            missing = set(ids) - found.keys()
            if not missing:
                return
            if not path.exists():
                continue
            names = pq.read_schema(path).names
            t = pq.read_table(path, columns=["image_id", *(c for c in columns if c in names)])
            t = t.filter(pc.is_in(t["image_id"], value_set=pa.array(sorted(missing), pa.string())))
            for row in t.to_pylist():
                found.setdefault(row["image_id"], row)

    scan(folder / part_name(p) for p in sorted(set(parts)))
    if fallback:
        scan(sorted(folder.glob("part-*.parquet")))
    return found


def gather(work: Path, rows: pa.Table, sources: dict[str, Source] = METADATA) -> list[dict[str, Any]]:
    """One record per row of `rows` (image_id, part, ...): the row's own fields, then the columns
    of every source (None where a source lacks the image)."""
    ids, parts = rows["image_id"].to_pylist(), rows["part"].to_pylist()
    found = []
    for folder, cols in sources.values():
        names = [tuple(c.split(">")) if ">" in c else (c, c) for c in cols]
        found.append((names, lookup(work / folder, ids, parts, [n for n, _ in names])))
    out = []
    for row in rows.to_pylist():
        record = dict(row)
        for names, table in found:
            hit = table.get(row["image_id"], {})
            record.update({alias: hit.get(name) for name, alias in names})
        out.append(record)
    return out
