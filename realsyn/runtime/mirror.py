"""A workspace in an object store (`--out s3://…`, `gs://…`, any fsspec URL), through a local mirror.

Stages work on local files: they rename parts into place, memory-map the retrieve index and keep a
SQLite cache, none of which an object store offers. With a URL workspace they work in a scratch
copy, `$REALSYN_SCRATCH/<hash of the URL>` (default `~/.cache/realsyn/workspaces`), and the mirror
keeps the store up to date:

- a file written atomically is uploaded as soon as it is complete. An object upload appears whole
  or not at all, so the store never holds half a part, and a run killed on one machine resumes on
  another from the parts it had finished;
- the manifest is uploaded after every change, after the files it vouches for;
- before a stage runs, the folders it reads (every earlier stage, and its own when it resumes) are
  downloaded where a file is missing or differs in size; the store is the reference;
- when a stage finishes, its folder in the store is made equal to the local one (files the stage
  deleted, such as extract's `_raw`, are deleted there too);
- on a Ray cluster, each worker process downloads the folders its stage reads before its first
  part, and the driver downloads the parts other nodes wrote when the stage's parts are done.

Node-local caches stay out of the store: the image download cache (`download/`), synth's SQLite
generation cache (`synth/_cache-HOST.sqlite`) and temporary files.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from pathlib import Path
from typing import Callable, Iterable, TypeVar

from realsyn.errors import UserError
from realsyn.runtime.progress import bar

T = TypeVar("T")
R = TypeVar("R")

SCRATCH_ENV = "REALSYN_SCRATCH"
INPUTS = "_inputs"  # copies of URL inputs (`io/remote.py`); "_": never read as a stage's dataset
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
LOCAL_ONLY = ("download", ".realsyn.lock", ".progress.json")  # top-level folders and files never mirrored
TMP_MARK = ".tmp-"
CACHE_MARK = "_cache-"


def is_url(spec: str) -> bool:
    """An fsspec URL other than `file://` (which is a local path)."""
    return bool(_URL.match(spec)) and not spec.startswith("file://")


def local_path(spec: str) -> str:
    return spec[len("file://"):] if spec.startswith("file://") else spec


def default_scratch() -> Path:
    return Path(os.environ.get(SCRATCH_ENV) or Path.home() / ".cache" / "realsyn" / "workspaces")


def mirrored(rel: str) -> bool:
    """Whether a workspace-relative path belongs in the store (caches and temporary files do not)."""
    parts = rel.split("/")
    name = parts[-1]
    return parts[0] not in LOCAL_ONLY and TMP_MARK not in name and not name.startswith(CACHE_MARK)


class StoreError(UserError, RuntimeError):
    """The store cannot be read or written (missing bucket, no credentials, network); one line."""


def _store_call(method: Callable[..., R]) -> Callable[..., R]:
    """Turn a failure of the store into a one-line StoreError naming the workspace."""
    @functools.wraps(method)
    def wrapper(self: Mirror, *args: object, **kwargs: object) -> R:
        try:
            return method(self, *args, **kwargs)
        except StoreError:
            raise
        except Exception as exc:  # s3fs/gcsfs/botocore raise many types; all mean "the store failed"
            raise StoreError(f"workspace {self.url}: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
    return wrapper


class Mirror:
    """The store folder `url` and its local copy `local`."""

    def __init__(self, url: str, local: Path):
        import fsspec

        self.url, self.local = url.rstrip("/"), Path(local)
        self.fs, self.base = fsspec.core.url_to_fs(self.url)

    @classmethod
    def for_url(cls, url: str, scratch: Path | None = None) -> Mirror:
        key = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
        return cls(url, (scratch or default_scratch()) / key)

    @property
    def spec(self) -> tuple[str, str]:
        return self.url, str(self.local)

    def _remote(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    def _rel(self, path: Path) -> str | None:
        try:
            return path.resolve().relative_to(self.local.resolve()).as_posix()
        except ValueError:
            return None

    @_store_call
    def _listing(self, rel: str, maxdepth: int | None = None) -> dict[str, int]:
        """Workspace-relative path -> size of the mirrored files under `rel` in the store."""
        self.fs.invalidate_cache()
        try:
            found = self.fs.find(self._remote(rel), maxdepth=maxdepth, detail=True)
        except FileNotFoundError:
            return {}
        prefix = self.base.rstrip("/") + "/"
        out = {}
        for path, info in found.items():
            r = path[len(prefix):] if path.startswith(prefix) else None
            if r and info.get("type", "file") != "directory" and mirrored(r):
                out[r] = int(info.get("size") or 0)
        return out

    @_store_call
    def push(self, path: Path) -> None:
        """Upload one finished local file (a no-op outside the workspace or for a cache file)."""
        rel = self._rel(path)
        if rel and mirrored(rel):
            self.fs.put_file(str(path), self._remote(rel))

    def fetch(self, path: Path) -> None:
        """Download the workspace file at local `path` when it is missing here (a file another
        node wrote); a no-op outside the workspace."""
        rel = self._rel(path)
        if rel and not path.exists():
            self.pull_file(rel)

    def sync_up_path(self, path: Path) -> None:
        """`sync_up` of the workspace folder at local `path` (a no-op outside the workspace)."""
        rel = self._rel(path)
        if rel:
            self.sync_up(rel)

    @_store_call
    def pull_file(self, rel: str) -> bool:
        """Download one file (replacing the local copy); False when the store has none."""
        self.fs.invalidate_cache()
        if not self.fs.exists(self._remote(rel)):
            return False
        self._download(rel)
        return True

    def _download(self, rel: str) -> None:
        dest = self.local / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f"{dest.name}{TMP_MARK}{os.getpid()}")
        try:
            self.fs.get_file(self._remote(rel), str(tmp))
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    @_store_call
    def pull(self, rels: Iterable[str], maxdepth: int | None = None) -> int:
        """Download the files under each folder `rel` that are missing here or differ in size;
        returns how many were downloaded."""
        todo = [r for rel in rels for r, size in self._listing(rel, maxdepth).items()
                if not (self.local / r).is_file() or (self.local / r).stat().st_size != size]
        if todo:
            with bar(f"download {', '.join(rels)}", "files", len(todo)) as progress:
                for r in todo:
                    self._download(r)
                    progress.update(1)
        return len(todo)

    @_store_call
    def sync_up(self, rel: str) -> None:
        """Make the store's folder `rel` equal to the local one."""
        remote = self._listing(rel)
        root = self.local / rel
        here = {p.relative_to(self.local).as_posix(): p for p in root.rglob("*") if p.is_file()} if root.exists() else {}
        for r, p in sorted(here.items()):
            if mirrored(r) and remote.get(r) != p.stat().st_size:
                self.fs.put_file(str(p), self._remote(r))
        gone = [self._remote(r) for r in sorted(set(remote) - set(here))]
        if gone:
            self.fs.rm(gone)

    @_store_call
    def remove(self, rel: str) -> None:
        """Delete the store's folder `rel`."""
        self.fs.invalidate_cache()
        if self.fs.exists(self._remote(rel)):
            self.fs.rm(self._remote(rel), recursive=True)


_ACTIVE: list[Mirror | None] = [None]
_PULLED: set[tuple[str, str]] = set()


def activate(mirror: Mirror | None) -> None:
    """Make `mirror` this process's (atomic writes under its local root are uploaded)."""
    _ACTIVE[0] = mirror


def active() -> Mirror | None:
    return _ACTIVE[0]


@functools.lru_cache(maxsize=4)
def _open(url: str, local: str) -> Mirror:
    return Mirror(url, Path(local))


def _in_worker(spec: tuple[str, str], reads: tuple[str, ...], stage: str, fn: Callable[[T], R], task: T) -> R:
    """A part run in a worker process: the driver's mirror is made active; with `reads`, the
    folders the stage reads (and its own top-level files, e.g. the retrieve index) are downloaded
    once per process, for workers on other nodes than the driver."""
    m, before = _open(*spec), active()
    activate(m)
    try:
        if reads and (m.url, stage) not in _PULLED:
            m.pull(reads)
            m.pull([stage], maxdepth=1)
            _PULLED.add((m.url, stage))
        return fn(task)
    finally:
        activate(before)  # a reused worker process may next serve a local workspace


def bind(fn: Callable[[T], R], stage: str = "", reads: tuple[str, ...] = ()) -> Callable[[T], R]:
    """`fn` wrapped to run with this process's mirror in a worker; `fn` itself without one."""
    m = active()
    return fn if m is None else functools.partial(_in_worker, m.spec, reads, stage, fn)
