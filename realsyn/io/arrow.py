"""Arrow record batches -> Python rows with every string/binary cell capped in bytes.

`to_records` is `RecordBatch.to_pylist()` with two guards against inflating data: a value longer
than `cap` bytes is never copied out of Arrow (it becomes `TOO_LARGE`), and a dictionary value
referenced by many cells is converted once and shared, so a small file whose few values are
repeated many times costs what its distinct values cost.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


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
