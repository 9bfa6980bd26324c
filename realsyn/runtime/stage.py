"""The stage contract: a stage is a declared object, and what it depends on is read from the
declaration, never written twice.

A `Stage` declares its name, the stage it follows, the config it depends on (sections or dotted
fields; `when` adds fields that matter only with some settings, such as extract's language model
when the perplexity filter is on), the files outside the config it depends on (a prompt YAML, a
local model folder: hashed by content), the tables it reads and writes, and its resources per
task. It provides `plan(ctx, out)` (the tasks still to do, after any global step they need, such
as retrieve's index), `process(task)` (one task, in a worker, returning the items it did) and
`finish(ctx, out, plan)` (the global step after the tasks, returning the stage's counts).

The base owns the rest: `key()` is derived from the declaration (config hash with the seed,
file digests, the input fingerprint for the first stage, the upstream key), so a change to any
declared field or file makes this stage and every later one stale; `run()` checks the inputs,
begins (wiping a stage whose key changed, resuming one that was interrupted), runs the planned
tasks on the executor with a progress bar, finishes, times it and records the counts.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from realsyn.runtime.resources import Resources

__all__ = ["Plan", "Resources", "Stage", "files_digest"]

if TYPE_CHECKING:
    from realsyn.config import Config
    from realsyn.runtime.context import Context
    from realsyn.tables import Table

_WHOLE_FILE = 64 << 20  # files up to this size are hashed whole; larger ones (model weights) by size and ends
_END = 1 << 20


def _none(cfg: Config) -> tuple[str, ...]:
    return ()


def _no_files(cfg: Config) -> tuple[Path, ...]:
    return ()


@dataclass
class Plan:
    """What a stage's `plan()` returns: the tasks still to do (a list, or a stream read as the
    executor submits them), the total of items when known (for the progress bar), and anything
    `finish()` needs from planning."""

    tasks: Iterable[Any] = ()
    total: int | None = None
    info: Any = None


@dataclass(frozen=True)
class Stage:
    name: str
    upstream: Stage | None
    finish: Callable[[Context, Path, Plan], dict[str, Any]]  # the global step after the tasks; the counts
    config: tuple[str, ...]
    plan: Callable[[Context, Path], Plan] | None = None  # the tasks still to do (after a global step they need)
    process: Callable[[Any], int] | None = None  # one task, in a worker; returns the items it did
    unit: str = "items"  # what process() counts, for the progress bar
    reads: tuple[Table, ...] = ()  # workspace tables (`realsyn/tables.py`)
    writes: tuple[Table, ...] = ()
    resources: Resources = field(default_factory=Resources)
    when: Callable[[Config], tuple[str, ...]] = _none
    files: Callable[[Config], tuple[Path, ...]] = _no_files
    inputs: Callable[[Context], str] | None = None  # what else keys it (the first stage: its inputs)
    check: Callable[[Context], None] | None = None  # validates the inputs before the folder is touched
    whole: bool = False  # its parts cannot be redone one by one: a damaged stage is redone whole
    record_inputs: bool = False  # the manifest keeps the inputs it ran on (`realsyn status` uses them)

    def config_fields(self, cfg: Config) -> tuple[str, ...]:
        return (*self.config, *self.when(cfg))

    def key(self, ctx: Context) -> str:
        """The stage's key, derived from its declaration; equal keys mean equal output."""
        parts = [ctx.cfg.section_hash(*self.config_fields(ctx.cfg))]
        paths = self.files(ctx.cfg)
        if paths:
            parts.append(files_digest(paths))
        if self.inputs is not None:
            parts.append(self.inputs(ctx))
        if self.upstream is not None:
            parts.append(self.upstream.key(ctx))
        return "-".join(parts)

    def run(self, ctx: Context, key: str | None = None) -> dict[str, Any]:
        """Run (or resume) the stage; returns its counts."""
        key = key or self.key(ctx)
        started = time.time()
        if self.check is not None:
            self.check(ctx)
        info = {"inputs": [ctx.ws.recorded(p) for p in ctx.inputs]} if self.record_inputs else {}
        out = ctx.ws.begin(self.name, key, whole=self.whole, **info)
        plan = self.plan(ctx, out) if self.plan is not None else Plan()
        if self.process is not None:
            ctx.executor.run(self.process, plan.tasks, self.name, self.unit, total=plan.total)
        counts = self.finish(ctx, out, plan)
        ctx.ws.finish(self.name, counts, time.time() - started)
        return counts


def files_digest(paths: tuple[Path, ...]) -> str:
    """A short digest of files and folders by content and name (a file over 64 MiB, such as model
    weights, by its size and its first and last MiB); a missing path counts as missing. Where the
    path itself matters it is in the config, which keys the stage too."""
    h = hashlib.sha256()
    for root in paths:
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for f in files:  # named relative to the path given, so a moved install keeps its keys
            h.update(f"{f.relative_to(root) if root.is_dir() else f.name}\0".encode())
            if not f.is_file():
                h.update(b"missing\n")
                continue
            size = f.stat().st_size
            with open(f, "rb") as fh:
                if size <= _WHOLE_FILE:
                    h.update(fh.read())
                else:
                    h.update(f"{size}".encode() + fh.read(_END))
                    fh.seek(size - _END)
                    h.update(fh.read(_END))
    return h.hexdigest()[:16]
