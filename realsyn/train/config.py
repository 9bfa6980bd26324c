"""`TrainConfig` is the `train` section of the one config (realsyn/config.py), so one file serves
`realsyn run` and `realsyn train`; `--set KEY=VALUE` overrides are relative to the section (a
leading `train.` is accepted)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from realsyn.config import TEXT_FIELDS, TrainConfig, load_config

__all__ = ["TEXT_FIELDS", "TrainConfig", "load_train_config"]


def load_train_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The `train` section of the YAML file at `path` (defaults when absent) with overrides."""
    return load_config(path, {f"train.{k.removeprefix('train.')}": v for k, v in (overrides or {}).items()}).train
