"""The one base class of errors a user can fix: the CLI prints their message (one line) and exits 2."""

from __future__ import annotations


class UserError(Exception):
    """An input, config value, model spec or workspace state that stops the run; its message is
    one line saying what is wrong and, where it helps, what to do."""


class InputError(UserError, ValueError):
    """An input that cannot be read: missing, of an unknown format, or a corrupt container."""


class PipelineError(UserError, RuntimeError):
    """The pipeline cannot proceed (e.g. a stage's input is missing); one-line message."""
