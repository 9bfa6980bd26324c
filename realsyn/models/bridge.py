"""The "label bridge": a joint image-text space from two shipped models (no CLIP weights needed).

- image -> EfficientNet-Lite0 softmax -> top-k ImageNet classes (renormalised) -> probability-weighted
  mean of the MiniLM embeddings of those class names, minus the mean label embedding -> L2-normalise;
- text  -> MiniLM embedding minus the same mean -> L2-normalise.

Cosine similarity then plays the role of a CLIP score. Spec `bridge[:K]` (top-k, default 10).
The 1000 label embeddings are computed once and cached as
`$REALSYN_CACHE/bridge/labels-<hash>.npy` (hash of the MiniLM weights and the label strings).

Limits: the image side only "sees" the 1000 ImageNet-1k concepts (animals, objects, food, a few
scenes). People, text/OCR, scenes, actions, counts, colours and abstract ideas come out weakly or not
at all (an astronaut becomes "football helmet, bobsled"). A smoke-test stand-in, not a CLIP substitute.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np

from realsyn.models import cache, effnet, registry
from realsyn.models.minilm import MiniLMEmbedder, model_dir


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def label_texts() -> list[str]:
    """What each class is embedded as: its readable name ("tabby cat"). On the 13-photo smoke test this
    beat the full lemma string (with Latin names) and "a photo of a ..." prompts."""
    return [effnet.readable(n) for n in effnet.class_names()]


def label_embeddings(text: MiniLMEmbedder) -> np.ndarray:
    """(1000, 384) MiniLM embeddings of the ImageNet labels, from the disk cache when present."""
    texts = label_texts()
    key = hashlib.sha256("\n".join([cache.file_digest(model_dir() / "model.safetensors"), *texts])
                         .encode()).hexdigest()[:16]
    path = cache.cache_root() / "bridge" / f"labels-{key}.npy"
    if path.is_file():
        try:
            cached = np.load(path, allow_pickle=False)
            if cached.shape == (len(texts), text.dim):
                return cached.astype(np.float32)
        except (OSError, ValueError):
            pass  # corrupt cache: recompute and overwrite
    emb = text.embed_texts(texts)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, emb, allow_pickle=False)

    cache.atomic_write(path, write)
    return emb


class BridgeEmbedder:
    """Joint embedder: EfficientNet-Lite0 top-k classes on the image side, MiniLM on the text side."""

    name = "bridge"
    dim = 384

    def __init__(self, device: str = "cpu", k: int = 10) -> None:
        self.k = k
        self.clf = effnet.classifier(device)
        self.text = registry.load("text", "minilm", device)
        labels = label_embeddings(self.text)
        self.mean = labels.mean(axis=0, keepdims=True)
        self.labels = labels - self.mean  # centred: weighted means of these are image embeddings

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return _normalise(self.text.embed_texts(texts) - self.mean)

    def embed_probs(self, probs: np.ndarray) -> np.ndarray:
        """(N, 1000) class probabilities -> (N, 384) image embeddings."""
        top = np.argpartition(-probs, self.k - 1, axis=1)[:, :self.k]
        weights = np.take_along_axis(probs, top, axis=1)
        weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)
        return _normalise(np.einsum("nk,nkd->nd", weights, self.labels[top]))

    def embed_images(self, images: Sequence[bytes]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self.embed_probs(self.clf.probs(images))


def build(args: str, device: str) -> BridgeEmbedder:
    k = registry.int_arg(args, 10, "bridge", "the top-k count", 1, 1000)
    return BridgeEmbedder(registry.resolve_device(device), k)
