"""The one base class of errors a user can fix: the CLI prints their message (one line) and exits 2."""

from __future__ import annotations


class UserError(Exception):
    """An input, config value, model spec or workspace state that stops the run; its message is
    one line saying what is wrong and, where it helps, what to do."""
