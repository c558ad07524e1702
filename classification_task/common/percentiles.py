"""Exact percentiles of integer images without sorting every pixel.

The per-image contrast stretch clips at the 0.5 and 99.5 percentiles. np.percentile
partitions all 4 M pixels of a 2k x 2k image to find them; the order statistics
it needs are among the ~1 % of pixels in the tails, which a sorted sample of the
image locates. Results equal np.percentile's (linear method) to the last bit.
"""

from __future__ import annotations

import math

import numpy as np

TAIL_SAMPLE_SIZE = 16384
TAIL_FRACTION = 0.05  # beyond this share of the pixels, partitioning the tail stops paying


def integer_percentiles(pixels: np.ndarray, percentiles: tuple[float, ...]) -> list[float]:
    """np.percentile (linear method) of a non-negative integer image, exactly, without sorting it.

    A 2k x 2k 16-bit image has 4 M pixels. The clip percentiles lie in the
    tails, so the order statistics they need are among the few pixels beyond a
    bound read off a sorted sample of the image; partitioning those is several
    times cheaper than np.percentile's partition of every pixel. Percentiles
    away from the tails, or a bound the sample misjudged, fall back to the
    histogram (one count per value).
    """
    flat = pixels.ravel()
    n = flat.size
    sample = np.sort(flat[:: _sample_stride(n, pixels.shape[-1] if pixels.ndim else 1)])
    results = []
    for pct in percentiles:
        rank = pct / 100 * (n - 1)  # as np.percentile computes it
        lower = int(rank)
        ranks = (lower, min(lower + 1, n - 1))
        values = _tail_order_statistics(flat, sample, ranks) or _histogram_order_statistics(flat, ranks)
        results.append(_lerp(*values, rank - lower))
    return results


def _sample_stride(n: int, width: int) -> int:
    """About n / TAIL_SAMPLE_SIZE, coprime with the row width so that the sample visits every column."""
    stride = max(1, n // TAIL_SAMPLE_SIZE) | 1
    while math.gcd(stride, width) > 1:
        stride += 2
    return stride


def _lerp(a: float, b: float, t: float) -> float:
    """numpy's linear interpolation, rounding included (it works from b when t >= 0.5)."""
    return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t


def _tail_order_statistics(flat: np.ndarray, sample: np.ndarray, ranks: tuple[int, int]) -> tuple | None:
    """Values of rank `ranks` (0 = smallest) from the pixels beyond a bound, or None.

    The bound is the sorted sample's value a few standard deviations past the
    ranks' expected place in it. All pixels at or below it (low tail) are the
    smallest `tail.size` pixels, ties included, so their order statistics are
    the image's; likewise above it. None when the ranks are not in a tail or the
    bound fell short.
    """
    n, m = flat.size, sample.size
    from_top = n - 1 - ranks[0]  # pixels ranked above the lower rank
    if ranks[1] < TAIL_FRACTION * n:
        tail = flat[flat <= sample[min(_sample_slack(ranks[1] / n * m), m - 1)]]
        offset = 0
    elif from_top < TAIL_FRACTION * n:
        tail = flat[flat >= sample[max(m - 1 - _sample_slack(from_top / n * m), 0)]]
        offset = n - tail.size  # the rank of the tail's smallest pixel
    else:
        return None
    if ranks[0] < offset or ranks[1] - offset >= tail.size:
        return None
    part = np.partition(tail, (ranks[0] - offset, ranks[1] - offset))
    return float(part[ranks[0] - offset]), float(part[ranks[1] - offset])


def _sample_slack(expected_position: float) -> int:
    """A sample position past `expected_position` by ~4 standard deviations of its sampling error."""
    return int(expected_position + 4 * expected_position**0.5 + 8)


def _histogram_order_statistics(flat: np.ndarray, ranks: tuple[int, int]) -> tuple[float, float]:
    cumulative = np.cumsum(np.bincount(flat))
    return tuple(float(np.searchsorted(cumulative, rank, side="right")) for rank in ranks)
