"""Every workspace table by name: where it lives, how its parts are named, its id column and,
where this module fixes its columns, its schema; plus the embedding readers the stages share.

A parted table is `WORK/<folder>/part-NNNNN.parquet`, and part N of every per-item table holds
the items of extract part N (a document's images and sentences are always in one part). A single
table is `WORK/<folder>.parquet`. Stages, the report, export and train find tables here instead
of spelling paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from realsyn.io.download import STATUS_COLUMNS
from realsyn.runtime.workspace import part_name, write_table

TEXTS = ("text1", "text2", "text3", "syn_text")  # an export sample's texts: R1-R3 and S1
IMAGE_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("doc_id", pa.string()), ("position", pa.int32()),
    ("width", pa.int32()), ("height", pa.int32()), ("format", pa.string()), ("phash", pa.int64()),
    ("nsfw", pa.float32()), ("url", pa.string()), ("alt", pa.string()), ("caption", pa.string()), ("source", pa.string()),
    ("status", pa.string()), ("reason", pa.string()), ("path", pa.string()), ("detail", pa.string()),
])
SENTENCE_SCHEMA = pa.schema([
    ("sentence_id", pa.string()), ("doc_id", pa.string()), ("position", pa.int32()),
    ("text", pa.string()), ("words", pa.int32()), ("entropy", pa.float32()),
    ("language", pa.string()), ("perplexity", pa.float64()), ("text_hash", pa.int64()), ("source", pa.string()),
    ("status", pa.string()), ("reason", pa.string()), ("kind", pa.string()),
])
BLOB_SCHEMA = pa.schema([("image_id", pa.string()), ("data", pa.binary())])
DOWNLOAD_SCHEMA = pa.schema(list(zip(STATUS_COLUMNS, (pa.string(), pa.string(), pa.string(), pa.int32(), pa.string(),
                                                     pa.int32(), pa.int64(), pa.bool_()))))
META_SCHEMA = pa.schema([
    ("key", pa.string()), ("image_id", pa.string()), ("doc_id", pa.string()), ("url", pa.string()),
    ("raw_image_url", pa.string()),
    ("source", pa.string()), *((t, pa.string()) for t in TEXTS), ("generated_caption", pa.string()),
    ("figure_caption", pa.string()), ("alt", pa.string()),
    ("tags", pa.list_(pa.string())), ("sims", pa.list_(pa.float32())), ("cluster", pa.int32()), ("sim", pa.float32()),
    ("width", pa.int32()), ("height", pa.int32()), ("original_width", pa.int32()), ("original_height", pa.int32()),
    ("format", pa.string()), ("status", pa.string()), ("error_message", pa.string()),
])
"""A row of an export shard's parquet (img2dataset's columns plus RealSyn's texts)."""


@dataclass(frozen=True)
class Table:
    folder: str  # under WORK
    id: str | None = None  # the id column
    parted: bool = True
    schema: pa.Schema | None = None

    @property
    def stage(self) -> str:
        return self.folder.split("/")[0]

    def path(self, root: Path, part: int | None = None) -> Path:
        """Part `part` of a parted table, or the file of a single one."""
        if self.parted:
            assert part is not None, f"{self.folder} is parted: name a part"
            return root / self.folder / part_name(part)
        return root / f"{self.folder}.parquet"

    def parts(self, root: Path) -> list[Path]:
        """The finished parts, in order (the single file, if it exists)."""
        if not self.parted:
            return [p for p in [self.path(root)] if p.exists()]
        d = root / self.folder
        return sorted(d.glob("part-*.parquet")) if d.exists() else []

    def read(self, root: Path, part: int | None = None, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self.path(root, part), columns=columns)

    def kept(self, root: Path, part: int, columns: list[str]) -> pa.Table:
        """The rows of one part whose status is `kept`, without the status column."""
        t = self.read(root, part, [*columns, "status"])
        return t.filter(pc.equal(t["status"], "kept")).drop_columns(["status"])

    def write(self, root: Path, table: pa.Table, part: int | None = None) -> None:
        """Write a part (or the single file) atomically."""
        write_table(table, self.path(root, part))


EXTRACT_IMAGES = Table("extract/images", "image_id", schema=IMAGE_SCHEMA)
EXTRACT_SENTENCES = Table("extract/sentences", "sentence_id", schema=SENTENCE_SCHEMA)
EXTRACT_BLOBS = Table("extract/blobs", "image_id", schema=BLOB_SCHEMA)
EXTRACT_DOWNLOADS = Table("extract/downloads", "url", schema=DOWNLOAD_SCHEMA)
EXTRACT = {"images": EXTRACT_IMAGES, "sentences": EXTRACT_SENTENCES}
EMBED = {"images": Table("embed/images", "image_id"), "sentences": Table("embed/sentences", "sentence_id")}
EMBED_DEDUP = {"images": Table("embed/dedup_images", "image_id", parted=False),
               "sentences": Table("embed/dedup_sentences", "sentence_id", parted=False)}
RETRIEVE_PAIRS = Table("retrieve/pairs", "image_id")
RETRIEVE_INDEX = Table("retrieve/index", parted=False)  # the .npy / .arrow files of the sentence index
SYNTH = Table("synth", "image_id")
BALANCE_PAIRS = Table("balance/pairs", "image_id", parted=False)
BALANCE_CLUSTERS = Table("balance/clusters", parted=False)
BALANCE_SCALES = Table("balance", "image_id", parted=False)  # balance/SCALE.parquet, one per named scale
EXPORT_SHARDS = Table("export", "key", parted=False, schema=META_SCHEMA)  # export/SCALE/NNNNN.{tar,parquet}


def embedding_table(ids: list[str], emb: np.ndarray, id_col: str, dtype: str) -> pa.Table:
    """An embed part: ids and fixed-size-list embeddings in `dtype`."""
    values = pa.array(emb.astype(dtype).ravel())
    return pa.table({id_col: pa.array(ids, pa.string()),
                     "embedding": pa.FixedSizeListArray.from_arrays(values, emb.shape[1])})


def read_embeddings(paths: list[Path], id_col: str, dtype: type | None = np.float32) -> tuple[list[str], np.ndarray]:
    """Ids and embeddings of some embed parts, concatenated in order: float32, or with `dtype`
    None as stored (float16 by default: half the memory, the same values once widened)."""
    t = pa.concat_tables([pq.read_table(p) for p in paths])
    col = t["embedding"].combine_chunks()
    emb = col.values.to_numpy(zero_copy_only=False).reshape(len(t), col.type.list_size)
    emb = emb if dtype is None else emb.astype(dtype)
    return t[id_col].to_pylist(), emb
