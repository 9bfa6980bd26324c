"""Arrow record batches -> Python rows with every string/binary cell capped in bytes.

`to_records` is `RecordBatch.to_pylist()` with two guards against inflating data: a value longer
than `cap` bytes is never copied out of Arrow (it becomes `TOO_LARGE`), and a dictionary value
referenced by many cells is converted once and shared, so a small file whose few values are
repeated many times costs what its distinct values cost. `largest_page` reads a row group's
page headers (Thrift compact protocol) so that a reader can refuse one whose pages would inflate
beyond a cap before any page is decompressed.
"""

from __future__ import annotations

from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


class _TooLarge:
    """Marker of a cell over the byte cap."""

    def __repr__(self) -> str:
        return "TOO_LARGE"


TOO_LARGE: Any = _TooLarge()


def to_records(batch: pa.RecordBatch, cap: int) -> list[dict[str, Any]]:
    """The rows of `batch` as dicts; string/binary values over `cap` bytes are `TOO_LARGE`."""
    columns = {name: _values(batch.column(i), cap, {}) for i, name in enumerate(batch.schema.names)}
    return [{name: values[r] for name, values in columns.items()} for r in range(batch.num_rows)]


def _is_bytes(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_binary(t) or pa.types.is_large_string(t) or pa.types.is_large_binary(t)


def _values(arr: pa.Array, cap: int, memo: dict[int, Any]) -> list[Any]:
    """Python values of `arr` (nested lists and structs walked, dictionaries converted once)."""
    t = arr.type
    if pa.types.is_dictionary(t):
        values = arr.dictionary
        indices = arr.indices.to_pylist()
        key = id(values)
        if key not in memo:
            memo[key] = (values, {})  # keep `values` alive so its id is not reused
        cache: dict[int, Any] = memo[key][1]
        out = []
        for i in indices:
            if i is not None and i not in cache:
                cache[i] = _values(values.slice(i, 1), cap, memo)[0]
            out.append(None if i is None else cache[i])
        return out
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        offsets = arr.offsets.to_numpy()
        child = _values(arr.values, cap, memo)
        valid = arr.is_valid().to_numpy(zero_copy_only=False)
        return [child[offsets[r]:offsets[r + 1]] if valid[r] else None for r in range(len(arr))]
    if pa.types.is_struct(t):
        fields = {t.field(k).name: _values(f, cap, memo) for k, f in enumerate(arr.flatten())}
        valid = arr.is_valid().to_numpy(zero_copy_only=False)
        return [{name: v[r] for name, v in fields.items()} if valid[r] else None for r in range(len(arr))]
    if _is_bytes(t):
        lengths = pc.binary_length(arr).fill_null(0).to_numpy(zero_copy_only=False)
        if len(lengths) and int(np.max(lengths)) > cap:
            return [TOO_LARGE if n > cap else arr[r].as_py() for r, n in enumerate(lengths)]
    return arr.to_pylist()


def largest_page(fh: BinaryIO, meta: pq.RowGroupMetaData) -> int:
    """The largest uncompressed page size (bytes) of a parquet row group, read from the page
    headers alone (no page is decompressed). A dictionary page or data page this large must be
    inflated whole by any reader; -1 when a header cannot be parsed."""
    biggest = 0
    for c in range(meta.num_columns):
        col = meta.column(c)
        pos = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
        end = pos + col.total_compressed_size
        while pos < end:
            fh.seek(pos)
            head = fh.read(_MAX_HEADER)
            try:
                fields, size = _thrift_struct(head, 0)
            except (IndexError, ValueError):
                return -1
            if 2 not in fields or 3 not in fields:
                return -1
            biggest = max(biggest, fields[2])
            pos += size + fields[3]
    return biggest


_MAX_HEADER = 1 << 20


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _zigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def _thrift_value(buf: bytes, i: int, kind: int) -> tuple[Any, int]:
    """One value of compact-protocol type `kind` at `buf[i]` -> (value for integers, next index)."""
    if kind in (1, 2):
        return kind == 1, i
    if kind == 3:
        return buf[i], i + 1
    if kind in (4, 5, 6):
        v, i = _varint(buf, i)
        return _zigzag(v), i
    if kind == 7:
        return None, i + 8
    if kind == 8:
        n, i = _varint(buf, i)
        return None, i + n
    if kind in (9, 10):
        head = buf[i]
        i += 1
        n, elem = head >> 4, head & 0x0F
        if n == 15:
            n, i = _varint(buf, i)
        for _ in range(n):
            i = i + 1 if elem in (1, 2) else _thrift_value(buf, i, elem)[1]
        return None, i
    if kind == 11:
        n, i = _varint(buf, i)
        if n:
            kv = buf[i]
            i += 1
            for _ in range(n):
                i = _thrift_value(buf, i, kv >> 4)[1]
                i = _thrift_value(buf, i, kv & 0x0F)[1]
        return None, i
    if kind == 12:
        return None, _thrift_struct(buf, i)[1]
    raise ValueError(f"unknown thrift type {kind}")


def _thrift_struct(buf: bytes, i: int) -> tuple[dict[int, int], int]:
    """A compact-protocol struct at `buf[i]` -> ({field id: integer value}, index after it)."""
    fields: dict[int, int] = {}
    last = 0
    while True:
        head = buf[i]
        i += 1
        if head == 0:
            return fields, i
        kind, delta = head & 0x0F, head >> 4
        if delta:
            fid = last + delta
        else:
            raw, i = _varint(buf, i)
            fid = _zigzag(raw)
        value, i = _thrift_value(buf, i, kind)
        if isinstance(value, int) and not isinstance(value, bool):
            fields[fid] = value
        last = fid
