"""Image checks of the extraction stage: decode safely, apply the paper's size and aspect
filters, and compute a perceptual hash (pure function of the bytes, no I/O).

RealSyn (arXiv 2502.12513, Fig. 2) drops images whose shorter side is below 100 px or whose
aspect ratio is outside [1/3, 3]. The other reasons are about input hygiene.
"""

from __future__ import annotations

import hashlib
import io
import warnings
import zlib
from dataclasses import dataclass

import imagehash
import numpy as np
from PIL import Image, ImageOps

__all__ = ["REASONS", "FORMATS", "ImageCheck", "inspect_image", "hamming"]

#: Every reason `inspect_image` can return, in the order they are checked.
REASONS = ("empty", "unsupported_format", "decompression_bomb", "too_small", "bad_aspect",
           "decode_error")
#: Pillow formats accepted; anything else (SVG, ICO, PSD, PDF, HTML error pages) is unsupported.
FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "MPO")
_ORIENTATION = 0x0112
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _looks_like_image(data: bytes) -> bool:
    """True when the bytes start with the signature of an accepted format: such data that
    Pillow cannot open is a damaged image (`decode_error`), not an unsupported format."""
    return (data.startswith((b"\xff\xd8\xff", _PNG_SIGNATURE, b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*"))
            or (data[:4] == b"RIFF" and data[8:12] == b"WEBP") or (data[:2] == b"BM" and len(data) > 26))


def _png_critical_crc_ok(data: bytes) -> bool:
    """Check the CRC of every critical PNG chunk (IHDR, PLTE, IDAT, IEND), as libpng does:
    Pillow skips the IDAT CRCs and may decode a damaged stream into garbage pixels."""
    pos, n = 8, len(data)
    while pos + 12 <= n:
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        end = pos + 8 + length
        if end + 4 > n:
            return False  # truncated chunk
        if kind[:1].isupper() and zlib.crc32(data[pos + 4:end]) != int.from_bytes(data[end:end + 4], "big"):
            return False
        if kind == b"IEND":
            return True
        pos = end + 4
    return False  # no IEND: truncated


@dataclass(frozen=True)
class ImageCheck:
    """The verdict on one image. `reason` is None when it passes; `width` and `height` are
    after EXIF orientation (None when unknown); `phash` is the signed int64 of the 64-bit
    pHash, computed for passing images only; `sha256` is the hex digest of the bytes."""

    reason: str | None
    width: int | None
    height: int | None
    format: str | None
    phash: int | None
    sha256: str


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two 64-bit hashes (signed or unsigned)."""
    return ((a ^ b) & 0xFFFF_FFFF_FFFF_FFFF).bit_count()


def _size_reason(w: int, h: int, min_side: int, min_aspect: float, max_aspect: float) -> str | None:
    if min(w, h) < min_side:
        return "too_small"
    if not min_aspect <= w / h <= max_aspect:
        return "bad_aspect"
    return None


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB for hashing: 16/32-bit and float images are scaled to 8 bits (Pillow would clip),
    transparency is composited onto white, CMYK and palettes are converted."""
    if im.mode in ("I", "F") or im.mode.startswith("I;"):
        a = np.asarray(im, dtype=np.float64)
        lo, hi = (0.0, 65535.0) if im.mode.startswith("I;16") else (float(a.min()), float(a.max()))
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def _phash(im: Image.Image) -> int:
    """Signed int64 of imagehash.phash's 64 bits (row-major, first bit most significant)."""
    if min(im.size) > 512:  # a fast box reduction first; pHash keeps only 32x32 anyway
        im = im.reduce(max(1, min(im.size) // 256))
    value = int(str(imagehash.phash(im)), 16)
    return value - (1 << 64) if value >= 1 << 63 else value


def _inspect(data: bytes, sha: str, min_side: int, min_aspect: float, max_aspect: float,
             max_pixels: int) -> ImageCheck:
    def verdict(reason: str | None, w: int | None = None, h: int | None = None,
                fmt: str | None = None, phash: int | None = None) -> ImageCheck:
        return ImageCheck(reason, w, h, fmt, phash, sha)

    if not data:
        return verdict("empty")
    with warnings.catch_warnings():
        # Our own max_pixels check decides; Pillow's warning (above its MAX_IMAGE_PIXELS) is
        # noise. Pillow still raises DecompressionBombError above twice its limit.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.simplefilter("ignore", UserWarning)  # Pillow's notes on corrupt TIFF tags
        try:
            im: Image.Image = Image.open(io.BytesIO(data), formats=FORMATS)  # lazy: reads the header only
        except Image.DecompressionBombError:
            return verdict("decompression_bomb")
        except Exception:  # noqa: BLE001 - UnidentifiedImageError, or a plugin choking on a header
            return verdict("decode_error" if _looks_like_image(data) else "unsupported_format")
        fmt = im.format
        w, h = im.size
        if fmt not in FORMATS:
            return verdict("unsupported_format", w, h, fmt)
        if w * h > max_pixels:
            return verdict("decompression_bomb", w, h, fmt)
        if w < 1 or h < 1:
            return verdict("decode_error", w, h, fmt)
        try:  # EXIF orientation from the header (JPEG, WebP, TIFF); 5-8 swap the axes
            if im.getexif().get(_ORIENTATION) in (5, 6, 7, 8):
                w, h = h, w
        except Exception:  # noqa: BLE001 - a broken EXIF block is not a reason to reject
            pass
        reason = _size_reason(w, h, min_side, min_aspect, max_aspect)
        if reason is not None:  # cheap header checks first: no decoding for rejected sizes
            return verdict(reason, w, h, fmt)
        if fmt == "PNG" and not _png_critical_crc_ok(data):
            return verdict("decode_error", w, h, fmt)
        try:
            im.seek(0)  # animated images: the first frame
            im.load()  # a full decode: truncated or corrupt data fails here
        except Image.DecompressionBombError:
            return verdict("decompression_bomb", w, h, fmt)
        except Exception:  # noqa: BLE001
            return verdict("decode_error", w, h, fmt)
        try:
            im = ImageOps.exif_transpose(im) or im
        except Exception:  # noqa: BLE001
            pass
        w, h = im.size  # orientation may only be known after decoding (PNG eXIf after IDAT)
        reason = _size_reason(w, h, min_side, min_aspect, max_aspect)
        if reason is not None:
            return verdict(reason, w, h, fmt)
        return verdict(None, w, h, fmt, _phash(_to_rgb(im)))


def inspect_image(data: bytes, *, min_side: int = 100, min_aspect: float = 1 / 3,
                  max_aspect: float = 3.0, max_pixels: int = 89_478_485) -> ImageCheck:
    """Check one image given as bytes; never raises.

    Reasons (None when the image passes), cheapest first so rejected images are not decoded:
    `empty` (no bytes), `unsupported_format` (not an image of an accepted format: SVG, HTML,
    anything outside `FORMATS`), `decompression_bomb` (the header declares more than `max_pixels`
    pixels; Pillow's default limit), `too_small` (shorter side below `min_side`), `bad_aspect`
    (width/height outside [`min_aspect`, `max_aspect`]), `decode_error` (a damaged image: a
    header Pillow cannot parse behind an accepted format's signature, a bad CRC in a critical
    PNG chunk, truncated or corrupt data found by a full decode, or any unexpected error). Sizes are measured after EXIF
    orientation; animated images are judged by their first frame. Truncated images are never
    accepted (ImageFile.LOAD_TRUNCATED_IMAGES is left alone).
    """
    data = bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    try:
        return _inspect(data, sha, min_side, min_aspect, max_aspect, max_pixels)
    except Exception:  # noqa: BLE001 - robustness: any bytes in, a verdict out
        return ImageCheck("decode_error", None, None, None, None, sha)
