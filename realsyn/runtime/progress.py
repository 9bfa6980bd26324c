"""Progress bars (tqdm on stderr, items/s and ETA) on a terminal, progress log lines elsewhere;
`set_quiet(True)` silences both. A sink (`set_sink`, set by the pipeline to a file in the
workspace) gets the tasks done / total of the running stage, so `realsyn status` can show them
from another shell."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Callable

from tqdm import tqdm

_quiet = False
_sink: Callable[[dict[str, Any]], None] | None = None
SINK_SECONDS = 2.0


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def bar_options(desc: str, unit: str) -> dict[str, Any]:
    """tqdm settings of every bar (for libraries that make their own, such as fsspec)."""
    return dict(desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, mininterval=0.5,
                disable=True if _quiet else None, leave=False)


class _LogBar(tqdm):
    """A bar that, with stderr not a terminal (a batch job, a log file), writes a log line with
    count, rate and ETA every LOG_SECONDS instead of redrawing itself."""

    shown = -1
    disable: bool

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        d = dict(self.format_dict)
        d["ncols"] = 0  # no bar graphics: count, rate and ETA only
        log.info("%s", self.format_meter(**d))
        self.shown = self.n
        return True

    def close(self) -> None:
        if not self.disable and self.n != self.shown:
            self.display()
        self.disable = True  # nothing to clear on a log
        super().close()


LOG_SECONDS = float(os.environ.get("REALSYN_PROGRESS_SECONDS", "30"))
log = logging.getLogger("realsyn.progress")


def bar(desc: str, unit: str, total: int | None = None) -> tqdm:
    """A progress bar on a terminal; a progress log line every LOG_SECONDS otherwise (`--quiet`:
    neither)."""
    if _quiet or sys.stderr.isatty():
        return tqdm(total=total, **bar_options(desc, unit))
    return _LogBar(total=total, **{**bar_options(desc, unit), "disable": False, "mininterval": LOG_SECONDS,
                                   "maxinterval": LOG_SECONDS})


def set_sink(sink: Callable[[dict[str, Any]], None] | None) -> None:
    """Where `Tasks` reports go (None: nowhere)."""
    global _sink
    _sink = sink


class Tasks:
    """Tasks done / total and items of one batch of work, reported to the sink at most every
    SINK_SECONDS and at the end."""

    def __init__(self, desc: str, unit: str, total: int | None):
        self.desc, self.unit, self.total, self.done, self.items = desc, unit, total, 0, 0
        self.started = self.sent = time.time()
        self._send()

    def update(self, items: int) -> None:
        self.done, self.items = self.done + 1, self.items + items
        if self.done == self.total or time.time() - self.sent >= SINK_SECONDS:  # a total of None: as it comes
            self._send()

    def _send(self) -> None:
        if _sink is None:
            return
        self.sent = now = time.time()
        elapsed = now - self.started
        eta = elapsed * (self.total - self.done) / self.done if self.done and self.total is not None else None
        _sink({"desc": self.desc, "unit": self.unit, "tasks_done": self.done, "tasks_total": self.total,
               "items": self.items, "items_per_s": round(self.items / elapsed, 2) if elapsed > 0 else None,
               "eta_seconds": round(eta, 1) if eta is not None else None, "updated": round(now, 3)})
