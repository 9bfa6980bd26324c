"""What a reader may read: the folders a local path may resolve into, and a byte cap on every unit.

Every path taken from the data (an OBELICS image path, an `<img src>`, an EPUB member, a file in
an input folder) is read only if its real path (symbolic links resolved) lies inside the input
itself or inside one of `roots`; otherwise the item is rejected as `outside_input`. Every unit
read (a local file, a zip member, a ZIM entry, a WARC record, a parquet cell) is capped at
`max_item_bytes`, and every page or text body at `max_document_bytes`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MIB = 1 << 20


@dataclass(frozen=True)
class ReadPolicy:
    """Limits of one reading pass (picklable; built from `extract` config by `from_config`)."""

    roots: tuple[Path, ...] = ()
    """Extra folders (resolved) that local image paths may point into (`extract.images.roots`)."""
    follow_symlinks: bool = False
    """Follow symbolic links in an input folder that point outside it (`extract.follow_symlinks`)."""
    max_item_bytes: int = 64 * MIB
    """Largest unit read: image file, zip member, ZIM entry, WARC record, parquet cell."""
    max_document_bytes: int = 16 * MIB
    """Largest page body (HTML/XHTML) and largest total text of one document."""
    main_content: str = "auto"
    """Drop page text outside the main content (trafilatura): `on`, `off`, or `auto` (web pages)."""

    def main_content_for(self, web: bool) -> bool:
        """Whether to keep only the main content of a page (`web`: from a web archive)."""
        return self.main_content == "on" or (self.main_content == "auto" and web)

    def inside(self, path: Path, root: Path | None = None) -> bool:
        """Whether `path`'s real path lies in `root` (resolved) or one of the extra roots."""
        real = Path(os.path.realpath(path))
        tops = (*((Path(os.path.realpath(root)),) if root is not None else ()), *self.roots)
        return any(real.is_relative_to(top) for top in tops)


DEFAULT = ReadPolicy()


def from_config(cfg: object) -> ReadPolicy:
    """The policy of an `ExtractConfig` (duck-typed to keep `io` free of the config module)."""
    return ReadPolicy(roots=tuple(Path(os.path.realpath(os.path.expanduser(r))) for r in cfg.images.roots),  # type: ignore[attr-defined]
                      follow_symlinks=cfg.follow_symlinks,  # type: ignore[attr-defined]
                      max_item_bytes=cfg.max_item_mib * MIB,  # type: ignore[attr-defined]
                      max_document_bytes=cfg.max_document_mib * MIB,  # type: ignore[attr-defined]
                      main_content=cfg.main_content)  # type: ignore[attr-defined]


def walk_files(root: Path, policy: ReadPolicy = DEFAULT, skipped: list[Path] | None = None) -> Iterator[Path]:
    """The regular files under the folder `root`, depth first, in no particular order.

    Iterative (a tree thousands of levels deep is no recursion error); a folder that cannot be
    listed (permissions, a path too long) is passed over. A symbolic link (to a file or folder)
    whose target leaves `root` is not followed unless `policy.follow_symlinks`; each such link
    is appended to `skipped`. Linked folders are entered once (no cycles).
    """
    root = Path(root)
    top = Path(os.path.realpath(root))
    stack, seen = [root], {top}
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            path = Path(entry.path)
            try:
                link = entry.is_symlink()
                st = os.stat(entry.path) if link else entry.stat(follow_symlinks=False)
            except OSError:  # a dangling link or an entry that vanished
                continue
            if link:
                real = Path(os.path.realpath(entry.path))
                if not (policy.follow_symlinks or real.is_relative_to(top) or policy.inside(real)):
                    if skipped is not None:
                        skipped.append(path)
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if real in seen:
                        continue
                    seen.add(real)
            if stat.S_ISDIR(st.st_mode):
                stack.append(path)
            elif stat.S_ISREG(st.st_mode):
                yield path
