"""What one task of a stage needs (declared by the stage, read by the executors)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Resources:
    """What one task of a stage needs; an executor reads it (config may override per stage)."""

    cpus: float = 1.0
    gpus: float = 0.0
    memory_mib: int = 0  # a scheduling hint; 0 = not stated
    model: bool = False  # holds a model: on Ray its tasks run on long-lived actors that load it once
