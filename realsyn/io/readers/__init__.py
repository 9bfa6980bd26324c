"""Document readers: detect an input's format from its path and stream its Documents.

Formats: Kiwix `.zim`, MMC4 `.jsonl[.gz]`, OBELICS-style `.parquet`, `.warc[.gz]`, a folder of
`.html` files, and `.epub` (file or unpacked folder). Every reader is a generator
`read(path, policy, shard)`; the policy (`realsyn.io.policy`) says where local paths may point and caps
every unit read. `plan(path, ...)` splits an input into `Shard`s from metadata alone (sizes,
counts, the EPUB package document), so that tasks read their own shards and no content passes
through the planner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from realsyn.errors import InputError
from realsyn.io.documents import Document
from realsyn.io.policy import DEFAULT, ReadPolicy, walk_files
from realsyn.io.readers import epub, htmldir, mmc4, obelics, warc, zim  # noqa: E402
from realsyn.io.readers.base import WHOLE, Shard, skip_links  # noqa: E402


def _container_files(folder: Path, policy: ReadPolicy = DEFAULT) -> list[Path]:
    """The files under `folder` whose suffix names a format, in sorted order; a symbolic link out
    of the folder is passed over (and counted as `outside_input`) unless the policy follows it."""
    links: list[Path] = []
    files = sorted(p for p in walk_files(folder, policy, links) if _is_container(p))
    skip_links(links, _is_container)
    return files


def _is_container(path: Path) -> bool:
    return any(path.name.lower().endswith(s) for s in SUFFIXES)


def _read_folder(folder: Path, policy: ReadPolicy = DEFAULT, shard: Shard = WHOLE) -> Iterator[Document]:
    """A folder of input files (e.g. several .zim or .warc.gz): each file read in sorted order."""
    for path in _container_files(folder, policy):
        yield from read_documents(path, policy)


READERS: dict[str, Callable[[Path, ReadPolicy, Shard], Iterator[Document]]] = {
    "zim": zim.read,
    "mmc4": mmc4.read,
    "obelics": obelics.read,
    "warc": warc.read,
    "htmldir": htmldir.read,
    "epub": epub.read,
    "folder": _read_folder,
}
SUFFIXES = {".zim": "zim", ".jsonl": "mmc4", ".jsonl.gz": "mmc4", ".parquet": "obelics",
            ".warc": "warc", ".warc.gz": "warc", ".epub": "epub"}
SUPPORTED = ("supported: .zim, .jsonl[.gz] (MMC4), .parquet (OBELICS), .warc[.gz], .epub or an unpacked "
             "EPUB folder, a folder of .html files, a folder of such files")


def detect(path: Path) -> str:
    """The format name of `path` (a key of READERS); InputError if it is missing or unknown."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"input not found: {path} ({SUPPORTED})")
    if path.is_dir():
        if (path / "META-INF" / "container.xml").is_file():
            return "epub"
        if htmldir.has_html(path):
            return "htmldir"
        if any(_is_container(p) for p in walk_files(path)):
            return "folder"
        raise InputError(f"unknown input format: folder {path} has no .html files and is not an EPUB ({SUPPORTED})")
    name = path.name.lower()
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return SUFFIXES[suffix]
    raise InputError(f"unknown input format: {path} ({SUPPORTED})")


def read_documents(path: Path, policy: ReadPolicy = DEFAULT) -> Iterator[Document]:
    """Documents of `path` in a stable order. Format errors are raised here, at once; a corrupt
    container raises InputError when iteration starts."""
    return READERS[detect(path)](Path(path), policy, WHOLE)


def plan(path: Path, policy: ReadPolicy, target: int, docs: int, scratch: Path | None = None) -> Iterator[Shard]:
    """The shards of `path`, in reading order: about `target` bytes each (ZIM: about `docs`
    articles; an HTML folder: at most `docs` files); a gzipped JSONL file whole, a WARC file whole
    unless there is a `scratch` folder for its index of records; for a folder of inputs, each
    file's shards."""
    path, fmt = Path(path), detect(path)
    if fmt == "folder":
        for f in _container_files(path, policy):
            yield from plan(f, policy, target, docs, scratch)
    elif fmt == "warc":  # the one planner that reads the input (record headers) and writes an index
        yield from warc.plan(path, target, scratch)
    elif fmt in PLANNERS:
        yield from PLANNERS[fmt](path, policy, target, docs)
    else:
        yield Shard(path, fmt)


PLANNERS: dict[str, Callable[[Path, ReadPolicy, int, int], Iterator[Shard]]] = {
    "zim": zim.plan, "mmc4": mmc4.plan, "obelics": obelics.plan, "epub": epub.plan, "htmldir": htmldir.plan}


def read_shard(shard: Shard, policy: ReadPolicy = DEFAULT) -> Iterator[Document]:
    """The documents of one shard, in order."""
    return READERS[shard.format](shard.path, policy, shard)


__all__ = ["InputError", "READERS", "Shard", "detect", "plan", "read_documents", "read_shard"]
