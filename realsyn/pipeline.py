"""The stage graph, in the order of the paper's Figure 3.

Each stage module declares one `STAGE` (`realsyn/runtime/stage.py`): its upstream, config, files,
tables and resources; its key is derived from that declaration. A stage whose recorded key
matches is skipped; otherwise it runs (resuming finished parts when only the run was interrupted).
"""

from __future__ import annotations

import logging

from realsyn.balance import stage as balance
from realsyn.embed import stage as embed
from realsyn.export import stage as export
from realsyn.extract import stage as extract
from realsyn.report import stage as report
from realsyn.retrieve import stage as retrieve
from realsyn.runtime import progress
from realsyn.runtime.context import Context, PipelineError
from realsyn.runtime.mirror import INPUTS
from realsyn.runtime.stage import Stage
from realsyn.runtime.workspace import write_json
from realsyn.synth import stage as synth

log = logging.getLogger(__name__)

STAGES: list[Stage] = [m.STAGE for m in (extract, embed, retrieve, synth, balance, export, report)]
NAMES = [s.name for s in STAGES]
assert all(s.upstream is (STAGES[i - 1] if i else None) for i, s in enumerate(STAGES)), "stages out of order"
__all__ = ["NAMES", "PipelineError", "check_upstream", "keys", "reads", "run", "run_stage"]


def reads(name: str) -> list[str]:
    """The workspace folders stage `name` reads, from its declaration: the inputs' copies for the
    first stage, else the folders of the tables it declares (a URL workspace downloads them
    before the stage runs, and each worker on another node before its first task)."""
    stage = STAGES[NAMES.index(name)]
    return [INPUTS] if stage.upstream is None else sorted({t.stage for t in stage.reads})


def keys(ctx: Context) -> dict[str, str]:
    """The current key of every stage (what its output would be made from)."""
    return {s.name: s.key(ctx) for s in STAGES}


def check_upstream(ctx: Context, name: str) -> None:
    """Raise PipelineError unless the stage before `name` is finished and current."""
    pos = NAMES.index(name)
    if pos > 0:
        up = STAGES[pos - 1]
        if not ctx.ws.is_current(up.name, up.key(ctx)):
            raise PipelineError(f"{name} needs a finished, current {up.name} stage in {ctx.ws.name}: run `realsyn {up.name}` first")


def run_stage(ctx: Context, name: str) -> dict:
    """Run one stage if it is not current; returns its counts."""
    check_upstream(ctx, name)
    stage = STAGES[NAMES.index(name)]
    key = stage.key(ctx)
    if ctx.ws.is_current(name, key):
        log.info("%s: up to date", name)
        return ctx.ws.stage(name)["counts"]
    log.info("%s: running", name)
    ctx.executor.stage, ctx.executor.reads, ctx.executor.resources = name, tuple(reads(name)), stage.resources
    ctx.ws.pull(reads(name))
    progress.set_sink(lambda p: write_json({"stage": name, **p}, ctx.ws.progress_path))
    try:
        return stage.run(ctx, key)
    finally:  # the progress file exists while a stage runs (or after a run that was killed)
        progress.set_sink(None)
        ctx.executor.stage, ctx.executor.reads, ctx.executor.resources = "", (), None
        ctx.ws.progress_path.unlink(missing_ok=True)


def run(ctx: Context, until: str | None = None) -> dict[str, dict]:
    """Run the stages in order up to and including `until`."""
    last = NAMES.index(until) if until else len(NAMES) - 1
    return {name: run_stage(ctx, name) for name in NAMES[: last + 1]}
