"""The Ray executor: a stage's parts run as Ray tasks on a cluster (issue 8).

Each part is one Ray task (`_run_part`, or an actor call), submitted as the stage's task iterator yields it, with at
most twice `workers` (or the cluster's CPUs) in flight; results come back in completion order, as
with the local executor. Resources per task come from `runtime.ray.num_cpus` / `num_gpus`, keyed by
the stage that owns the task function (`realsyn.<stage>.…`).

Model stages (`runtime.ray.actors`) run their parts on a pool of `PartRunner` actors, one per
slot, for the stage's lifetime (its later steps, such as extract's dedup tasks, reuse them; the
next model stage's pool replaces them): `realsyn.models.load` is cached per process, so an actor loads its
models on its first part and then takes part after part (a part is the batch). Other stages run
plain tasks, declared with `max_calls=0` so that Ray reuses their worker processes.

Failures: a part whose worker dies (killed, out of memory, node lost) or whose task raises is
retried up to `max_retries` times. Parts are written under a temporary name and renamed, so a
killed attempt leaves no half-written part, and retries rewrite the same bytes. A part that still
fails is logged with its error; the other parts run to the end, then `PartsFailed` stops the run.

Workers open the same paths as the driver (after `chdir` to the driver's working directory): a
local workspace and local inputs must be on a filesystem every node mounts at the same path. With
a URL workspace (`mirror.py`), each node works in its own scratch copy at the same path: a
worker downloads the folders its stage reads before its first part, and the driver downloads
the parts other nodes wrote when the stage's parts are done.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

from realsyn.config import RayConfig
from realsyn.errors import PipelineError
from realsyn.runtime import mirror
from realsyn.runtime.executor import Executor
from realsyn.runtime.resources import Resources

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger(__name__)

# Environment passed on to the workers: offline model settings, realsyn's own switches, and where
# the object store is (endpoint, region, profile name; never credentials, which each node has).
FORWARD_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "HF_HUB_CACHE",
               "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE")
# Test-only fault injection: kill the worker once per listed stage, mid-part (see `_kill_hook`).
KILL_STAGES, KILL_DIR, KILL_AFTER = "REALSYN_TEST_KILL_STAGES", "REALSYN_TEST_KILL_DIR", "REALSYN_TEST_KILL_AFTER"


class PartsFailed(PipelineError):
    """Some parts kept failing after their retries; the others finished."""


def stage_of(fn: Callable[..., Any]) -> str:
    """The stage owning a task function: `realsyn.embed.stage._process` -> `embed`."""
    parts = fn.__module__.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def describe(task: Any) -> str:
    """A short label of a task: its scalar and path fields (never its payload)."""
    if not is_dataclass(task):
        return type(task).__name__
    shown = []
    for f in fields(task):
        v = getattr(task, f.name)
        if isinstance(v, (int, str)) and len(str(v)) <= 40:
            shown.append(f"{f.name}={v!r}")
        elif isinstance(v, Path):
            shown.append(f"{f.name}={v.name}")
        elif isinstance(v, tuple) and all(isinstance(x, int) for x in v):
            shown.append(f"{f.name}={list(v)}")
    return f"{type(task).__name__}({', '.join(shown)})"


def _kill_hook(stage: str) -> Callable[[], None] | None:
    """Test hook: when REALSYN_TEST_KILL_STAGES lists `stage` and this task is the first to claim
    its marker in REALSYN_TEST_KILL_DIR, SIGKILL this worker after REALSYN_TEST_KILL_AFTER seconds
    (mid-part). Returns the kill, for when the part ends first (its result is then lost)."""
    if stage not in os.environ.get(KILL_STAGES, "").split(","):
        return None
    try:
        os.close(os.open(Path(os.environ[KILL_DIR]) / f"killed-{stage}", os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return None

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Timer(float(os.environ.get(KILL_AFTER, "0.3")), die).start()
    return die


def _run_part(fn: Callable[[T], R], task: T, cwd: str, stage: str) -> R:
    """The Ray task: one part, run in the driver's working directory."""
    if os.path.isdir(cwd) and os.getcwd() != cwd:
        os.chdir(cwd)
    die = _kill_hook(stage)
    result = fn(task)
    if die is not None:
        die()
    return result


class PartRunner:
    """A Ray actor of a model stage: the models its parts load (`realsyn.models.load`, cached per
    process) are loaded by its first part and serve every later one."""

    def run(self, fn: Callable[[T], R], task: T, cwd: str, stage: str) -> R:
        return _run_part(fn, task, cwd, stage)


class _TaskPool:
    """Parts as plain Ray tasks; twice the slots are submitted ahead, as with the local executor,
    so a worker finds its next part waiting."""

    def __init__(self, submit: Callable[..., Any], slots: int):
        self.submit, self.cap = submit, 2 * slots

    def done(self, ref: Any) -> None:
        pass

    def close(self) -> None:
        pass


class _ActorPool:
    """One `PartRunner` actor per slot, for the stage's lifetime; a part goes to the actor with the
    fewest parts queued (at most two each). A dead actor is restarted and its parts retried up to
    `max_retries` times (`retry_exceptions` for a part that raised)."""

    def __init__(self, ray: Any, actor: Any, options: dict[str, Any], slots: int):
        retries = options["max_retries"]
        make = actor.options(num_cpus=options["num_cpus"], num_gpus=options["num_gpus"], max_restarts=-1,
                             max_task_retries=retries)
        self.ray, self.actors, self.cap = ray, [make.remote() for _ in range(slots)], 2 * slots
        self.load, self.owner = [0] * slots, dict[Any, int]()
        self._call = {"max_task_retries": retries, "retry_exceptions": True}

    def submit(self, *args: Any) -> Any:
        i = min(range(len(self.actors)), key=self.load.__getitem__)
        ref = self.actors[i].run.options(**self._call).remote(*args)
        self.load[i] += 1
        self.owner[ref] = i
        return ref

    def done(self, ref: Any) -> None:
        self.load[self.owner.pop(ref)] -= 1

    def reset(self) -> None:
        """Forget parts of an interrupted run (cancelled)."""
        self.load, self.owner = [0] * len(self.actors), {}

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)


class RayExecutor(Executor):
    """Runs parts as Ray tasks; connects (or starts a local cluster) on first use."""

    def __init__(self, cfg: RayConfig | None = None, workers: int = 0):
        self.cfg = cfg or RayConfig()
        self.workers = workers
        self._started = False
        self._remote: Any = None
        self._actor: Any = None
        self._actors: tuple[str, _ActorPool] | None = None  # the running model stage's actors

    def threads_for(self, tasks: int) -> int:
        """Math threads per task: the CPUs a task reserves by default (at least 1). A task that
        runs alone (a k-means fit, a stage of one part) gets the CPUs of the smallest node: no
        other task of the run shares its node while it runs."""
        each = max(1, int(self.cfg.num_cpus.get("default", 1.0)))
        if tasks != 1:
            return each
        nodes = [n["Resources"].get("CPU", 0) for n in self._connect().nodes() if n.get("Alive")]
        return max(each, int(min(nodes, default=each)))

    def _connect(self) -> Any:
        import ray

        if self._remote is not None:
            return ray
        if not ray.is_initialized():
            address = self.cfg.address or os.environ.get("RAY_ADDRESS") or "local"
            env = {k: v for k, v in os.environ.items() if k in FORWARD_ENV or k.startswith(("REALSYN_", "FSSPEC_"))}
            local: dict[str, Any] = {"num_cpus": self.workers or None, "include_dashboard": False,
                     "object_store_memory": self.cfg.object_store_mb << 20 or None} if address == "local" else {}
            ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True, **local)
            self._started = True
            log.info("ray: %s, resources %s", "local cluster" if local else address, ray.cluster_resources())
        self._remote = ray.remote(max_calls=0)(_run_part)
        self._actor = ray.remote(PartRunner)
        return ray

    def _options(self, stage: str) -> dict[str, Any]:
        """Ray options of a stage's tasks: `runtime.ray` per stage, else what the stage declares
        (when it declares more than the defaults), else `runtime.ray`'s default."""
        declared, plain = self.resources or Resources(), Resources()

        def pick(table: dict[str, float], mine: float, base: float, default: float) -> float:
            return table[stage] if stage in table else mine if mine != base else table.get("default", default)

        return {"num_cpus": pick(self.cfg.num_cpus, declared.cpus, plain.cpus, 1.0),
                "num_gpus": pick(self.cfg.num_gpus, declared.gpus, plain.gpus, 0.0),
                "max_retries": self.cfg.max_retries, "retry_exceptions": True}

    def _fits(self, ray: Any, stage: str) -> int:
        """How many of a stage's parts the cluster's CPUs (and GPUs, for a stage that reserves
        some) hold at once."""
        opts, have = self._options(stage), ray.cluster_resources()
        fits = [have.get(r, 0) / opts[k] for r, k in (("CPU", "num_cpus"), ("GPU", "num_gpus")) if opts[k] > 0]
        return max(1, int(min(fits, default=have.get("CPU", 1))))

    def _pool(self, ray: Any, stage: str) -> _TaskPool | _ActorPool:
        """Parts run on `workers` slots (0 = as many as the cluster holds); actors never more than
        the cluster holds, since an actor that cannot be placed would keep its parts waiting."""
        if self._actors is not None and self._actors[0] != stage:
            self._close_actors()
        fits = self._fits(ray, stage)
        if stage not in self.cfg.actors:
            return _TaskPool(self._remote.options(**self._options(stage)).remote, self.workers or fits)
        if self._actors is None:
            self._actors = (stage, _ActorPool(ray, self._actor, self._options(stage), min(self.workers or fits, fits)))
        else:  # a stage's later steps (extract's dedup) reuse its actors
            self._actors[1].reset()
        return self._actors[1]

    def _close_actors(self) -> None:
        """Free the model stage's actors: they hold its CPUs and GPUs, which the next stage needs."""
        if self._actors is not None:
            self._actors[1].close()
            self._actors = None

    def map(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        stage, cwd = self.stage or stage_of(fn), os.getcwd()
        reads = self.reads
        yield from self._map(mirror.bind(fn, stage, reads), tasks, stage, cwd)
        if (m := mirror.active()) is not None and reads:  # the parts that workers on other nodes wrote
            m.pull([stage])

    def _map(self, fn: Callable[[T], R], tasks: Iterable[T], stage: str, cwd: str) -> Iterator[R]:
        ray: Any = None
        pool: Any = None  # _TaskPool | _ActorPool, made at the first task
        pending: dict[Any, T] = {}
        failed: list[tuple[str, str]] = []

        def collect() -> Iterator[R]:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                task = pending.pop(ref)
                pool.done(ref)
                try:
                    yield ray.get(ref)
                except ray.exceptions.RayError as exc:
                    cause = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                    failed.append((describe(task), cause))
                    log.error("%s: part %s failed after %d retries: %s", stage, describe(task),
                              self.cfg.max_retries, exc)

        try:
            for task in tasks:
                if pool is None:  # connect at the first part: a stage with nothing to do starts no cluster
                    ray = self._connect()
                    pool = self._pool(ray, stage)
                pending[pool.submit(fn, task, cwd, stage)] = task
                while len(pending) >= pool.cap:
                    yield from collect()
            while pending:
                yield from collect()
        finally:
            for ref in pending:  # interrupted: do not leave work running on the cluster
                ray.cancel(ref)
            if pool is not None and not isinstance(pool, _ActorPool):
                pool.close()
        if failed:
            first = "; ".join(f"{label}: {cause}" for label, cause in failed[:3])
            raise PartsFailed(f"{stage}: {len(failed)} part(s) failed after {self.cfg.max_retries} retries "
                              f"(the others finished; re-run to retry them): {first}")

    def close(self) -> None:
        self._close_actors()
        if self._started:
            import ray

            ray.shutdown()
            self._started = False
        self._remote = None

