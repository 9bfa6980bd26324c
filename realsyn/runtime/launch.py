"""Pick the executor the config names (`runtime.executor`): kept apart from the executors
themselves, so neither executor module imports the other."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from realsyn.runtime.executor import Executor, LocalExecutor

if TYPE_CHECKING:
    from realsyn.config import RayConfig


def make_executor(kind: str, workers: int = 0, ray: RayConfig | None = None) -> Executor:
    """The executor named in the config: `local`, or `ray` (settings from `runtime.ray`)."""
    if kind == "local":
        return LocalExecutor(workers)
    from realsyn.config import ConfigError

    if kind != "ray":
        raise ConfigError(f"unknown executor '{kind}'; use 'local' or 'ray'")
    if importlib.util.find_spec("ray") is None:
        raise ConfigError("executor 'ray' needs Ray: pip install 'realsyn[ray]'")
    from realsyn.runtime.ray_executor import RayExecutor

    return RayExecutor(ray, workers)
