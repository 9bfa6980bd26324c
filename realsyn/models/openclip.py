"""open_clip model from a local weights file (optional extra `open_clip_torch`, needs torchvision).

Spec `open_clip:ARCH:WEIGHTS`, e.g. `open_clip:ViT-B-32:/models/vit_b_32-laion2b.bin`. ARCH must be one
of open_clip's built-in configs (`open_clip.list_models()`); WEIGHTS must be an existing file, so
nothing is ever downloaded. ARCHs whose tokenizer lives on the Hugging Face hub are not offline-safe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from realsyn.models import registry
from realsyn.models.hf import decode_images, embed_in_batches


class OpenCLIPEmbedder:
    """open_clip image and text towers; float32, L2-normalised embeddings."""

    def __init__(self, arch: str, weights: Path, device: str, batch_size: int = 32) -> None:
        import torch

        open_clip = registry.require("open_clip", "open_clip_torch")
        if arch not in open_clip.list_models():
            raise registry.ModelError(f"unknown open_clip architecture '{arch}'; see open_clip.list_models()")
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=str(weights), device=device)
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.torch, self.device, self.batch_size = torch, device, batch_size
        self.name = f"open_clip:{arch}:{weights.name}"
        self.dim = int(self.model.visual.output_dim)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return embed_in_batches(texts, self.batch_size, self.dim,
                                lambda chunk: self.model.encode_text(self.tokenizer(list(chunk)).to(self.device)))

    def embed_images(self, images: Sequence[bytes]) -> np.ndarray:
        return embed_in_batches(images, self.batch_size, self.dim, lambda chunk: self.model.encode_image(
            self.torch.stack([self.preprocess(im) for im in decode_images(chunk)]).to(self.device)))


def build(args: str, device: str) -> OpenCLIPEmbedder:
    """`open_clip:ARCH:WEIGHTS` -> Embedder."""
    registry.require("open_clip", "open_clip_torch")
    arch, _, weights = args.partition(":")
    if not arch or not weights:
        raise registry.ModelError(f"bad open_clip spec '{args}'; expected open_clip:ARCH:WEIGHTS_FILE")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise registry.ModelError(f"no open_clip weights file at {weights}")
    return OpenCLIPEmbedder(arch, path, registry.resolve_device(device))
