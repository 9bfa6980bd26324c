"""WebDataset shards as img2dataset writes them, readable by webdataset 1.x and 0.2.x (OpenCLIP).

A shard is a plain POSIX (ustar) tar without compression or directories; each sample is the
adjacent members `KEY.jpg` (or `.png` / `.webp` ...), `KEY.txt` and `KEY.json`. KEY is
`shard * 10^ceil(log10(samples_per_shard)) + index`, zero-padded (9 digits for 10,000 per shard):
digits only, so it has no dot and never names a path. Images keep their bytes unless the config
asks for a resize or a re-encode (img2dataset's resize modes), or their format is not kept.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from PIL import Image

from realsyn.config import ExportConfig
from realsyn.models.imaging import decode_rgb
from realsyn.runtime.workspace import atomic_path

PIL_EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}
_KEY = re.compile(r"[0-9A-Za-z_-]+")
_EXT = re.compile(r"[a-z0-9]+(\.[a-z0-9]+)*")
_MTIME = 946_684_800  # 2000-01-01: fixed, so the same samples give the same bytes


def shard_name(shard: int) -> str:
    return f"{shard:05d}"


def sample_key(shard: int, index: int, per_shard: int) -> str:
    """img2dataset's key: shard * 10^ceil(log10(per_shard)) + index, zero-padded."""
    digits = len(str(per_shard - 1)) if per_shard > 1 else 0
    return f"{shard * 10 ** digits + index:0{digits + 5}d}"


@dataclass(frozen=True)
class Encoded:
    data: bytes
    ext: str
    width: int
    height: int
    original_width: int
    original_height: int


def resize(image: Image.Image, size: int, mode: str, only_if_bigger: bool) -> Image.Image | None:
    """img2dataset's resize modes; None when the image is left as it is."""
    w, h = image.size
    side = max(w, h) if mode == "border" else min(w, h)
    if mode == "no" or (only_if_bigger and side <= size):
        return None
    scale = size / side
    out = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS, reducing_gap=3.0)
    if mode == "center_crop":
        left, top = (out.width - size) // 2, (out.height - size) // 2
        return out.crop((left, top, left + size, top + size))
    if mode == "border":
        canvas = Image.new("RGB", (size, size), (255, 255, 255))
        canvas.paste(out, ((size - out.width) // 2, (size - out.height) // 2))
        return canvas
    return out


def encode_image(data: bytes, opts: ExportConfig) -> Encoded:
    """The bytes to write: the original when allowed, else JPEG (resized as configured).
    Raises OSError / ValueError for data that is not a readable image."""
    with Image.open(io.BytesIO(data)) as probe:
        ext, (w, h) = PIL_EXTENSIONS.get(probe.format or "", ""), probe.size
    keep = not opts.reencode and ext in opts.keep_formats and (opts.image_format == "keep" or ext == "jpg")
    if keep and opts.resize_mode == "no":
        return Encoded(data, ext, w, h, w, h)
    image = decode_rgb(data)
    out = resize(image, opts.image_size, opts.resize_mode, opts.resize_only_if_bigger)
    if out is None and keep:
        return Encoded(data, ext, w, h, w, h)
    out = image if out is None else out
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=opts.jpeg_quality)
    return Encoded(buf.getvalue(), "jpg", out.width, out.height, w, h)


def sample_members(key: str, image: Encoded, text: str, meta: dict[str, Any]) -> list[tuple[str, bytes]]:
    """The tar members of one sample, in order: image, txt, json."""
    body = json.dumps(meta, ensure_ascii=False, sort_keys=True).encode()
    return [(f"{key}.{image.ext}", image.data), (f"{key}.txt", text.encode()), (f"{key}.json", body)]


def write_tar(path: Path, samples: Iterable[list[tuple[str, bytes]]]) -> int:
    """Write the samples' members, adjacent and in order, to a tar atomically; returns the
    number of samples. Member names are checked: KEY.EXT, no directory, no dot in KEY."""
    n = 0
    with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for members in samples:
            for name, data in members:
                key, _, ext = name.partition(".")
                if not _KEY.fullmatch(key) or not _EXT.fullmatch(ext):
                    raise ValueError(f"unsafe tar member name {name!r}")
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), _MTIME, 0o644
                tar.addfile(info, io.BytesIO(data))
            n += 1
    return n
