"""Classical fusion baselines on 2D grey arrays (numpy only): mean, element-wise max and a
Laplacian pyramid. They return float64 on the input's scale; callers round and clip for metrics.
"""

from __future__ import annotations

import numpy as np

KERNEL = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16  # Burt & Adelson's 5-tap Gaussian (a = 0.375)


def _f(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def mean_fusion(a, b) -> np.ndarray:
    return (_f(a) + _f(b)) / 2


def max_fusion(a, b) -> np.ndarray:
    return np.maximum(_f(a), _f(b))


def _blur(x: np.ndarray) -> np.ndarray:
    """Separable 5-tap Gaussian, mirror-reflected borders, same size."""
    for axis in (0, 1):
        p = np.pad(x, [(2, 2) if ax == axis else (0, 0) for ax in (0, 1)], mode="reflect")
        n = x.shape[axis]
        x = sum(KERNEL[i] * np.take(p, np.arange(i, i + n), axis=axis) for i in range(5))
    return x


def _reduce(x: np.ndarray) -> np.ndarray:
    return _blur(x)[::2, ::2]


def _expand(x: np.ndarray, shape) -> np.ndarray:
    up = np.zeros(shape)
    up[::2, ::2] = x
    return 4 * _blur(up)


def laplacian_pyramid(img, levels: int = 4) -> list[np.ndarray]:
    """`levels` detail bands (finest first) and the low-pass base last."""
    g = _f(img)
    pyr = []
    for _ in range(levels):
        if min(g.shape) < 3:
            break
        small = _reduce(g)
        pyr.append(g - _expand(small, g.shape))
        g = small
    return pyr + [g]


def reconstruct(pyr: list[np.ndarray]) -> np.ndarray:
    g = pyr[-1]
    for detail in reversed(pyr[:-1]):
        g = detail + _expand(g, detail.shape)
    return g


def laplacian_fusion(a, b, levels: int = 4) -> np.ndarray:
    """Laplacian-pyramid fusion: 4 detail levels take the coefficient of larger magnitude
    (ties: A's), the base is the average; reconstruction inverts the decomposition exactly."""
    pa, pb = laplacian_pyramid(a, levels), laplacian_pyramid(b, levels)
    fused = [np.where(np.abs(x) >= np.abs(y), x, y) for x, y in zip(pa[:-1], pb[:-1])]
    return reconstruct(fused + [(pa[-1] + pb[-1]) / 2])


BASELINES = {"mean": mean_fusion, "max": max_fusion, "Laplacian": laplacian_fusion}
