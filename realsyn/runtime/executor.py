"""Executors run a stage's per-part function over its parts.

The contract a stage relies on: `map(fn, tasks)` calls the picklable top-level `fn` once per task,
anywhere, in any order, and yields each result as it completes. Each task writes its own output
part atomically, so results can arrive in any order and the output is still deterministic.
Tasks are consumed lazily with a bounded number in flight, so a streamed input never piles up in
memory. The Ray executor (`ray_executor.py`) implements the same contract on a cluster.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sized
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterable, Iterator, TypeVar

from realsyn.errors import UserError
from realsyn.runtime import mirror
from realsyn.runtime.resources import Resources

T = TypeVar("T")
R = TypeVar("R")


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


class WorkerDied(UserError, RuntimeError):
    """A worker process died (out of memory, a signal); the message names the stage and parts."""


class Executor(ABC):
    """Runs `fn` over tasks; see the module docstring for the contract."""

    workers: int
    stage: str = ""
    """The stage whose parts run now (set by the pipeline; named in error messages, keys Ray resources)."""
    reads: tuple[str, ...] = ()
    """The workspace folders its workers read (set by the pipeline; a URL workspace's workers pull them)."""
    resources: Resources | None = None
    """The running stage's declared resources per task (set by the pipeline)."""
    step: str = ""
    """What `run` runs now (its `desc`: the stage, or a phase such as "retrieve: sort"); named when a worker dies."""

    def threads_for(self, tasks: int) -> int:
        """Math-library threads per task when `tasks` tasks are to run: the machine's cores shared
        by the workers that will be busy (one task alone gets every core)."""
        return max(1, cpu_count() // max(1, min(self.workers, tasks)))

    def run(self, fn: Callable[[T], int], tasks: Iterable[T], desc: str, unit: str,
            total: int | None = None) -> int:
        """`map` with a progress bar counting the items each task reports; returns the sum."""
        from realsyn.runtime.progress import Tasks, bar

        done, tracked = 0, Tasks(desc, unit, len(tasks) if isinstance(tasks, Sized) else None)  # a stream stays lazy
        self.step = desc
        try:
            with bar(desc, unit, total) as progress:
                for n in self.map(fn, tasks):
                    progress.update(n)
                    tracked.update(n)
                    done += n
        finally:
            self.step = ""
        return done

    @abstractmethod
    def map(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        """Yield `fn(task)` for every task, in completion order."""

    def close(self) -> None:  # noqa: B027 - a default, not abstract: an executor without workers has nothing to release
        """Release workers (a no-op where there are none)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class LocalExecutor(Executor):
    """Processes on this machine; `workers=1` runs in the calling process (no pickling)."""

    def __init__(self, workers: int = 0):
        self.workers = workers or cpu_count()
        self._pool: ProcessPoolExecutor | None = None

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # forkserver: workers start from a clean process, safe next to threaded libraries.
            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("forkserver"),
                                             initializer=_exit_with, initargs=(os.getpid(),))
        return self._pool

    def map(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        if self.workers == 1:
            yield from map(fn, tasks)
            return
        fn = mirror.bind(fn)
        pool = self._get_pool()
        pending: dict[Future[R], Any] = {}
        try:
            for task in tasks:
                pending[pool.submit(fn, task)] = getattr(task, "index", None)
                if len(pending) >= 2 * self.workers:
                    yield from self._completed(pending)
            while pending:
                yield from self._completed(pending)
        except BrokenProcessPool:
            raise WorkerDied(self._death(sorted(i for i in pending.values() if i is not None))) from None

    @staticmethod
    def _completed(pending: dict[Future[R], Any]) -> Iterator[R]:
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        for f in done:
            result = f.result()
            del pending[f]
            yield result

    def _death(self, parts: list[int]) -> str:
        """One line on a worker that died: the stage, the parts in flight, the signal and its likely cause."""
        procs = list((getattr(self._pool, "_processes", None) or {}).values())
        for p in procs:  # the pool terminates the others; reap them so that every exit code is known
            p.join(timeout=2.0)
        codes = [p.exitcode for p in procs]
        sig = next((-c for c in codes if c is not None and c < 0 and -c != signal.SIGTERM), None)
        how = f"killed by {signal.Signals(sig).name}" if sig else "it ended abruptly"
        likely = "; likely out of memory: lower runtime.workers or models.batch_mib" if sig in (None, signal.SIGKILL) else ""
        parts = sorted(set(parts))  # a phase's tasks are numbered by group or block: say "task" there
        noun = "part" if self.step in ("", self.stage) else "task"
        where = f" while processing {noun} {', '.join(map(str, parts[:4]))}{' ...' if len(parts) > 4 else ''}" if parts else ""
        self.close()
        return (f"{self.step or self.stage or 'a stage'}: a worker process died{where} ({how}{likely}); "
                "finished parts are kept, re-run to resume")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


def _exit_with(driver: int) -> None:
    """In a worker: exit at once when the driver process is gone (killed), instead of finishing
    the parts it holds as an orphan."""
    def watch() -> None:
        while _alive(driver):
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="realsyn-driver-watch").start()


def _alive(pid: int) -> bool:
    """Whether process `pid` runs (a killed process waiting to be reaped, a zombie, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS): signal 0 checks existence only
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
