"""Intensity windows: the percentile window fusion maps a volume to [0, 1] by, and the mapping to
[0, 1] that `verify` applies to whatever image it is given.

Everything is computed in float64 on halved values ((x / 2 - lo / 2) / (hi / 2 - lo / 2)), so any
finite input, up to the float64 range, gives a finite window and a finite result in [0, 1].
"""

from __future__ import annotations

import numpy as np

from .errors import AMIFError

FENCE = 100.0  # a value farther than FENCE x (p95 - p5) below p5 or above p95 is an outlier, outside any window
MAX_NONFINITE = 0.5  # `unit_values`: an image with more than this fraction of NaN or infinite values is an error
VERIFY_SAMPLES = 16_000_000  # `unit_values` takes its percentiles over all finite values up to this many


def _percentiles(values: np.ndarray, q) -> np.ndarray:
    """np.percentile of float64 values, on halves so that interpolating between +-1.7e308 stays finite."""
    return 2 * np.percentile(values / 2, q)


def robust_window(
    arr: np.ndarray, lower: float = 0.5, upper: float = 99.5, max_samples: int = 2_000_000
) -> tuple[float, float]:
    """Percentile window (lo, hi), hi > lo, both finite, over the finite values of `arr` (a regular
    sample of at most `max_samples` of them), in float64. Outliers are left out first: values farther
    than FENCE x (p95 - p5) below p5 or above p95, so that a few corrupt voxels (e.g. 1% at +-3e38)
    do not stretch the window over the anatomy. When the two percentiles are equal: the minimum and
    maximum of the kept values; when those are too: (v, v + max(1, |v|)). No finite value: AMIFError."""
    flat = np.asarray(arr).reshape(-1)
    if flat.size > max_samples:
        flat = flat[:: flat.size // max_samples + 1]
    flat = flat.astype(np.float64)
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        raise AMIFError("The image has no finite values: no intensity window.")
    p5, p95 = _percentiles(flat, [5, 95])
    spread = p95 / 2 - p5 / 2  # half the spread: finite for any finite values
    if spread > 0:
        with np.errstate(over="ignore"):  # a fence beyond the float64 range keeps everything
            inside = (flat >= p5 - 2 * FENCE * spread) & (flat <= p95 + 2 * FENCE * spread)
        flat = flat[inside]
    lo, hi = (float(v) for v in _percentiles(flat, [lower, upper]))
    if not hi > lo:
        lo, hi = float(flat.min()), float(flat.max())
    if not hi > lo:
        hi = lo + max(1.0, abs(lo))
    return lo, hi


def normalize(x: np.ndarray, window) -> np.ndarray:
    """x mapped by window (lo, hi) to [0, 1], clipped, as float32; the arithmetic is float64 on halves,
    so any finite x and window give finite values (NaN stays NaN)."""
    lo, hi = (float(v) for v in window)
    with np.errstate(invalid="ignore"):
        y = (np.asarray(x, np.float64) / 2 - lo / 2) / (hi / 2 - lo / 2)
        return np.clip(y, 0, 1).astype(np.float32)


def unit_values(arr, name: str = "The image") -> tuple[np.ndarray, int]:
    """An image of any real values as `verify` scores it: float32 in [0, 1], and the number of its NaN
    or infinite values. The identifier's thresholds were calibrated on fused outputs, which are in
    [0, 1] (uint8 files: 0-255), and those come back unchanged:
    - uint8: / 255;
    - finite values all in [0, 1]: as they are;
    - otherwise: mapped by `robust_window`'s 0.5 / 99.5 percentile window of the finite values (all of
      them up to VERIFY_SAMPLES, outliers left out), widened to contain [0, 1], and clipped. Changing
      fewer than 0.5% of the values, to anything, cannot move that window far: a few edited voxels
      cannot change what the rest of the image shows. NaN and infinite values count as the low end (0).
    More than MAX_NONFINITE of the values NaN or infinite: an AMIFError (nothing can be verified)."""
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biuf":
        raise AMIFError(f"{name} has data type {arr.dtype}; an image of integer or real numbers is needed.")
    if arr.size == 0:
        raise AMIFError(f"{name} is empty.")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255, 0
    lo, hi = arr.min(), arr.max()  # NaN anywhere: NaN, and the comparison fails
    if lo >= 0 and hi <= 1:
        return arr.astype(np.float32), 0
    chunks = np.array_split(np.arange(arr.shape[0]), max(1, arr.size // 4_000_000)) if arr.ndim > 1 else [...]
    nonfinite = sum(int(arr[c].size - np.count_nonzero(np.isfinite(arr[c]))) for c in chunks)
    if nonfinite > MAX_NONFINITE * arr.size:
        raise AMIFError(
            f"{name} is mostly NaN or infinite ({nonfinite / arr.size:.0%} of its values): cannot verify it."
        )
    lo, hi = robust_window(arr, max_samples=VERIFY_SAMPLES)
    window = (min(lo, 0.0), max(hi, 1.0))
    out = np.empty(arr.shape, np.float32)
    for c in chunks:
        values = arr[c]
        part = normalize(values, window)
        part[~np.isfinite(values)] = 0
        out[c] = part
    return out, nonfinite
