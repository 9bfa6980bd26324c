"""What every command shares: one-line errors with exit status 2, `--set KEY=VALUE` parsing and
logging set-up. The main CLI (`cli.py`) and the train commands (`train/commands.py`) both use it;
neither imports the other."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable

import typer
import yaml

from realsyn.errors import UserError
from realsyn.runtime.progress import set_quiet


def fail(message: str) -> None:
    """Print `realsyn: error: MESSAGE` and exit with status 2."""
    typer.echo(f"realsyn: error: {message}", err=True)
    raise typer.Exit(2)


def overrides(pairs: list[str] | None) -> dict[str, Any]:
    """`--set KEY=VALUE` pairs as a dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            fail(f"--set takes KEY=VALUE, got '{pair}'")
        out[key] = yaml.safe_load(value)
    return out


def setup(quiet: bool) -> None:
    """Log lines on stderr (warnings only with `quiet`) and progress bars unless `quiet`."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    set_quiet(quiet)


def guard(fn: Callable[[], Any]) -> Any:
    """Run `fn`, turning every error into a one-line message and exit status 2 (with
    REALSYN_TRACEBACK=1, an unexpected error shows its traceback)."""
    try:
        return fn()
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except BrokenPipeError:  # `realsyn status WORK | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(0) from None
    except UserError as exc:
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    except OSError as exc:  # disk full, permissions, a vanished file: what was finished stays, re-run resumes
        if exc.errno is None and os.environ.get("REALSYN_TRACEBACK"):
            raise
        where = f": {exc.filename}" if exc.filename else ""
        fail(f"{exc.strerror or exc}{where} (finished parts are kept; re-run to resume)")
    except MemoryError:
        fail("out of memory (finished parts are kept; lower runtime.workers or models.batch_mib and re-run)")
    except Exception as exc:  # noqa: BLE001 - the promise: one line, never a traceback
        if os.environ.get("REALSYN_TRACEBACK"):
            raise
        text = (str(exc).splitlines() or [""])[0][:300]
        fail(f"unexpected {type(exc).__name__}: {text} (finished parts are kept; REALSYN_TRACEBACK=1 shows where)")
