"""The workspace: one folder per stage, parts written atomically, and `manifest.json`.

A stage's *key* hashes its config section, its input (the inputs' fingerprint for the first
stage, the upstream stage's key for the others) and the seed. When the key recorded in the
manifest differs, the stage's folder is wiped and the stage redone; since every downstream key
contains its upstream key, everything downstream is redone too. Finished parts are skipped on
re-run, and a part is never half-written: it is written under a temporary name, then renamed.

The workspace may be an fsspec URL (`s3://…`, `gs://…`): stages then work in a local scratch copy
that `mirror.Mirror` keeps in step with the store (see there).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import time
import zlib
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from realsyn.errors import UserError
from realsyn.io.policy import ReadPolicy, walk_files
from realsyn.runtime import mirror
from realsyn.runtime.mirror import INPUTS, TMP_MARK, is_url, local_path

FOLLOW = ReadPolicy(follow_symlinks=True)
_FAULT_WRITES = [0]


def _fault_hook(path: Path) -> None:
    """Test hook for fault injection, off unless REALSYN_FAULT=FOLDER:N[:MODE] is set: at the Nth
    atomic write (in this process) into a path with a FOLDER component (e.g. a stage's folder),
    after the temporary file is written and before the rename, `kill` (default) sends SIGKILL to
    this process and `enospc` raises "No space left on device"."""
    spec = os.environ.get("REALSYN_FAULT")
    if not spec:
        return
    folder, _, rest = spec.partition(":")
    n, _, mode = rest.partition(":")
    if folder not in path.parts:
        return
    _FAULT_WRITES[0] += 1
    if _FAULT_WRITES[0] == int(n):
        if mode == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it onto `path` only if the block succeeds (and,
    with a URL workspace, upload it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")
    try:
        yield tmp
        _fault_hook(path)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if (m := mirror.active()) is not None:
        m.push(path)


def write_table(table: pa.Table, path: Path) -> None:
    """Write a parquet file atomically."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def write_text(text: str, path: Path) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


PROGRESS = ".progress.json"  # the running stage's tasks done / total (`runtime/progress.py`); local only


def write_json(data: Any, path: Path) -> None:
    """Write a JSON file atomically."""
    write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", path)


def summarize(counts: Counter) -> dict[str, Any]:
    """Manifest counts from a Counter of `kept` and `rejected:REASON`: read = kept + rejected."""
    reasons = {k.split(":", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith("rejected:") and v}
    kept = counts.get("kept", 0)
    return {"read": kept + sum(reasons.values()), "kept": kept, "rejected": sum(reasons.values()),
            "reasons": reasons}


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def fingerprint(paths: list[Path], work: Path | None = None) -> str:
    """A cheap fingerprint of input files: names, sizes and modification times. A copy of a URL
    input in workspace `work` (`WORK/_inputs/KEY/…`) is fingerprinted by its path from there alone:
    KEY already hashes the URL and its version, and the copy may not be on this machine."""
    h = hashlib.sha256()
    for root in paths:
        if work is not None and (copy := input_copy(root, work)) is not None:
            h.update(f"{copy}\n".encode())
            continue
        files = sorted(walk_files(root, FOLLOW)) if root.is_dir() else [root]
        for f in files:
            st = f.stat()
            h.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def input_copy(path: Path, work: Path) -> str | None:
    """`_inputs/KEY/NAME` when `path` is the copy of a URL input in workspace `work`, else None."""
    try:
        rel = Path(path).resolve().relative_to(Path(work).resolve())
    except ValueError:
        return None
    return rel.as_posix() if rel.parts[:1] == (INPUTS,) else None


def _ends_crc(path: Path, size: int, span: int = 1 << 16) -> int:
    """CRC-32 of a file's first and last `span` bytes (a parquet footer, a tar's last members)."""
    with path.open("rb") as f:
        head = f.read(span)
        f.seek(max(0, size - span))
        return zlib.crc32(f.read(span), zlib.crc32(head))


class WorkspaceError(UserError):
    """The workspace cannot be used as it is (not a workspace, in use, damaged manifest)."""


LOCK = mirror.LOCAL_ONLY[1]
"""Held (flock) by the one run working on a workspace; the kernel drops it when that run dies."""


class Workspace:
    """The folder of one pipeline run: a local path, or a URL worked on in a local mirror `root`."""

    def __init__(self, location: Path | str, scratch: Path | None = None):
        self.location = str(location)
        self.mirror = mirror.Mirror.for_url(self.location, scratch) if is_url(self.location) else None
        self.root = self.mirror.local if self.mirror else Path(local_path(self.location))
        self.manifest_path = self.root / "manifest.json"
        self.progress_path = self.root / PROGRESS
        mirror.activate(self.mirror)
        if self.mirror is not None:  # the store is the reference: its manifest and config, or none
            for name in ("manifest.json", "config.yaml"):
                if not self.mirror.pull_file(name):
                    (self.root / name).unlink(missing_ok=True)

    @property
    def name(self) -> str:
        """What the user calls the workspace: its URL, or its absolute path."""
        return self.location if self.mirror else str(self.root.resolve())

    def pull(self, names: list[str]) -> None:
        """With a URL workspace: download what the store has of these folders and this one lacks."""
        if self.mirror is not None:
            self.mirror.pull(names)

    def check_owned(self) -> None:
        """Refuse a folder that holds other files but is no workspace (nothing of the user's is
        ever deleted), and a file; writes nothing."""
        root = self.root
        if root.exists() and not root.is_dir():
            raise WorkspaceError(f"--out {self.name} is a file, not a folder")
        if root.is_dir() and not self.manifest_path.exists():
            others = sorted(p.name for p in root.iterdir() if p.name not in (LOCK, INPUTS))
            if others:
                raise WorkspaceError(f"--out {self.name} is a folder that is not a realsyn workspace (it holds "
                                     f"{', '.join(others[:3])}{', ...' if len(others) > 3 else ''}): give an empty or new folder")

    def claim(self) -> None:
        """Make this process the one run working here: check the folder (`check_owned`), take the
        lock (one that a killed run left is taken over: the kernel released it when it died),
        and mark a new workspace."""
        self.check_owned()
        self.root.mkdir(parents=True, exist_ok=True)
        lock = (self.root / LOCK).open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            raise WorkspaceError(f"workspace {self.name} is in use by another realsyn run ({holder}); "
                                 "wait for it to finish or stop it") from None
        lock.truncate(0)
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        lock.flush()
        self._lock = lock  # held until this process ends
        if not self.manifest_path.exists():
            write_json({"stages": {}}, self.manifest_path)

    def manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {"stages": {}}
        try:
            m = json.loads(self.manifest_path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise WorkspaceError(f"{self.manifest_path} is damaged ({exc}): restore it, or start a new workspace") from None
        if not (isinstance(m, dict) and isinstance(m.get("stages"), dict)
                and all(isinstance(v, dict) for v in m["stages"].values())):
            raise WorkspaceError(f"{self.manifest_path} is damaged (not a realsyn manifest): restore it, or start a new workspace")
        return m

    def _files(self, name: str) -> dict[str, list[int]]:
        """[size, mtime, ends checksum] of every file of a stage's folder that the store keeps."""
        d, out = self.dir(name), {}
        for p in sorted(walk_files(d)) if d.exists() else []:
            rel = p.relative_to(self.root).as_posix()
            if mirror.mirrored(rel):
                st = p.stat()
                out[p.relative_to(d).as_posix()] = [st.st_size, st.st_mtime_ns, _ends_crc(p, st.st_size)]
        return out

    def damaged(self, name: str) -> list[str]:
        """Files of a finished stage that were deleted or changed since it finished: another size,
        or another mtime and other first/last 64 KiB (a copy of the workspace keeps its content,
        so it is not damaged). With a URL workspace the sizes in the store are compared."""
        recorded = self.stage(name).get("files")
        if not isinstance(recorded, dict):
            return []
        if self.mirror is not None:
            sizes = self.mirror._listing(name)
            return sorted(rel for rel, stat in recorded.items() if sizes.get(f"{name}/{rel}") != stat[0])
        d, out = self.dir(name), []
        for rel, (size, mtime, crc) in sorted(recorded.items()):
            try:
                st = (d / rel).stat()
            except OSError:
                out.append(rel)
                continue
            if st.st_size != size or (st.st_mtime_ns != mtime and _ends_crc(d / rel, size) != crc):
                out.append(rel)
        return out

    def stage(self, name: str) -> dict[str, Any]:
        return self.manifest()["stages"].get(name, {})

    def note(self, name: str, **fields: Any) -> None:
        """Record facts about a running stage (e.g. a finished phase) in the manifest."""
        self._update(name, **fields)

    def _update(self, name: str, **fields: Any) -> None:
        m = self.manifest()
        m["stages"].setdefault(name, {}).update(fields)
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(m, self.manifest_path)

    def recorded(self, path: Path) -> str:
        """How an input is recorded in the manifest: a URL input's copy relative to the workspace
        (so it holds on another machine), anything else as given."""
        return input_copy(path, self.root) or str(path)

    def dir(self, name: str) -> Path:
        return self.root / name

    def is_current(self, name: str, key: str) -> bool:
        """True when the stage finished with this key and none of its files is damaged."""
        st = self.stage(name)
        return st.get("status") == "done" and st.get("key") == key and not self.damaged(name)

    def begin(self, name: str, key: str, *, whole: bool = False, **info: Any) -> Path:
        """Prepare a stage for running: wipe it if it ran with another key, drop leftovers of
        killed writers, and mark it running. Files damaged since it finished are deleted, so the
        stage's resume redoes them; with `whole` (a stage whose parts cannot be redone one by one)
        a damaged stage is wiped. Returns the stage folder."""
        d = self.dir(name)
        damaged = self.damaged(name)
        for rel in damaged:
            (d / rel).unlink(missing_ok=True)
            if self.mirror is not None:
                self.mirror.remove(f"{name}/{rel}")
        if self.stage(name).get("key") != key or (damaged and whole):
            if d.exists():
                shutil.rmtree(d)
            if self.mirror is not None:
                self.mirror.remove(name)
            m = self.manifest()
            m["stages"].pop(name, None)
            self.root.mkdir(parents=True, exist_ok=True)
            write_json(m, self.manifest_path)
        else:
            self.pull([name])  # resume from the parts the store holds
        self._drop_leftovers(name)
        d.mkdir(parents=True, exist_ok=True)
        self._update(name, status="running", key=key, started=time.time(), **info)
        return d

    def _drop_leftovers(self, name: str) -> None:
        """Delete the temporary files of writers that died (no writer of the stage is running)."""
        d = self.dir(name)
        for tmp in d.rglob(f"*{TMP_MARK}*") if d.exists() else []:
            tmp.unlink(missing_ok=True)

    def finish(self, name: str, counts: dict[str, Any], seconds: float) -> None:
        """Mark a stage done; temporary files of workers killed during the run are dropped. With a
        URL workspace, the stage's folder in the store is made equal to the local one first."""
        self._drop_leftovers(name)
        if self.mirror is not None:
            self.mirror.sync_up(name)
        self._update(name, status="done", counts=counts, seconds=round(seconds, 3), finished=time.time(),
                     files=self._files(name))

    def parts(self, name: str, table: str) -> list[Path]:
        """The finished parts of a stage's table, in order."""
        d = self.dir(name) / table
        return sorted(d.glob("part-*.parquet")) if d.exists() else []
