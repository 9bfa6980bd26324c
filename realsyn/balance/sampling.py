"""Semantic balance sampling on arrays (paper §5): a similarity band, then a per-cluster draw.

Both draws rest on one seeded uniform number `u` per pair, so every scale is a subset of the
larger ones:
- `cap` (the paper): within each cluster pairs are ordered by `u` (a seeded random permutation per
  cluster); a scale with cap N keeps the first min(N, size) of them.
- `metaclip` (MetaCLIP's balancing, re-implemented from its paper with the cluster as the only
  key): a pair of a cluster of size c is kept when u < min(1, t / c), t being the scale's N. The
  expected number kept per cluster is min(c, t), the same as `cap`.
"""

from __future__ import annotations

from typing import Callable, Iterable, Literal, Mapping

import numpy as np

Method = Literal["cap", "metaclip"]
BELOW, IN_BAND, ABOVE = -1, 0, 1


def band_bounds(sims: np.ndarray, mode: str, lower: float, upper: float) -> tuple[float, float]:
    """The band [lo, hi]: `quantile` reads `lower` / `upper` as quantiles of `sims`, `fixed` as
    cosines; `off` keeps everything."""
    if mode == "off" or (mode == "quantile" and len(sims) == 0):
        return -np.inf, np.inf
    if mode == "quantile":
        lo, hi = np.quantile(np.asarray(sims, np.float64), [lower, upper])
        return float(lo), float(hi)
    return float(lower), float(upper)


def band_position(sims: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Per pair: BELOW, IN_BAND or ABOVE the closed band [lo, hi] (int8)."""
    return np.where(sims < lo, BELOW, np.where(sims > hi, ABOVE, IN_BAND)).astype(np.int8)


def draws(n: int, seed: int) -> np.ndarray:
    """The seeded uniform number in [0, 1) of every pair (shared by all scales)."""
    return np.random.default_rng(seed).random(n)


def ranks_in_cluster(labels: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Each pair's position in its cluster when the cluster is ordered by `u` (0 = first)."""
    n = len(labels)
    if n == 0:
        return np.zeros(0, np.int64)
    order = np.lexsort((u, labels))
    sizes = np.bincount(labels)
    starts = np.cumsum(sizes) - sizes
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n) - starts[labels[order]]
    return rank


def select(labels: np.ndarray, u: np.ndarray, caps: Mapping[str, int], method: Method) -> dict[str, np.ndarray]:
    """For each named scale, the mask of pairs it keeps (nested: smaller N, subset)."""
    if method == "cap":
        rank = ranks_in_cluster(labels, u)
        return {name: rank < cap for name, cap in caps.items()}
    size = np.bincount(labels)[labels] if len(labels) else np.zeros(0, np.int64)
    return {name: u < np.minimum(1.0, cap / np.maximum(size, 1)) for name, cap in caps.items()}


def expected_size(cluster_sizes: np.ndarray, cap: int) -> int:
    """Pairs a cap keeps: exact for `cap`, the expectation for `metaclip` (both sum min(c, N))."""
    return int(np.minimum(cluster_sizes, cap).sum())


def sizes_after(labels: np.ndarray, mask: np.ndarray, n_clusters: int) -> np.ndarray:
    """Cluster sizes among the pairs a mask keeps."""
    return np.bincount(labels[mask], minlength=n_clusters)


def _keys(x: np.ndarray) -> np.ndarray:
    """uint32 keys of float32 values, in the values' order."""
    b = np.ascontiguousarray(x, np.float32).view(np.uint32)
    return np.where(b >> 31 != 0, ~b, b | np.uint32(1 << 31))


def _value(key: int) -> float:
    bits = key & 0x7FFFFFFF if key >> 31 else ~key & 0xFFFFFFFF
    return float(np.array([bits], np.uint32).view(np.float32)[0])


def ranked(parts: Callable[[], Iterable[np.ndarray]], ranks: list[int]) -> list[float]:
    """The values at `ranks` (0 = smallest) of the float32 values that `parts()` streams (it is
    called twice): a histogram of the keys' high 16 bits finds each rank's bin, one of the low 16
    bits in those bins its exact value. Memory: 65,536 counts per bin looked at."""
    high = np.zeros(1 << 16, np.int64)
    for x in parts():
        high += np.bincount(_keys(x) >> 16, minlength=1 << 16)
    cum = np.cumsum(high)
    bins = [int(np.searchsorted(cum, r, side="right")) for r in ranks]
    low = {b: np.zeros(1 << 16, np.int64) for b in bins}
    for x in parts():
        k = _keys(x)
        for b, counts in low.items():
            counts += np.bincount(k[k >> 16 == b] & 0xFFFF, minlength=1 << 16)
    return [_value(b << 16 | int(np.searchsorted(np.cumsum(low[b]), r - (cum[b - 1] if b else 0), side="right")))
            for r, b in zip(ranks, bins)]


def streamed_quantiles(parts: Callable[[], Iterable[np.ndarray]], n: int, quantiles: list[float]) -> list[float]:
    """`np.quantile(values, q)` (linear, in float64) of the `n` float32 values `parts()` streams,
    for each q: the same numbers, without holding the values."""
    where = [(n - 1) * q for q in quantiles]
    below = [min(int(np.floor(w)), n - 1) for w in where]
    need = sorted({i for b in below for i in (b, min(b + 1, n - 1))})
    at = dict(zip(need, ranked(parts, need)))
    out = []
    for w, b in zip(where, below):
        a, c, t = at[b], at[min(b + 1, n - 1)], w - b if b < n - 1 else 0.0
        out.append(c - (c - a) * (1 - t) if t >= 0.5 else a + (c - a) * t)
    return out


def quantile_bounds(parts: Callable[[], Iterable[np.ndarray]], n: int, mode: str, lower: float,
                    upper: float) -> tuple[float, float]:
    """`band_bounds` of values streamed by `parts()` (see `streamed_quantiles`)."""
    if mode != "quantile" or n == 0:
        return band_bounds(np.zeros(0, np.float32), mode, lower, upper)
    lo, hi = streamed_quantiles(parts, n, [lower, upper])
    return lo, hi
