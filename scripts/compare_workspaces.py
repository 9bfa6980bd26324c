"""Compare the outputs of two realsyn workspaces: every parquet table (schema and rows) and every
tar shard (member names and bytes). Used to check that a refactoring leaves the pipeline's
outputs byte-identical for the same input, config and seed:

    python scripts/compare_workspaces.py WORK_A WORK_B

Exit status 0 when equal; 1 with the differing files listed. Only the tables and shards are
compared (parquet and tar files): run-specific files (manifest, config, timings in *_stats.json,
the HTML report) and a stage's internal files (retrieve's .npy index, whose storage dtype may
change without changing a result) are not.
"""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path

import pyarrow.parquet as pq

COMPARED = {".parquet", ".tar"}


def _files(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file() and p.suffix in COMPARED}


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
        else:
            same = _tar(pa_) == _tar(pb_)
        if not same:
            out.append(f"differs: {rel}")
    return out


if __name__ == "__main__":
    diff = differences(Path(sys.argv[1]), Path(sys.argv[2]))
    print("\n".join(diff) if diff else f"identical: {len(_files(Path(sys.argv[1])))} files")
    sys.exit(1 if diff else 0)
