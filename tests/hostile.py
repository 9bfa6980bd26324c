"""A hostile-input corpus, generated (nothing is downloaded, nothing is stored in the repository).

`build(dest)` writes the same set of good and bad images, and of awkward texts, in every
supported format: a folder of HTML pages, an MMC4 `.jsonl` and a truncated `.jsonl.gz`, an
OBELICS `.parquet`, a `.warc.gz`, an `.epub` and a `.zim` with a damaged cluster. Every image is
labelled (HTML `alt`, OBELICS `alt_text`) as `FORMAT:KIND`, and `EXPECTED[KIND]` is the reason the
extract stage must give it (None = kept). It returns the input paths.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

# kind -> reason the extract stage gives (None: kept)
EXPECTED: dict[str, str | None] = {
    "jpeg": None, "png": None, "gif": None, "webp": None,
    "cmyk": None, "png16": None, "palette": None, "animated_gif": None, "animated_webp": None,
    "exif_rotated": None,
    "truncated_jpeg": "decode_error", "truncated_png": "decode_error", "truncated_gif": "decode_error",
    "truncated_webp": "decode_error", "corrupt_jpeg": "decode_error", "corrupt_png": "decode_error",
    "png_bomb": "decompression_bomb", "zero_bytes": "empty", "svg": "unsupported_format",
    "html_as_image": "unsupported_format", "too_small": "too_small", "bad_aspect": "bad_aspect",
}
#: Kinds only a file-based format can hold, with their reason.
FILE_ONLY = {"missing_file": "missing", "escaping_path": "outside_input"}
EXIF_STORED = (240, 160)  # stored size of the EXIF-rotated photo (orientation 6: shown as 160 x 240)

GOOD_TEXT = [
    "The old lighthouse stands on a rocky island and guides the fishing boats home at night.",
    "A red tram crosses the bridge while people walk along the river in the evening light.",
    "The baker places fresh loaves of bread on the wooden shelves of the small shop.",
]
# windows-1252 text (no charset declared) and a page that mixes UTF-8 with stray Latin-1 bytes
CP1252_TEXT = "The café owner serves crème brûlée and naïve visitors love the façade of the building."
MIXED = ("Ein Bäcker in München verkauft frische Brezeln an die Gäste des Marktes.".encode()
         + b" The caf\xe9 next door sells coffee to the tourists who visit the old town square.")


def _photo(seed: int, size=(200, 150), mode="RGB") -> Image.Image:
    """A smooth random picture: distinct seeds give perceptually different images."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8), "RGB")
    return small.resize(size, Image.Resampling.BICUBIC).convert(mode)


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_bomb(side: int = 10_000) -> bytes:
    """A real PNG of side x side 1-bit pixels (100 M pixels, ~10 kB compressed)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + side // 8)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def images(seed: int) -> dict[str, bytes]:
    """Every image kind, as bytes; good ones are distinct for each `seed`."""
    s = seed * 100
    jpeg = _save(_photo(s), "JPEG", quality=90)
    png = _save(_photo(s + 1), "PNG")
    gif = _save(_photo(s + 2).convert("P", palette=Image.Palette.ADAPTIVE), "GIF")
    webp = _save(_photo(s + 3), "WEBP", quality=80)
    frames = [_photo(s + 4 + k) for k in range(3)]
    webp_frames = [_photo(s + 20 + k) for k in range(3)]
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    a16 = (np.asarray(_photo(s + 9).convert("L"), dtype=np.uint16) * 257)
    corrupt_png = bytearray(_save(_photo(s + 10), "PNG"))
    corrupt_png[len(corrupt_png) // 2: len(corrupt_png) // 2 + 64] = b"\xa5" * 64  # breaks IDAT's CRC / zlib
    corrupt_jpeg = bytearray(_save(_photo(s + 11), "JPEG", quality=90))
    sof = corrupt_jpeg.find(b"\xff\xc0")
    corrupt_jpeg[sof + 9] = 7  # SOF0 claims 7 components: the decoder gives up
    return {
        "jpeg": jpeg, "png": png, "gif": gif, "webp": webp,
        "cmyk": _save(_photo(s + 5, mode="CMYK"), "JPEG", quality=90),
        "png16": _save(Image.fromarray(a16), "PNG"),
        "palette": _save(_photo(s + 6).convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG"),
        "animated_gif": _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0),
        "animated_webp": _save(webp_frames[0], "WEBP", save_all=True, append_images=webp_frames[1:], duration=100),
        "exif_rotated": _save(_photo(s + 7, size=EXIF_STORED), "JPEG", quality=90, exif=exif),
        "truncated_jpeg": jpeg[: len(jpeg) // 2],
        "truncated_png": png[: len(png) // 2],
        "truncated_gif": gif[: len(gif) // 2],
        "truncated_webp": webp[: len(webp) // 2],
        "corrupt_jpeg": bytes(corrupt_jpeg),
        "corrupt_png": bytes(corrupt_png),
        "png_bomb": _png_bomb(),
        "zero_bytes": b"",
        "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="400" height="300"><rect width="400" height="300"/></svg>',
        "html_as_image": b"<!DOCTYPE html><html><body><h1>404 Not Found</h1></body></html>",
        "too_small": _save(_photo(s + 12, size=(80, 60)), "PNG"),
        "bad_aspect": _save(_photo(s + 13, size=(400, 100)), "PNG"),
    }


_EXT = {"svg": "svg", "zero_bytes": "jpg", "html_as_image": "jpg"}


def _ext(kind: str, data: bytes) -> str:
    if kind in _EXT:
        return _EXT[kind]
    for magic, ext in ((b"\xff\xd8", "jpg"), (b"\x89PNG", "png"), (b"GIF8", "gif"), (b"RIFF", "webp")):
        if data.startswith(magic):
            return ext
    return "bin"


def _paragraphs(fmt: str) -> str:
    return "".join(f"<p>{t} ({fmt} edition, part {k}).</p>" for k, t in enumerate(GOOD_TEXT))


def _page(fmt: str, imgs: dict[str, str], extra_imgs: dict[str, str] | None = None) -> bytes:
    tags = "".join(f'<figure><img src="{src}" alt="{fmt}:{kind}"></figure>'
                   for kind, src in {**imgs, **(extra_imgs or {})}.items())
    return (f'<html><head><meta charset="utf-8"><title>{fmt} images</title></head><body>'
            f"{_paragraphs(fmt)}{tags}</body></html>").encode()


def _text_pages(fmt: str, big: bool = False) -> dict[str, bytes]:
    """Pages of awkward text: windows-1252 without a charset, mixed encodings, Shift-JIS
    declared, deep nesting, no images, no text, empty; and (with `big`) a 10 MB paragraph."""
    pages = {
        "cp1252.html": f"<html><body><p>{CP1252_TEXT} ({fmt})</p></body></html>".encode("cp1252"),
        "mixed.html": b"<html><body><p>" + MIXED + f" ({fmt})".encode() + b"</p></body></html>",
        "sjis.html": ('<html><head><meta charset="shift_jis"></head><body><p>東京の古い駅の近くで、'
                      f"子供たちが公園の池で赤い魚を見ています。 ({fmt})</p></body></html>").encode("shift_jis"),
        "nested.html": (b"<html><body>" + b"<div>" * 5000 + f"<p>A deeply nested paragraph about the harbour cranes ({fmt}).</p>".encode()
                        + b"</div>" * 5000 + b"</body></html>"),
        "no-images.html": f"<html><body><p>Only words here, the farmer drives his tractor to the field ({fmt}).</p></body></html>".encode(),
        "no-text.html": b"<html><body></body></html>",
        "empty.html": b"",
    }
    if big:  # 10 MB in one paragraph, no sentence punctuation: ~100 over-long "sentences"
        words = " ".join(f"word{k % 997}" for k in range(1_300_000))[:10_000_000]
        pages["huge.html"] = f"<html><body><p>{words}</p></body></html>".encode()
    return pages


def build_htmldir(dest: Path, imgs: dict[str, bytes]) -> Path:
    root = dest / "htmldir"
    (root / "img").mkdir(parents=True)
    srcs = {}
    for kind, data in imgs.items():
        srcs[kind] = f"img/{kind}.{_ext(kind, data)}"
        (root / srcs[kind]).write_bytes(data)
    extra = {"missing_file": "img/gone.png", "escaping_path": "../../../../../../etc/hostname"}
    (root / "images.html").write_bytes(_page("htmldir", srcs, extra))
    for name, page in _text_pages("htmldir", big=True).items():
        (root / name).write_bytes(page)
    return root


def build_obelics(dest: Path, imgs: dict[str, bytes]) -> Path:
    path = dest / "obelics.parquet"
    kinds = list(imgs) + ["missing_file", "dev_zero"]
    texts = [None] * len(kinds)
    values = [imgs[k] for k in imgs] + ["gone/nowhere.png", "/dev/zero"]
    meta = [{"alt_text": f"obelics:{k}"} for k in kinds]
    rows = {
        "url": ["https://example.org/images", "https://example.org/text", "https://example.org/empty"],
        "texts": [[GOOD_TEXT[0] + " (obelics)"] + texts, [GOOD_TEXT[1] + " (obelics)", CP1252_TEXT], []],
        "images": [[None] + values, [None, None], []],
        "metadata": [json.dumps([None] + meta), None, None],
    }
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # the HF datasets Image layout
    schema = pa.schema([("url", pa.string()), ("texts", pa.list_(pa.string())),
                        ("images", pa.list_(image)), ("metadata", pa.string())])
    rows["images"] = [[None if v is None else {"bytes": v, "path": None} if isinstance(v, bytes) else {"bytes": None, "path": v}
                       for v in r] for r in rows["images"]]
    pq.write_table(pa.table(rows, schema=schema), path)
    return path


def build_mmc4(dest: Path) -> tuple[Path, Path]:
    """Plain lines (good, malformed JSON, non-UTF-8, not a document, URL-only images) and a
    gzip whose tail is cut off."""
    good = {"url": "https://example.org/mmc4", "text_list": [GOOD_TEXT[2] + " (mmc4)", CP1252_TEXT + " (mmc4)"],
            "image_info": [{"raw_url": "https://example.org/a.jpg", "matched_text_index": 0}]}
    lines = [json.dumps(good).encode(), b'{"url": "https://example.org/broken", "text_list": [',
             b'{"url": "https://example.org/latin", "text_list": ["caf\xe9"]}', b"[1, 2, 3]",
             json.dumps({"url": "https://example.org/noimg", "text_list": ["The kettle boils on the stove in the kitchen (mmc4)."]}).encode(),
             json.dumps({"url": "https://example.org/notext", "text_list": [], "image_info": [{"raw_url": "https://example.org/b.jpg"}]}).encode()]
    plain = dest / "mmc4.jsonl"
    plain.write_bytes(b"\n".join(lines) + b"\n")
    many = b"".join(json.dumps({"url": f"https://example.org/gz/{k}", "text_list": [
        f"The ferry number {k} leaves the harbour at dawn with passengers and their bicycles."]}).encode() + b"\n"
        for k in range(400))
    gz = dest / "mmc4-truncated.jsonl.gz"
    gz.write_bytes(gzip.compress(many, mtime=0)[:-300])
    return plain, gz


def build_warc(dest: Path, imgs: dict[str, bytes]) -> Path:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    path = dest / "hostile.warc.gz"
    srcs = {kind: f"https://warc.example/img/{kind}.{_ext(kind, data)}" for kind, data in imgs.items()}
    with path.open("wb") as fh:
        w = WARCWriter(fh, gzip=True)

        def response(url: str, ctype: str, body: bytes) -> None:
            headers = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.1")
            w.write_record(w.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=headers))

        response("https://warc.example/page", "text/html; charset=utf-8", _page("warc", srcs))
        for kind, data in imgs.items():
            response(srcs[kind], "image/jpeg", data)
        # the header says UTF-8, the body is windows-1252
        response("https://warc.example/latin", "text/html; charset=utf-8",
                 f"<html><body><p>{CP1252_TEXT} (warc)</p></body></html>".encode("cp1252"))
    return path


def build_epub(dest: Path, imgs: dict[str, bytes]) -> Path:
    path = dest / "hostile.epub"
    srcs = {kind: f"img/{kind}.{_ext(kind, data)}" for kind, data in imgs.items()}
    page = _page("epub", srcs, {"missing_file": "img/gone.png", "escaping_path": "../../../etc/hostname"})
    opf = ('<?xml version="1.0"?><package xmlns="http://www.idpf.org/2007/opf" version="3.0">'
           '<metadata xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>Hostile</dc:title></metadata>'
           '<manifest><item id="c1" href="c1.xhtml" media-type="application/xhtml+xml"/>'
           '<item id="c2" href="missing.xhtml" media-type="application/xhtml+xml"/></manifest>'
           '<spine><itemref idref="c1"/><itemref idref="c2"/></spine></package>')
    container = ('<?xml version="1.0"?><container xmlns="urn:oasis:names:tc:opendocument:xmlns:container" version="1.0">'
                 '<rootfiles><rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/>'
                 "</rootfiles></container>")
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("mimetype", "application/epub+zip", compress_type=zipfile.ZIP_STORED)
        zf.writestr("META-INF/container.xml", container)
        zf.writestr("OEBPS/content.opf", opf)
        zf.writestr("OEBPS/c1.xhtml", page)
        for kind, data in imgs.items():
            zf.writestr(f"OEBPS/{srcs[kind]}", data, compress_type=zipfile.ZIP_STORED)
    return path


def build_zim(dest: Path, imgs: dict[str, bytes]) -> Path:
    """A ZIM (new namespace scheme) whose article `broken` sits alone in a compressed cluster that
    is then damaged: libzim reports "Data corruption detected" for that entry only."""
    from libzim.writer import Creator, Hint, StringProvider
    from libzim.writer import Item as ZimItem

    class Entry(ZimItem):
        def __init__(self, path: str, mime: str, content: bytes, compress: bool) -> None:
            super().__init__()
            self.p, self.m, self.c, self.z = path, mime, content, compress

        def get_path(self): return self.p
        def get_title(self): return self.p
        def get_mimetype(self): return self.m
        def get_contentprovider(self): return StringProvider(self.c)
        def get_hints(self): return {Hint.FRONT_ARTICLE: self.m == "text/html", Hint.COMPRESS: self.z}

    path = dest / "hostile.zim"
    marker = b"<!-- " + b"BROKEN-CLUSTER " * 4000 + b"-->"  # fills a cluster of its own
    srcs = {kind: f"../img/{kind}.{_ext(kind, data)}" for kind, data in imgs.items()}
    with Creator(str(path)).config_indexing(False, "eng").config_clustersize(16 * 1024) as c:
        c.set_mainpath("wiki/Images")
        c.add_item(Entry("wiki/Images", "text/html", _page("zim", srcs, {"missing_file": "../img/gone.png"}), True))
        c.add_item(Entry("wiki/Broken", "text/html",
                         b"<html><body><p>This article is lost to a damaged cluster.</p>" + marker + b"</body></html>", True))
        for kind, data in imgs.items():
            c.add_item(Entry(f"img/{kind}.{_ext(kind, data)}", "image/png", data, False))
    data = bytes(path.read_bytes())
    for at in (i for i in range(len(data) - 4) if data[i:i + 4] == b"\x28\xb5\x2f\xfd"):  # zstd frames
        bad = bytearray(data)
        bad[at + 8:at + 40] = bytes(b ^ 0x5A for b in bad[at + 8:at + 40])
        if _broken_entries(bytes(bad), path) == {"wiki/Broken"}:
            data = bytes(bad)
            break
    else:
        raise RuntimeError("could not damage the cluster of wiki/Broken alone")
    path.write_bytes(data)
    return path


def _broken_entries(data: bytes, path: Path) -> set[str] | None:
    """Paths of the entries libzim cannot read in the ZIM `data` (None if it does not open)."""
    from libzim.reader import Archive

    probe = path.with_suffix(".probe.zim")
    probe.write_bytes(data)
    try:
        archive = Archive(str(probe))
    except Exception:  # noqa: BLE001
        return None
    broken = set()
    for i in range(archive.entry_count):
        entry = archive._get_entry_by_id(i)
        try:
            bytes(entry.get_item().content)
        except Exception:  # noqa: BLE001
            broken.add(entry.path)
    del archive
    probe.unlink()
    return broken


def build(dest: Path) -> list[Path]:
    """Write the corpus under `dest`; returns the input paths (one per format)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    return [build_htmldir(dest, images(1)), build_obelics(dest, images(2)), *build_mmc4(dest),
            build_warc(dest, images(3)), build_epub(dest, images(4)), build_zim(dest, images(5))]
