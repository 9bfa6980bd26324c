"""transformers models saved in a local folder (`save_pretrained` layout); never touches a hub.

- `hf:DIR` as `joint`/`text`: a CLIP or SigLIP model (detected from `config.json`) as an Embedder.
- `hf:DIR` as `tagger`: an `AutoModelForImageClassification`; tags are its `id2label` names.

Images go through the PIL image processor (`backend="pil"`), so torchvision is never needed.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from realsyn.models import registry

_JOINT_CLASSES = {"clip": "CLIPModel", "siglip": "SiglipModel"}


def _folder(args: str) -> Path:
    folder = Path(args).expanduser()
    if not args or not (folder / "config.json").is_file():
        raise registry.ModelError(f"no model folder at {args or '(empty path)'}")
    return folder


def _image_processor(folder: Path) -> Any:
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(folder, backend="pil", local_files_only=True)


def declared_pixels(data: bytes) -> int:
    """Width x height from the image header (nothing decoded); 0 when unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.width * im.height
    except (OSError, ValueError, Image.DecompressionBombError):
        return 0


def decode_images(images: Sequence[bytes]) -> list[Image.Image]:
    return [Image.open(io.BytesIO(b)).convert("RGB") for b in images]


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Batches of at most `size` items; image bytes are also bounded by decoded pixels (4 bytes
    each, RGB plus the converted copy), so that one batch stays within `registry.batch_bytes()`."""
    budget = registry.batch_bytes() // 4
    chunk: list[Any] = []
    used = 0
    for item in items:
        px = declared_pixels(bytes(item)) if isinstance(item, (bytes, bytearray)) else 0
        if chunk and (len(chunk) >= size or used + px > budget):
            yield chunk
            chunk, used = [], 0
        chunk.append(item)
        used += px
    if chunk:
        yield chunk


def embed_in_batches(items: Sequence[Any], batch_size: int, dim: int,
                     forward: Callable[[Sequence[Any]], Any]) -> np.ndarray:
    """`forward(chunk)` -> torch features per chunk; all rows L2-normalised float32, as one (n, dim) array."""
    import torch

    outs = [np.zeros((0, dim), np.float32)]
    with torch.inference_mode():
        for chunk in _chunks(items, batch_size):
            outs.append(torch.nn.functional.normalize(forward(chunk).float(), dim=-1).cpu().numpy())
    return np.concatenate(outs)


class HFJointEmbedder:
    """CLIP / SigLIP image and text towers; float32, L2-normalised embeddings."""

    def __init__(self, folder: Path, device: str, batch_size: int = 32) -> None:
        import torch
        import transformers
        from transformers import AutoConfig, AutoTokenizer

        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        cls = _JOINT_CLASSES.get(config.model_type)
        if cls is None:
            raise registry.ModelError(f"hf joint model at {folder} is '{config.model_type}'; supported: clip, siglip")
        self.torch, self.device, self.batch_size = torch, device, batch_size
        self.name = f"hf:{folder}"
        self.model = getattr(transformers, cls).from_pretrained(folder, local_files_only=True).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.image_processor = _image_processor(folder)
        self.max_length = config.text_config.max_position_embeddings
        self.padding = "max_length" if config.model_type == "siglip" else True  # SigLIP was trained padded to 64
        text = config.text_config  # CLIP: projection_dim; SigLIP: text head size (= vision hidden size)
        self.dim = int(getattr(config, "projection_dim", None) or getattr(text, "projection_size", None)
                       or text.hidden_size)

    def _forward(self, fn: Any, inputs: Any) -> Any:
        out = fn(**{k: v.to(self.device) for k, v in inputs.items()})
        return out if isinstance(out, self.torch.Tensor) else out.pooler_output  # transformers 4 / 5

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return embed_in_batches(texts, self.batch_size, self.dim, lambda chunk: self._forward(
            self.model.get_text_features, self.tokenizer(list(chunk), padding=self.padding, truncation=True,
                                                         max_length=self.max_length, return_tensors="pt")))

    def embed_images(self, images: Sequence[bytes]) -> np.ndarray:
        return embed_in_batches(images, self.batch_size, self.dim, lambda chunk: self._forward(
            self.model.get_image_features, self.image_processor(decode_images(chunk), return_tensors="pt")))


class HFTagger:
    """Image classifier as a tagger: top-k (label, probability) per image."""

    def __init__(self, folder: Path, device: str, batch_size: int = 32) -> None:
        import torch
        from transformers import AutoModelForImageClassification

        self.torch, self.device, self.batch_size = torch, device, batch_size
        self.name = f"hf:{folder}"
        self.model = AutoModelForImageClassification.from_pretrained(folder, local_files_only=True).to(device).eval()
        self.image_processor = _image_processor(folder)
        self.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]

    def tag(self, images: Sequence[bytes], k: int = 5) -> list[list[tuple[str, float]]]:
        out: list[list[tuple[str, float]]] = []
        with self.torch.inference_mode():
            for chunk in _chunks(images, self.batch_size):
                pixels = self.image_processor(decode_images(chunk), return_tensors="pt")["pixel_values"]
                probs = self.model(pixel_values=pixels.to(self.device)).logits.float().softmax(-1)
                top = probs.topk(min(k, probs.shape[-1]), dim=-1)
                out += [[(self.labels[i], float(p)) for p, i in zip(ps.tolist(), ix.tolist())]
                        for ps, ix in zip(top.values, top.indices)]
        return out


def build_joint(args: str, device: str) -> HFJointEmbedder:
    """`hf:DIR` -> CLIP/SigLIP embedder."""
    return HFJointEmbedder(_folder(args), registry.resolve_device(device))


def build_tagger(args: str, device: str) -> HFTagger:
    """`hf:DIR` -> image-classification tagger."""
    return HFTagger(_folder(args), registry.resolve_device(device))
