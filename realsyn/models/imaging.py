"""Image decoding shared by the image backends: bytes -> upright RGB PIL image -> fixed-size arrays."""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

import numpy as np
from PIL import Image, ImageOps

S = TypeVar("S")
T = TypeVar("T")


def decode_rgb(data: bytes, min_side: int | None = None) -> Image.Image:
    """Decode image bytes to an upright (EXIF-transposed) RGB image.

    With `min_side`, JPEGs are decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both
    sides >= `min_side` pixels: several times faster for large photos, same result after a resize.
    Raises `PIL.UnidentifiedImageError` / `OSError` for data that is not an image.
    """
    opened = Image.open(io.BytesIO(data))
    if min_side and opened.format == "JPEG":
        opened.draft("RGB", (min_side, min_side))
    image: Image.Image = ImageOps.exif_transpose(opened)
    if image.mode != "RGB":
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            image = image.convert("RGBA")  # composite transparency on white, not on black
            white = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(white, image)
        image = image.convert("RGB")
    return image


def resize_center_crop(image: Image.Image, resize: int, crop: int,
                       resample: int = Image.Resampling.BICUBIC) -> np.ndarray:
    """Resize so the shorter side is `resize`, then take the central `crop` x `crop`: uint8 HWC."""
    w, h = image.size
    scale = resize / min(w, h)
    nw, nh = max(crop, round(w * scale)), max(crop, round(h * scale))
    left, top = (nw - crop) // 2, (nh - crop) // 2
    # `box` crops in source coordinates before resampling: only the needed pixels are resized.
    box = (left / scale, top / scale, (left + crop) / scale, (top + crop) / scale)
    out = image.resize((crop, crop), resample=resample, box=box, reducing_gap=None)
    return np.asarray(out, dtype=np.uint8)


def parallel_map(fn: Callable[[S], T], items: Sequence[S], workers: int) -> list[T]:
    """`[fn(x) for x in items]`, on a thread pool when it pays (PIL and onnxruntime release the GIL)."""
    if workers <= 1 or len(items) < 2:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def cpu_count() -> int:
    """Cores this process may use (respects affinity / cgroup cpusets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def sample_photos() -> dict[str, bytes]:
    """13 real photos that ship with scikit-image, scikit-learn and matplotlib, as JPEG bytes
    (quality 90; greyscale ones as RGB). For tests, benchmarks and demos; needs no network."""
    import skimage.data
    from matplotlib import cbook
    from sklearn.datasets import load_sample_image

    arrays = {name: getattr(skimage.data, name)() for name in
              ("astronaut", "camera", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry",
               "moon", "rocket", "coins")}
    arrays["motorcycle"] = skimage.data.stereo_motorcycle()[0]
    arrays["china"] = load_sample_image("china.jpg")
    arrays["flower"] = load_sample_image("flower.jpg")
    out = {}
    for name, array in arrays.items():
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, "JPEG", quality=90)
        out[name] = buf.getvalue()
    with open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), "rb") as f:
        out["grace_hopper"] = f.read()
    return out
