"""Exact percentiles of an image, fast for integer pixels: equal to np.percentile (linear) to the last bit.

The per-image contrast stretch clips at the 0.5 and 99.5 percentiles. np.percentile
partitions all 4 M pixels of a 2k x 2k image to find them; the order statistics
it needs are among the ~1 % of pixels in the tails, which a sorted sample of the
image locates. Percentiles away from the tails, or a bound the sample misjudged,
fall back to a histogram (one count per value); float images and integer ranges
too wide for a histogram go to np.percentile itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

TAIL_SAMPLE_SIZE = 16384
TAIL_FRACTION = 0.05  # beyond this share of the pixels, partitioning the tail stops paying
MAX_HISTOGRAM_BINS = 1 << 16  # wider integer ranges (some 32-bit images) fall back to np.percentile


def exact_percentiles(pixels: np.ndarray, percentiles: Sequence[float]) -> list[float]:
    """`np.percentile(pixels, percentiles)` (linear method) as floats, without sorting an integer image.

    A 2k x 2k 16-bit image has 4 M pixels. The clip percentiles lie in the
    tails, so the order statistics they need are among the few pixels beyond a
    bound read off a sorted sample of the image; partitioning those is several
    times cheaper than np.percentile's partition of every pixel.
    """
    flat = pixels.ravel()
    offset = _histogram_offset(flat)
    if offset is None:
        return [float(v) for v in np.percentile(flat, list(percentiles))]
    n = flat.size
    sample = np.sort(flat[:: _sample_stride(n, pixels.shape[-1] if pixels.ndim else 1)])
    results = []
    for pct in percentiles:
        rank = pct / 100 * (n - 1)  # as np.percentile computes it
        lower = int(rank)
        ranks = (lower, min(lower + 1, n - 1))
        values = _tail_order_statistics(flat, sample, ranks) or _histogram_order_statistics(flat, ranks, offset)
        results.append(_lerp(*values, rank - lower))
    return results


def _histogram_offset(flat: np.ndarray) -> int | None:
    """The value of the histogram's first bin, or None when np.percentile must do it (floats, wide ranges)."""
    if flat.size == 0 or not np.issubdtype(flat.dtype, np.integer):
        return None
    if flat.dtype in (np.uint8, np.uint16):  # 8/16-bit radiographs: no pass over the pixels needed
        return 0
    low, high = int(flat.min()), int(flat.max())  # e.g. mode 'I' (int32): shift to start at 0
    return low if high - low < MAX_HISTOGRAM_BINS else None


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


def _histogram_order_statistics(flat: np.ndarray, ranks: tuple[int, int], offset: int = 0) -> tuple[float, float]:
    """The k-th smallest values: the first bin whose cumulative count exceeds k, shifted back by `offset`."""
    counts = np.bincount(flat if flat.dtype in (np.uint8, np.uint16) else flat.astype(np.int64) - offset)
    cumulative = np.cumsum(counts)
    return tuple(float(np.searchsorted(cumulative, rank, side="right") + offset) for rank in ranks)
