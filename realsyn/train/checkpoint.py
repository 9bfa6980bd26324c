"""Checkpoints of a run: `RUN/checkpoints/step-NNNNNNNN.pt`, written atomically, the last few kept.

A checkpoint holds the step, the stream position, the resolved `TrainConfig`, the data folder and
the model, optimiser and scheduler states; `load_model` rebuilds a trained model from one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from realsyn.models.registry import ModelError
from realsyn.runtime.workspace import atomic_path
from realsyn.train.config import TrainConfig
from realsyn.train.model import ClipModel, build_model

FOLDER = "checkpoints"


def checkpoints(run: Path) -> list[Path]:
    """The run's checkpoints, oldest first."""
    return sorted((run / FOLDER).glob("step-*.pt"))


def save(run: Path, state: dict[str, Any], keep: int) -> Path:
    path = run / FOLDER / f"step-{state['step']:08d}.pt"
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    for old in checkpoints(run)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's unpickling errors have no common base
        raise ModelError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0]}") from exc


def resolve(path: Path) -> Path:
    """A checkpoint file: `path` itself, or the latest one of the run folder `path`."""
    if path.is_file():
        return path
    found = checkpoints(path)
    if not found:
        raise ModelError(f"no checkpoint in {path / FOLDER} (train with `realsyn train --out {path}`)")
    return found[-1]


def load_model(path: Path) -> tuple[ClipModel, dict[str, Any]]:
    """The trained model of a run folder or checkpoint file (eval mode, CPU) and its checkpoint."""
    state = load(resolve(path))
    model = build_model(TrainConfig.model_validate(state["config"]))
    model.load_state_dict(state["model"])
    return model.eval(), state
