"""The semantic image dedup threshold of an encoder, measured instead of guessed.

`embed.image_dedup_threshold: auto` asks the encoder two things on a seeded sample of the kept
images: how close it puts an image and a re-encoded copy of it (half size, not below 64 pixels on
the short side, then JPEG at quality 75: what a re-upload does), and how close it puts distinct
images of the sample to each other. The threshold is the higher of
- a low quantile of the copy cosines (a pair as close as most images are to their own copy is a
  duplicate), and
- a high quantile of the cosines between distinct sampled images (at most ~1% of such pairs may
  be called duplicates),
so an encoder that cannot tell copies from distinct images (the `bridge`: ImageNet-class mixtures,
on which distinct engravings of a book sit at 0.99) removes little by cosine, and a real CLIP gets
its own SemDeDup-like cut. The two figures are recorded in the manifest.
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


def copy_cosines(images: Sequence[bytes], embed: Callable[[Sequence[bytes]], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(cosine of each image with its re-encoded copy, the images' embeddings) under `embed`
    (rows L2-normalised)."""
    if not images:
        return np.zeros(0, np.float32), np.zeros((0, 0), np.float32)
    a, b = embed(list(images)), embed([reencode(d) for d in images])
    return np.einsum("nd,nd->n", a.astype(np.float32), b.astype(np.float32)), a


def pair_cosines(emb: np.ndarray) -> np.ndarray:
    """Cosines of all distinct pairs of rows (the upper triangle)."""
    x = emb.astype(np.float32)
    return (x @ x.T)[np.triu_indices(len(x), 1)]


def threshold(copies: np.ndarray, pairs: np.ndarray, quantile: float, pair_quantile: float) -> float | None:
    """max(the `quantile` of the copy cosines, the `pair_quantile` of the distinct-pair cosines),
    within BOUNDS; None without a sample."""
    if not len(copies):
        return None
    cut = float(np.quantile(copies, quantile))
    if len(pairs):
        cut = max(cut, float(np.quantile(pairs, pair_quantile)))
    return float(np.clip(cut, *BOUNDS))
