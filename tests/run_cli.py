"""`realsyn` as a user runs it: a subprocess with the offline model settings (shared by tests)."""

from __future__ import annotations

import os
import subprocess
import sys


def realsyn(*args: str, check: bool = True, timeout: float = 1200) -> subprocess.CompletedProcess:
    """Run `python -m realsyn.cli ARGS`; with `check`, a non-zero exit fails with its stderr."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "realsyn.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)
    assert not check or done.returncode == 0, f"realsyn {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done
