"""Compare the outputs of two realsyn workspaces: every parquet table (schema and rows) and every
tar shard (member names and bytes). Used to check that a refactoring leaves the pipeline's
outputs byte-identical for the same input, config and seed:

    python scripts/compare_workspaces.py WORK_A WORK_B

Exit status 0 when equal; 1 with the differing files listed. Run-specific files (manifest,
config, timings in *_stats.json, the HTML report) are skipped.
"""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path

import pyarrow.parquet as pq

SKIP_SUFFIXES = {".json", ".yaml", ".html", ".lock"}


def _files(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix not in SKIP_SUFFIXES and not p.name.startswith(".") and "_cache-" not in p.name}


def _tar(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read() if m.isfile() else b"") for m in tar]  # type: ignore[union-attr]


def differences(a: Path, b: Path) -> list[str]:
    fa, fb = _files(a), _files(b)
    out = [f"only in {a}: {k}" for k in sorted(fa.keys() - fb.keys())] + [f"only in {b}: {k}" for k in sorted(fb.keys() - fa.keys())]
    for rel in sorted(fa.keys() & fb.keys()):
        pa_, pb_ = fa[rel], fb[rel]
        if rel.endswith(".parquet"):
            same = pq.read_table(pa_).equals(pq.read_table(pb_))
        elif rel.endswith(".tar"):
            same = _tar(pa_) == _tar(pb_)
        else:
            same = pa_.read_bytes() == pb_.read_bytes()
        if not same:
            out.append(f"differs: {rel}")
    return out


if __name__ == "__main__":
    diff = differences(Path(sys.argv[1]), Path(sys.argv[2]))
    print("\n".join(diff) if diff else f"identical: {len(_files(Path(sys.argv[1])))} files")
    sys.exit(1 if diff else 0)
