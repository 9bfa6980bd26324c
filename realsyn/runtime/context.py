"""What every stage receives: the workspace, the config, the executor and the run's inputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from realsyn.config import Config
from realsyn.errors import PipelineError
from realsyn.runtime.executor import Executor
from realsyn.runtime.workspace import Workspace


@dataclass
class Context:
    ws: Workspace
    cfg: Config
    executor: Executor
    inputs: list[Path] = field(default_factory=list)


__all__ = ["Context", "PipelineError"]
