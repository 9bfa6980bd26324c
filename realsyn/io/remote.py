"""Inputs given as fsspec URLs (`s3://`, `gs://`, `https://`, `hf://`, any protocol fsspec knows).

The readers need local files (libzim memory-maps its archive), and Ray workers need to see the
inputs too, so a remote input is copied once into the workspace, `WORK/_inputs/<key>/<name>`,
where `key` hashes the URL with the remote size and modification stamp (ETag, mtime; for a
folder, those of every file in it): a changed remote object is fetched again, an unchanged one never. A copy is written under a temporary name
and renamed when complete; with a URL workspace it is uploaded there too, so that other nodes and
later runs elsewhere find it. Local paths (and `file://` URLs) pass through untouched.

Protocols beyond fsspec's built-ins need their package: `s3fs` for `s3://`, `gcsfs` for `gs://`,
`aiohttp` for `http(s)://` (extras `realsyn[s3]`, `realsyn[gcs]`, `realsyn[http]`).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path
from typing import Any

from fsspec.callbacks import TqdmCallback

from realsyn.io.readers import InputError
from realsyn.runtime import mirror
from realsyn.runtime.mirror import INPUTS as FOLDER
from realsyn.runtime.mirror import is_url, local_path
from realsyn.runtime.progress import bar_options

log = logging.getLogger(__name__)


def _filesystem(url: str) -> tuple[Any, str]:
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise InputError(f"cannot open {url}: {exc}".splitlines()[0]) from None


def _stamp(info: dict[str, Any]) -> str:
    """What identifies a version of a remote object: size plus the first stamp the store gives."""
    for key in ("ETag", "etag", "md5Hash", "mtime", "LastModified", "Last-Modified", "updated", "created"):
        if info.get(key) is not None:
            return f"{info.get('size')}:{info[key]}"
    return str(info.get("size"))


def _version(fs: Any, path: str, info: dict[str, Any]) -> str:
    """The stamp of a file; for a folder, a hash of every file's name and stamp."""
    if info.get("type") != "directory":
        return _stamp(info)
    files = fs.find(path, detail=True)
    return hashlib.sha256("\n".join(f"{k}\0{_stamp(v)}" for k, v in sorted(files.items())).encode()).hexdigest()


def localize(spec: str, work: Path) -> Path:
    """A local path for the input `spec`: a local path as it is, a URL copied into the workspace."""
    if not is_url(spec):
        return Path(local_path(spec))
    fs, path = _filesystem(spec)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise InputError(f"input not found: {spec}") from None
    key = hashlib.sha256(f"{spec}\0{_version(fs, path, info)}".encode()).hexdigest()[:16]
    name = Path(path.rstrip("/")).name or "input"
    local = work / FOLDER / key / name
    if not local.exists() and (m := mirror.active()) is not None:
        m.pull([local.parent.relative_to(m.local).as_posix()])  # fetched before, from another machine
    if local.exists():
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{name}.part")
    if tmp.is_dir():  # left by an interrupted fetch
        shutil.rmtree(tmp)
    tmp.unlink(missing_ok=True)
    log.info("fetching %s into %s", spec, local)
    folder = info.get("type") == "directory"
    progress = TqdmCallback(tqdm_kwargs={**bar_options(f"fetch {name}", "files" if folder else "B"),
                                         "unit_scale": not folder})
    if folder:
        fs.get(path.rstrip("/") + "/", str(tmp), recursive=True, callback=progress)
    else:
        fs.get_file(path, str(tmp), callback=progress)
    tmp.rename(local)
    if (m := mirror.active()) is not None:  # a URL workspace keeps the copy for other nodes and machines
        m.sync_up(local.parent.relative_to(m.local).as_posix())
    return local
