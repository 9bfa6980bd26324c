"""The built-in demo corpus: short documents (`corpus.yaml`) around real photos that ship inside
installed packages (scikit-image, scikit-learn, matplotlib), written out as a folder of HTML
files with their images. Nothing is downloaded.
"""

from __future__ import annotations

import html
import importlib.resources
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

__all__ = ["materialize", "load_corpus", "image_bytes", "MIN_SIDE"]

MIN_SIDE = 100  # photos below the paper's size filter are not used

# skimage.data names whose bundled file is named differently.
_SKIMAGE_FILES = {"immunohistochemistry": "ihc.png"}


@dataclass(frozen=True)
class _Image:
    source: str
    alt: str
    caption: str | None
    after: int
    scale: float | None

    @property
    def name(self) -> str:
        stem = self.source.split(":", 1)[1].rsplit(".", 1)[0]
        return stem if self.scale is None else f"{stem}-{round(self.scale * 100)}pct"


def load_corpus() -> list[dict[str, Any]]:
    """The documents of `corpus.yaml`, as plain dictionaries."""
    text = importlib.resources.files(__name__).joinpath("corpus.yaml").read_text("utf-8")
    return yaml.safe_load(text)["documents"]


def _source_file(source: str) -> Path:
    """The installed file behind a `package:name` source (bundled data only, no download)."""
    kind, _, name = source.partition(":")
    if kind == "skimage":
        folder = Path(str(importlib.resources.files("skimage"))) / "data"
        candidates = [_SKIMAGE_FILES.get(name, ""), f"{name}.png", f"{name}.jpg"]
    elif kind == "sklearn":
        folder = Path(str(importlib.resources.files("sklearn"))) / "datasets" / "images"
        candidates = [name]
    elif kind == "matplotlib":
        import matplotlib

        folder, candidates = Path(matplotlib.get_data_path()) / "sample_data", [name]
    else:
        raise ValueError(f"unknown image source {source!r} (expected skimage:, sklearn: or matplotlib:)")
    for c in candidates:
        if c and (folder / c).is_file():
            return folder / c
    raise FileNotFoundError(f"{source}: no bundled file in {folder} (this version may need a download)")


def image_bytes(source: str, scale: float | None = None) -> tuple[bytes, str]:
    """The bytes and file extension of a photo: the installed file unchanged, or with `scale`
    a resized copy re-encoded as JPEG (quality 85; deterministic for one Pillow version)."""
    path = _source_file(source)
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        if scale is None:
            size = im.size
            ext = {"JPEG": "jpg", "PNG": "png"}.get(im.format or "", path.suffix.lstrip("."))
        else:
            size = (round(im.width * scale), round(im.height * scale))
            small = im.convert("RGB").resize(size, Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            small.save(buf, "JPEG", quality=85, optimize=False, progressive=False)
            data, ext = buf.getvalue(), "jpg"
    if min(size) < MIN_SIDE:
        raise ValueError(f"{source}: {size[0]}x{size[1]} is below {MIN_SIDE} px on the shorter side")
    return data, ext


def _html(doc: dict[str, Any], img: _Image, src: str) -> str:
    e = html.escape
    figure = f'<figure><img src="{e(src)}" alt="{e(img.alt)}">'
    if img.caption:
        figure += f"<figcaption>{e(img.caption)}</figcaption>"
    figure += "</figure>"
    body = [f"<p>{e(' '.join(p.split()))}</p>" for p in doc["paragraphs"]]
    body.insert(min(img.after, len(body)), figure)
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">',
        f'<head><meta charset="utf-8"><title>{e(doc["title"])}</title></head>',
        "<body>", "<article>", f"<h1>{e(doc['title'])}</h1>", *body, "</article>", "</body>",
        "</html>", "",
    ])


def materialize(dest: Path) -> Path:
    """Write the demo corpus into `dest` and return it: one `NN-ID.html` per document, with
    `<p>` paragraphs and a `<figure>` whose `<img src="images/NAME.EXT">` points into
    `dest/images/`. The output bytes are the same on every run; existing files of the same
    names are overwritten, other files are left alone."""
    dest = Path(dest)
    (dest / "images").mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    for i, doc in enumerate(load_corpus(), 1):
        spec = doc["image"]
        img = _Image(spec["source"], spec["alt"], spec.get("caption"), int(spec.get("after", 1)),
                     spec.get("scale"))
        if img.name not in written:
            data, ext = image_bytes(img.source, img.scale)
            written[img.name] = f"images/{img.name}.{ext}"
            (dest / written[img.name]).write_bytes(data)
        page = _html(doc, img, written[img.name])
        (dest / f"{i:02d}-{doc['id']}.html").write_bytes(page.encode("utf-8"))
    return dest
