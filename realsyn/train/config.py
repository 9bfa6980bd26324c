"""`TrainConfig`: the `train` section of a YAML config, with the paper's optimiser recipe as defaults.

Read with `load_train_config(path, overrides)`: the file's `train:` mapping (the other sections are
ignored, so one file serves `realsyn run` and `realsyn train`), then `--set KEY=VALUE` overrides
(dotted, relative to the section; a leading `train.` is accepted).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from realsyn.config import ConfigError, _one_line

TEXT_FIELDS = ("text1", "text2", "text3", "syn_text")


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    model: str = Field("vit-tiny", description="What is trained: `vit-tiny` (built-in small CLIP: ViT image tower, causal text transformer on the MiniLM WordPiece vocabulary; trains on a CPU in minutes), `locked` (only two projection heads on frozen EfficientNet-Lite0 logits / MiniLM sentence embeddings, LiT-style), or `open_clip:ARCH` (an OpenCLIP architecture from scratch; needs open_clip_torch).")
    embed_dim: int = Field(256, ge=8, description="Joint embedding size (built-in models).")
    image_size: int = Field(48, ge=16, description="vit-tiny: input side in pixels (shorter side resized, centre crop).")
    patch_size: int = Field(8, ge=2, description="vit-tiny: patch side in pixels (image_size must be a multiple).")
    vision_width: int = Field(128, ge=16, description="vit-tiny: image transformer width.")
    vision_layers: int = Field(4, ge=1, description="vit-tiny: image transformer layers.")
    text_width: int = Field(128, ge=16, description="vit-tiny: text transformer width.")
    text_layers: int = Field(3, ge=1, description="vit-tiny: text transformer layers.")
    heads: int = Field(4, ge=1, description="vit-tiny: attention heads of both towers (must divide both widths).")
    context_length: int = Field(48, ge=4, description="Text tokens per sample, start and end tokens included (longer texts are truncated).")
    text_probs: dict[str, float] = Field(default_factory=lambda: {t: 0.25 for t in TEXT_FIELDS}, description="Probability of drawing each text of a sample per step (the paper: one of the top-3 realistic texts and the synthetic text, uniformly). Renormalised over the sample's non-empty texts; set syn_text: 0 for realistic-only training.")
    batch_size: int = Field(32, ge=2, description="Samples per step (the contrastive batch).")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate of the one-cycle schedule (paper: 1e-3).")
    weight_decay: float = Field(0.2, ge=0, description="AdamW weight decay on matrices (gains, biases and the temperature are not decayed, as OpenCLIP; paper: 0.2).")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1 (paper: 0.9).")
    beta2: float = Field(0.98, ge=0, lt=1, description="AdamW beta2 (paper: 0.98).")
    eps: float = Field(1e-6, gt=0, description="AdamW epsilon (paper: 1e-6).")
    pct_start: float = Field(0.1, gt=0, lt=1, description="One-cycle schedule: share of the steps spent warming up (paper: 0.1).")
    init_temperature: float = Field(0.07, gt=0, description="Initial softmax temperature of the InfoNCE loss (learnable; CLIP: 0.07).")
    max_logit_scale: float = Field(100.0, gt=1, description="The learnt 1/temperature is clamped at this (CLIP: 100).")
    steps: int | None = Field(None, ge=3, description="Optimiser steps of the run (the schedule's length); overridden by --steps. With neither steps nor epochs: 1 epoch.")
    epochs: float | None = Field(None, gt=0, description="Passes over the data, when steps is not given; overridden by --epochs.")
    shuffle_buffer: int = Field(1000, ge=1, description="Samples in the shuffle buffer (shards are also shuffled per epoch); seeded, so the order is reproducible.")
    checkpoint_every: int = Field(100, ge=1, description="Write a checkpoint every this many steps (and at the end).")
    keep_checkpoints: int = Field(2, ge=1, description="Most recent checkpoints kept in RUN/checkpoints/.")
    log_every: int = Field(10, ge=1, description="Append the loss to RUN/log.jsonl every this many steps.")
    seed: int = Field(0, description="Seed of the initial weights, the data order and the text draws: same seed, same run.")
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = one per available core.")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="Where to train: auto (GPU when visible), cpu, cuda, cuda:N.")

    @field_validator("text_probs")
    @classmethod
    def _probs(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = set(value) - set(TEXT_FIELDS)
        if unknown:
            raise ValueError(f"unknown text field(s) {sorted(unknown)}; fields: {', '.join(TEXT_FIELDS)}")
        if any(p < 0 for p in value.values()) or sum(value.values()) <= 0:
            raise ValueError("probabilities must be >= 0 with a positive sum")
        return {t: float(value.get(t, 0.0)) for t in TEXT_FIELDS}


class _TrainFile(BaseModel):
    """Validated as the `train` key, so errors name `train.FIELD`."""

    train: TrainConfig


def load_train_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The `train` section of the YAML file at `path` (defaults when absent) with dotted overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {path}: {str(exc).splitlines()[0]}") from exc
        if not isinstance(raw, dict) or not isinstance(raw.get("train", {}), dict):
            raise ConfigError(f"config {path} must be a YAML mapping with a `train` mapping")
        data = dict(raw.get("train") or {})
    defaults = TrainConfig().model_dump()
    for key, value in (overrides or {}).items():
        *parents, leaf = key.removeprefix("train.").split(".")
        node = data
        for depth, p in enumerate(parents):  # a partial override of a mapping keeps its defaults
            node = node.setdefault(p, dict(defaults.get(p) or {}) if depth == 0 else {})
        node[leaf] = value
    try:
        return _TrainFile.model_validate({"train": data}).train
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None
