"""Progress bars (tqdm on stderr, items/s and ETA); `set_quiet(True)` silences them."""

from __future__ import annotations

import sys

from tqdm import tqdm

_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def bar(desc: str, unit: str, total: int | None = None) -> tqdm:
    """A progress bar; hidden when quiet or when stderr is not a terminal."""
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                mininterval=0.5, disable=True if _quiet else None, leave=False)
