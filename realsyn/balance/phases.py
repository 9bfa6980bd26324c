"""balance's steps as executor tasks over the retrieve parts (part N of retrieve/pairs, synth and
embed/images hold the images of extract part N), intermediates under a work folder:

1. scan (a task per part): each pair's top-1 cosine and why it cannot be drawn (no synthetic
   text, no embedding): `scan/sim-N.npy`, `scan/code-N.npy`;
2. the band bounds, exact quantiles from two histogram passes over the scans (`sampling.ranked`),
   and each part's count of pairs in the band;
3. a seeded sample of the band's images (tasks per group of parts, `sample/`) fits the
   `CentroidIndex` in one task (`buckets.fit`);
4. assign (a task per group): each band pair's cluster (`labels-N.npy`) and, for `cap`, the
   pairs bucketed by cluster with their draw (`buckets.write_sorted`);
5. cap (a task per block of clusters): per cluster and scale, the last pair kept (the draw and
   pool row of the pair at rank N - 1), `cap/b-T.npy`.

A pair's draw is the seeded uniform number of its place among the band's pairs: the generator is
advanced to a part's first band row (`draws_from`), so the numbers are those of one global draw.
Memory: a task holds its parts or the k-means sample; the driver holds the centroids and
per-cluster counts.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from realsyn.balance.sampling import IN_BAND, band_position
from realsyn.buckets import gather, load, open_index, sample_piece, save, write_sorted
from realsyn.tables import EMBED, RETRIEVE_PAIRS, SYNTH, read_embeddings

OK, NO_SYNTH, NO_EMBEDDING = 0, 1, 2  # scan codes (balance.stage.REASONS indexes)
PAIRS_PER_TASK = 1_000_000  # band pairs per sample / assign task
BLOCK_PAIRS = 4_000_000  # band pairs per cap task (20 bytes each)


def draws_from(seed: int, first: int, count: int) -> np.ndarray:
    """Numbers `first` .. `first + count` of `np.random.default_rng(seed).random(n)`."""
    bits = np.random.PCG64(seed)
    bits.advance(first)
    return np.random.Generator(bits).random(count)


def text_pairs(work: Path, part: int) -> tuple[pa.Array, np.ndarray]:
    """image_id and top-1 cosine (float32) of a part's pairs with at least one text."""
    t = pq.read_table(RETRIEVE_PAIRS.path(work, part), columns=["image_id", "sims"])
    t = t.filter(pc.greater(pc.list_value_length(t["sims"]), 0))
    sim = pc.cast(pc.list_element(t["sims"], 0), pa.float32()).to_numpy(zero_copy_only=False)
    return t["image_id"].combine_chunks(), np.asarray(sim, np.float32)


@dataclass(frozen=True)
class Scan:
    part: int
    work: Path
    folder: Path
    synth: bool  # whether synth output exists (else every pair has a text)


def scan(task: Scan) -> int:
    """Step 1 for one part: pairs with at least one text, their cosine and scan code."""
    ids, sim = text_pairs(task.work, task.part)
    text = np.ones(len(ids), bool)
    if task.synth:
        path = SYNTH.path(task.work, task.part)
        good = pa.array([], pa.string())
        if path.exists():
            s = pq.read_table(path, columns=["image_id", "syn_text"])
            ok = pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(s["syn_text"])), 0).fill_null(False)
            good = s["image_id"].filter(ok).combine_chunks()
        text = pc.is_in(ids, value_set=good).to_numpy(zero_copy_only=False)
    emb = EMBED["images"].path(task.work, task.part)
    have = pq.read_table(emb, columns=["image_id"])["image_id"].combine_chunks() if emb.exists() else pa.array([], pa.string())
    embedded = pc.is_in(ids, value_set=have).to_numpy(zero_copy_only=False)
    save(sim, task.folder / "scan" / f"sim-{task.part:05d}.npy")
    save(np.select([~text, ~embedded], [NO_SYNTH, NO_EMBEDDING], OK).astype(np.int8),
         task.folder / "scan" / f"code-{task.part:05d}.npy")  # last: marks the part done
    return len(sim)


def scanned(folder: Path, part: int) -> tuple[np.ndarray, np.ndarray]:
    """(cosine, scan code) of a part's pairs with a text."""
    return load(folder / "scan" / f"sim-{part:05d}.npy", mmap=False), load(folder / "scan" / f"code-{part:05d}.npy", mmap=False)


def in_band(sim: np.ndarray, code: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    return (code == OK) & (band_position(sim, *bounds) == IN_BAND)


def band_embeddings(work: Path, folder: Path, part: int, bounds: tuple[float, float]) -> np.ndarray:
    """Image embeddings (float32) of a part's band pairs, in pair order."""
    sim, code = scanned(folder, part)
    wanted = text_pairs(work, part)[0].filter(pa.array(in_band(sim, code, bounds)))
    have, emb = read_embeddings([EMBED["images"].path(work, part)], "image_id")
    return emb[pc.index_in(wanted, value_set=pa.array(have, pa.string())).to_numpy(zero_copy_only=False)]


@dataclass(frozen=True)
class Sample:
    index: int
    parts: tuple[int, ...]
    first: tuple[int, ...]  # each part's first band row, and the end
    rows: np.ndarray  # wanted band rows (sorted) within these parts
    work: Path
    folder: Path
    bounds: tuple[float, float]


def sample(task: Sample) -> int:
    """Step 3: the embeddings of the wanted band rows, in row order, as the task's sample piece
    for `buckets.fit`; returns their number."""
    got = []
    for k, part in enumerate(task.parts):
        lo, hi = task.first[k], task.first[k + 1]
        rows = task.rows[(task.rows >= lo) & (task.rows < hi)] - lo
        if len(rows):
            got.append(band_embeddings(task.work, task.folder, part, task.bounds)[rows])
    save(np.concatenate(got) if got else np.zeros((0, 0), np.float32), sample_piece(task.folder, task.index))
    return sum(len(g) for g in got)


@dataclass(frozen=True)
class Assign:
    index: int
    parts: tuple[int, ...]
    first: tuple[int, ...]  # each part's first band row, and the end
    work: Path
    folder: Path
    bounds: tuple[float, float]
    seed: int
    ef: int
    bucketed: bool  # write the pairs bucketed by cluster (for `cap`)
    threads: int


def labels_path(folder: Path, part: int) -> Path:
    return folder / f"labels-{part:05d}.npy"


def bucket_prefix(folder: Path, j: int) -> Path:
    return folder / "assign" / f"a-{j:05d}"


def assign(task: Assign) -> int:
    """Step 4 for one group of parts."""
    index = open_index(task.folder, task.ef)
    labels = []
    for part in task.parts:
        emb = band_embeddings(task.work, task.folder, part, task.bounds)
        labels.append(index.nearest(emb, 1, task.threads).idx[:, 0].astype(np.int32) if len(emb) else np.zeros(0, np.int32))
    lab = np.concatenate(labels)
    if task.bucketed:
        first, count = task.first[0], task.first[-1] - task.first[0]
        write_sorted(bucket_prefix(task.folder, task.index), draws_from(task.seed, first, count),
                     np.arange(first, first + count, dtype=np.int64), lab, load(task.folder / "blocks.npy", mmap=False))
    for part, lab_part in zip(task.parts, labels):  # last: the labels mark the group done
        save(lab_part, labels_path(task.folder, part))
    return len(lab)


@dataclass(frozen=True)
class Cap:
    index: int  # block
    sources: int  # assign groups
    folder: Path
    caps: tuple[int, ...]


def last_kept(u: np.ndarray, rows: np.ndarray, offsets: np.ndarray, cap: int) -> np.ndarray:
    """Per cluster (`offsets`), the (draw, row) of the pair at rank cap - 1 when pairs are
    ordered by (draw, row); (inf, 0) where the cluster has at most `cap` pairs (all kept)."""
    out = np.zeros((len(offsets) - 1, 2))
    out[:, 0] = np.inf
    for c in np.flatnonzero(np.diff(offsets) > cap):
        a, e = offsets[c], offsets[c + 1]
        order = np.lexsort((rows[a:e], u[a:e]))
        out[c] = u[a + order[cap - 1]], rows[a + order[cap - 1]]
    return out


def cap(task: Cap) -> int:
    """Step 5 for one block of clusters: `cap/b-T.npy`, (scales, clusters, 2)."""
    u, rows, offsets, _ = gather([bucket_prefix(task.folder, j) for j in range(task.sources)],
                                 load(task.folder / "blocks.npy", mmap=False), task.index)
    save(np.stack([last_kept(u, rows, offsets, n) for n in task.caps]), task.folder / "cap" / f"b-{task.index:05d}.npy")
    return len(rows)


def keep_masks(u: np.ndarray, rows: np.ndarray, labels: np.ndarray, sizes: np.ndarray, caps: dict[str, int],
               method: str, last: np.ndarray | None) -> dict[str, np.ndarray]:
    """Per scale, which band pairs (draws `u`, band rows, clusters) it keeps: `cap` against the
    last pair kept of each cluster (`last`: scales x clusters x 2), `metaclip` by the sizes."""
    if not len(u):
        return {name: np.zeros(0, bool) for name in caps}
    if method == "metaclip":
        return {name: u < np.minimum(1.0, n / np.maximum(sizes[labels], 1)) for name, n in caps.items()}
    assert last is not None
    out = {}
    for s, name in enumerate(caps):
        tu, tr = last[s, labels, 0], last[s, labels, 1]
        out[name] = (u < tu) | ((u == tu) & (rows <= tr))
    return out


def band_starts(folder: Path, parts: list[int], bounds: tuple[float, float]) -> np.ndarray:
    """Each part's first band row, and the total (parts + 1)."""
    counts = [int(in_band(*scanned(folder, i), bounds).sum()) for i in parts]
    return np.r_[0, np.cumsum(counts)].astype(np.int64)


def eligible_sims(folder: Path, parts: list[int]) -> Iterator[np.ndarray]:
    for i in parts:
        sim, code = scanned(folder, i)
        yield sim[code == OK]
