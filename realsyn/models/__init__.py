"""Model backends behind one registry (see `registry.py`). Never imports a pipeline stage."""

from realsyn.models.registry import ModelError, load

__all__ = ["ModelError", "load"]
