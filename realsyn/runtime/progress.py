"""Progress bars (tqdm on stderr, items/s and ETA); `set_quiet(True)` silences them."""

from __future__ import annotations

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


def bar(desc: str, unit: str, total: int | None = None) -> tqdm:
    """A progress bar; hidden when quiet or when stderr is not a terminal."""
    return tqdm(total=total, **bar_options(desc, unit))
