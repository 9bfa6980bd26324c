"""The semantic image dedup threshold of an encoder, measured instead of guessed.

`embed.image_dedup_threshold: auto` asks the encoder how close it puts an image and a re-encoded
copy of it (half size, not below 64 pixels on the short side, then JPEG at quality 75: what a
re-upload does). The threshold is a low quantile of those cosines over a seeded sample of the
kept images: a pair as close as most images are to their own copy is a duplicate. The `bridge`
and a real CLIP differ widely in this (their cosines live on different scales), so one fixed
number cannot suit both.
"""

from __future__ import annotations

import io
from typing import Callable, Sequence

import numpy as np
from PIL import Image

QUALITY, MIN_SIDE = 75, 64
BOUNDS = (0.5, 0.9999)


def reencode(data: bytes) -> bytes:
    """The image at half size (short side at least MIN_SIDE, never upscaled) as a JPEG."""
    with Image.open(io.BytesIO(data)) as src:
        rgb = src.convert("RGB")
    scale = max(0.5, min(1.0, MIN_SIDE / max(1, min(rgb.size))))
    if scale < 1:
        rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    rgb.save(out, "JPEG", quality=QUALITY)
    return out.getvalue()


def copy_cosines(images: Sequence[bytes], embed: Callable[[Sequence[bytes]], np.ndarray]) -> np.ndarray:
    """Cosine of each image with its re-encoded copy under `embed` (rows L2-normalised)."""
    if not images:
        return np.zeros(0, np.float32)
    a, b = embed(list(images)), embed([reencode(d) for d in images])
    return np.einsum("nd,nd->n", a.astype(np.float32), b.astype(np.float32))


def threshold(cosines: np.ndarray, quantile: float) -> float | None:
    """The `quantile` of the copy cosines, within BOUNDS; None without a sample."""
    if not len(cosines):
        return None
    return float(np.clip(np.quantile(cosines, quantile), *BOUNDS))
