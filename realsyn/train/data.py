"""Reading the exported WebDataset shards for training: a seeded, resumable stream of samples.

The stream is the concatenation of epochs. Epoch `e` reads the shards in an order shuffled with
seed (seed, e) and passes the samples through webdataset's buffer shuffle seeded the same way, so
the order depends only on the data and the seed. A position in the stream (samples consumed) is
all a checkpoint needs to resume: the epoch is replayed and its first samples skipped unread
(tar members are not decoded). The text of a sample is drawn with a generator seeded by
(seed, epoch, shard, key), independent of the batch it lands in.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from realsyn.io.readers import InputError
from realsyn.train.config import TEXT_FIELDS

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tiff")


@dataclass(frozen=True)
class Sample:
    """One exported sample: its stream position, image bytes and metadata (KEY.json)."""

    position: int
    key: str
    image: bytes
    meta: dict[str, Any]


def shard_paths(folder: Path) -> list[Path]:
    """The tar shards of an export scale folder (WORK/export/SCALE), sorted."""
    if not folder.is_dir():
        raise InputError(f"no export folder at {folder} (expected WORK/export/SCALE)")
    shards = sorted(folder.glob("*.tar"))
    if not shards:
        raise InputError(f"no .tar shards in {folder}")
    return shards


def sample_count(folder: Path) -> int:
    """Samples in the scale, from sizes.json (OpenCLIP's file), else by reading the tars."""
    sizes = folder / "sizes.json"
    if sizes.is_file():
        return int(sum(json.loads(sizes.read_text()).values()))
    return sum(1 for _ in read_shards(shard_paths(folder)))


def draw_text(meta: Mapping[str, Any], probs: Mapping[str, float], rng: random.Random) -> str:
    """One of the sample's non-empty texts, drawn with `probs` renormalised over them; when all
    of those have probability 0, the first non-empty text (text1 before syn_text)."""
    present = [t for t in TEXT_FIELDS if str(meta.get(t) or "").strip()]
    weights = [probs.get(t, 0.0) for t in present]
    if not present:
        return str(meta.get("figure_caption") or meta.get("generated_caption") or meta.get("caption") or "")
    if sum(weights) <= 0:
        return str(meta[present[0]])
    return str(meta[rng.choices(present, weights)[0]])


def read_shards(shards: Sequence[Path], buffer: int = 0, seed: str = "") -> Iterator[dict[str, Any]]:
    """The raw samples (member bytes by extension) of the shards, in order or buffer-shuffled."""
    import webdataset as wds

    ds = wds.WebDataset([str(p) for p in shards], shardshuffle=False, empty_check=False)
    if buffer > 1:
        ds = ds.shuffle(buffer, initial=buffer, rng=random.Random(seed))
    return iter(ds)


def image_bytes(raw: Mapping[str, Any]) -> bytes | None:
    """The image member of a raw sample, if any."""
    return next((raw[e] for e in IMAGE_EXTS if e in raw), None)


def epoch_order(shards: Sequence[Path], seed: int, epoch: int) -> list[Path]:
    """The shards in epoch `epoch`'s seeded order."""
    order = list(shards)
    random.Random(f"shards-{seed}-{epoch}").shuffle(order)
    return order


def stream(folder: Path, seed: int, buffer: int, start: int = 0) -> Iterator[tuple[int, Sample]]:
    """(epoch, sample) from stream position `start` on, forever (one epoch after another)."""
    shards, position = shard_paths(folder), 0
    for epoch in range(1 << 62):
        produced = False
        for raw in read_shards(epoch_order(shards, seed, epoch), buffer, f"samples-{seed}-{epoch}"):
            produced = True
            position += 1
            image = image_bytes(raw)
            if position <= start or image is None or "json" not in raw:
                continue
            key = f"{Path(str(raw.get('__url__', ''))).stem}/{raw['__key__']}"
            yield epoch, Sample(position, key, image, json.loads(raw["json"]))
        if not produced:
            raise InputError(f"the shards in {folder} hold no samples")


def batches(folder: Path, batch_size: int, probs: Mapping[str, float], seed: int, buffer: int,
            start: int = 0) -> Iterator[tuple[int, list[bytes], list[str]]]:
    """(stream position after the batch, images, one drawn text per image), forever."""
    images: list[bytes] = []
    texts: list[str] = []
    for epoch, s in stream(folder, seed, buffer, start):
        images.append(s.image)
        texts.append(draw_text(s.meta, probs, random.Random(f"text-{seed}-{epoch}-{s.key}")))
        if len(images) == batch_size:
            yield s.position, images, texts
            images, texts = [], []
