"""Progress bars (tqdm on stderr, items/s and ETA) on a terminal, progress log lines elsewhere;
`set_quiet(True)` silences both."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from tqdm import tqdm

_quiet = False


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
