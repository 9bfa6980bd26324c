"""Derived model artefacts on disk (ONNX exports, label embeddings) and onnxruntime sessions.

Everything lives under `$REALSYN_CACHE` (default `~/.cache/realsyn`), keyed by a hash of the
source weights, and is written atomically, so concurrent workers never read a partial file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable


def cache_root() -> Path:
    return Path(os.environ.get("REALSYN_CACHE") or Path.home() / ".cache" / "realsyn")


def file_digest(path: Path) -> str:
    """sha256 of a file, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` then rename tmp over `path`, so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def onnx_export(path: Path, module: Callable[[], Any], args: tuple, inputs: list[str],
                outputs: list[str], dynamic: dict[str, dict[int, str]]) -> Path:
    """`path`, exporting `module()` (built only when needed) with torch's TorchScript exporter first."""
    if path.is_file():
        return path
    import torch

    model = module()

    def write(tmp: Path) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated but needs no onnxscript
            torch.onnx.export(model, args, str(tmp), dynamo=False, opset_version=17, input_names=inputs,
                              output_names=outputs, dynamic_axes=dynamic)

    atomic_write(path, write)
    return path


def ort_session(path: Path, threads: int) -> Any:
    """A CPU onnxruntime session using `threads` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
