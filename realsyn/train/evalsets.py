"""Local evaluation data: labelled image folders and image-caption sets.

- Image folder: one sub-folder per class (`airplane/0000.jpg`); class index = sorted order, label
  text = folder name with `_` as spaces. A benchmark root holds `train/` and `test/` folders.
- Caption set: a `.jsonl` file, one image per line: `{"image": "path", "captions": [...]}` (or
  `"caption": "..."`), paths relative to the file; or an export folder (WORK/export/SCALE), whose
  samples' non-empty text1..3 and syn_text are the captions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterator

import numpy as np

from realsyn.io.readers import InputError
from realsyn.train.config import TEXT_FIELDS
from realsyn.train.data import image_bytes, read_shards, shard_paths

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Labelled:
    images: list[bytes]
    labels: np.ndarray
    classes: list[str]


@dataclass(frozen=True)
class Captioned:
    images: list[bytes]
    captions: list[str]
    caption_image: np.ndarray  # index of the image each caption belongs to


def split_folder(root: Path, split: str) -> Path:
    """`root/split` when it exists (a benchmark root), else `root` itself (class folders)."""
    return root / split if (root / split).is_dir() else root


def load_folder(folder: Path, limit: int | None = None) -> Labelled:
    """The images of `folder/<class>/`, the first `limit` per class in sorted file order."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    if not classes:
        raise InputError(f"no class folders in {folder} (expected {folder}/<class>/<image>)")
    images, labels = [], []
    for i, name in enumerate(classes):
        files = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
        images += [p.read_bytes() for p in files]
        labels += [i] * len(files)
    if not images:
        raise InputError(f"no images in the class folders of {folder}")
    return Labelled(images, np.array(labels), [c.replace("_", " ") for c in classes])


def _jsonl(path: Path) -> Iterator[tuple[bytes, list[str]]]:
    for n, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            texts = row.get("captions") or [row["caption"]]
            yield (path.parent / row["image"]).read_bytes(), [str(t) for t in texts]
        except (ValueError, KeyError, TypeError, OSError) as exc:
            raise InputError(f"{path}:{n}: needs an existing 'image' and 'captions' or 'caption' ({exc})") from None


def _export(folder: Path) -> Iterator[tuple[bytes, list[str]]]:
    for raw in read_shards(shard_paths(folder)):
        image, meta = image_bytes(raw), json.loads(raw.get("json") or b"{}")
        texts = [str(meta[t]) for t in TEXT_FIELDS if str(meta.get(t) or "").strip()]
        if image is not None and texts:
            yield image, texts


def _collect(pairs: Iterator[tuple[bytes, list[str]]], limit: int | None) -> Captioned:
    images: list[bytes] = []
    captions: list[str] = []
    owner: list[int] = []
    for image, texts in islice(pairs, limit):
        images.append(image)
        captions += texts
        owner += [len(images) - 1] * len(texts)
    return Captioned(images, captions, np.array(owner, dtype=np.int64))


def load_captions(path: Path, limit: int | None = None) -> Captioned:
    """An image-caption set from a .jsonl file or an export folder (at most `limit` images)."""
    if path.is_file() and path.suffix == ".jsonl":
        data = _collect(_jsonl(path), limit)
    elif path.is_dir():
        data = _collect(_export(path), limit)
    else:
        raise InputError(f"retrieval data must be a .jsonl file or an export folder, got {path}")
    if not data.images:
        raise InputError(f"no image-caption pairs in {path}")
    return data
