"""A persistent generation cache: sha256(model, prompt version, messages, decoding) -> text.

One SQLite file (stdlib `sqlite3`) in WAL mode, so worker processes read while one writes; each
process opens its own connection once (`open_cache`) and writes after every generated batch, so a
crash loses at most the batch in flight and a re-run never pays twice for the same generation.
WAL needs every process on one host: on a cluster, give each node its own file.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

_SCHEMA = "CREATE TABLE IF NOT EXISTS generations (key TEXT PRIMARY KEY, text TEXT NOT NULL)"


def cache_key(model: str, prompt_version: str, messages: list[dict[str, Any]], **decoding: Any) -> str:
    """The key of one generation: everything that determines its text."""
    payload = {"model": model, "prompt": prompt_version, "messages": messages, "decoding": decoding}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class GenerationCache:
    """key -> text in one SQLite file; use `open_cache` for the process's shared connection."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.conn = sqlite3.connect(path, timeout=60.0, isolation_level=None)  # autocommit; explicit transactions
        for attempt in range(100):  # switching to WAL can fail at once with "database is locked" while
            try:                    # another worker opens the file (SQLite skips the busy handler there)
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
                self.conn.execute(_SCHEMA)
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 99:
                    raise
                time.sleep(0.05 * (1 + attempt % 10))

    def get_many(self, keys: Iterable[str]) -> dict[str, str]:
        """The cached texts of the keys that have one."""
        keys = list(dict.fromkeys(keys))
        out: dict[str, str] = {}
        for a in range(0, len(keys), 500):  # stay below SQLite's bound-variable limit
            chunk = keys[a:a + 500]
            rows = self.conn.execute(f"SELECT key, text FROM generations WHERE key IN ({','.join('?' * len(chunk))})", chunk)
            out.update(rows.fetchall())
        return out

    def put_many(self, items: Mapping[str, str]) -> None:
        """Store texts in one transaction."""
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany("INSERT OR REPLACE INTO generations (key, text) VALUES (?, ?)", items.items())

    def __len__(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM generations").fetchone()[0]

    def close(self) -> None:
        self.conn.close()


_OPEN: dict[tuple[int, str], GenerationCache] = {}


def open_cache(path: Path) -> GenerationCache:
    """This process's connection to the cache at `path` (opened once per process)."""
    key = (os.getpid(), str(Path(path).resolve()))
    if key not in _OPEN:
        _OPEN[key] = GenerationCache(Path(path))
    return _OPEN[key]
