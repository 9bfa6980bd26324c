"""The interfaces a backend implements, one per role. Inputs are batches; outputs are numpy arrays
or lists aligned with the inputs. Embeddings are float32 and L2-normalised."""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class Embedder(Protocol):
    """Joint image-text embedding (role `joint`) or text-only embedding (role `text`)."""

    name: str
    dim: int

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_images(self, images: Sequence[bytes]) -> np.ndarray: ...  # role `text`: NotImplementedError


@runtime_checkable
class Tagger(Protocol):
    name: str

    def tag(self, images: Sequence[bytes], k: int = 5) -> list[list[tuple[str, float]]]: ...


@runtime_checkable
class Captioner(Protocol):
    name: str

    def caption(self, images: Sequence[bytes]) -> list[str]: ...


@runtime_checkable
class LLM(Protocol):
    name: str

    def generate(self, prompts: Sequence[list[dict]], *, max_tokens: int = 96,
                 temperature: float = 0.0, seed: int = 0) -> list[str]: ...  # chat messages in

    def perplexity(self, texts: Sequence[str]) -> np.ndarray: ...


@runtime_checkable
class ImageScorer(Protocol):
    """NSFW score in [0, 1] per image (role `nsfw`)."""

    name: str

    def score(self, images: Sequence[bytes]) -> np.ndarray: ...


@runtime_checkable
class LanguageId(Protocol):
    name: str

    def detect(self, texts: Sequence[str]) -> list[tuple[str, float]]: ...
