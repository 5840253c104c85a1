"""Classical fusion baselines on 2D grey arrays (numpy only): mean, element-wise max, a
Laplacian pyramid and guided-filter fusion (GFF). They return float64 on the input's scale;
callers round and clip for metrics.
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


def box_mean(x, r: int) -> np.ndarray:
    """Mean over the (2r+1) x (2r+1) window centred on each pixel, the window cut at the image's
    borders (divided by the number of pixels inside), by cumulative sums: O(1) per pixel in r."""
    x = _f(x)

    def box_sum(v: np.ndarray) -> np.ndarray:
        for axis in (0, 1):
            n = v.shape[axis]
            c = np.concatenate([np.zeros_like(np.take(v, [0], axis=axis)), np.cumsum(v, axis=axis)], axis=axis)
            hi, lo = np.minimum(np.arange(n) + r + 1, n), np.maximum(np.arange(n) - r, 0)
            v = np.take(c, hi, axis=axis) - np.take(c, lo, axis=axis)
        return v

    return box_sum(x) / box_sum(np.ones_like(x))


def guided_filter(guide, p, r: int, eps: float) -> np.ndarray:
    """He, Sun and Tang's guided filter (ECCV 2010 / TPAMI 2013) with a grey guide: per window
    p ~ a I + b with a = cov(I, p) / (var(I) + eps), b = mean(p) - a mean(I); the output is
    mean(a) I + mean(b), all means `box_mean` of radius r."""
    i, p = _f(guide), _f(p)
    mi, mp = box_mean(i, r), box_mean(p, r)
    a = (box_mean(i * p, r) - mi * mp) / (box_mean(i * i, r) - mi * mi + eps)
    b = mp - a * mi
    return box_mean(a, r) * i + box_mean(b, r)


def _filter_edge(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """2D correlation with a small odd kernel, borders replicated (MATLAB imfilter 'replicate')."""
    kh, kw = kernel.shape
    p = np.pad(x, ((kh // 2, kh // 2), (kw // 2, kw // 2)), mode="edge")
    h, w = x.shape
    return sum(kernel[i, j] * p[i : i + h, j : j + w] for i in range(kh) for j in range(kw))


LAPLACIAN_3X3 = np.array([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]])
GAUSS_11 = np.exp(-(np.arange(-5, 6) ** 2) / (2 * 5.0**2))
GAUSS_11 = np.outer(GAUSS_11, GAUSS_11) / np.outer(GAUSS_11, GAUSS_11).sum()  # 11x11, sigma 5


def gff_fusion(a, b, r1: int = 45, eps1: float = 0.3, r2: int = 7, eps2: float = 1e-6, base: int = 31) -> np.ndarray:
    """Guided-filter fusion: S. Li, X. Kang and J. Hu, "Image fusion with guided filtering", IEEE
    Trans. Image Process. 22(7), 2864-2875, 2013, with the paper's parameters.

    1. Two-scale decomposition: base B_n = the source averaged over base x base (31x31) windows,
       detail D_n = I_n - B_n.
    2. Saliency S_n = |I_n * 3x3 Laplacian| * 11x11 Gaussian (sigma 5); P_n = 1 where S_n is the
       largest (ties: A), else 0.
    3. Weights W_n^B = G(I_n, P_n; r1, eps1) and W_n^D = G(I_n, P_n; r2, eps2) (`guided_filter`,
       guide the source scaled to [0, 1]), clipped to [0, 1] as the authors' code does, then
       normalised to sum 1 per pixel.
    4. F = sum_n W_n^B B_n + W_n^D D_n.
    Filters replicate the borders (the authors' imfilter 'replicate'); `box_mean` cuts its windows.
    Identical sources give the source back.
    """
    srcs = [_f(a), _f(b)]
    half = base // 2
    bases = [box_mean(np.pad(s, half, mode="edge"), half)[half:-half, half:-half] for s in srcs]
    sal = np.stack([_filter_edge(np.abs(_filter_edge(s / 255, LAPLACIAN_3X3)), GAUSS_11) for s in srcs])
    pick = np.argmax(sal, axis=0)
    fused = 0.0
    for layer, (r, eps) in (("base", (r1, eps1)), ("detail", (r2, eps2))):
        w = (
            np.stack(
                [
                    np.clip(guided_filter(s / 255, (pick == n).astype(np.float64), r, eps), 0, 1)
                    for n, s in enumerate(srcs)
                ]
            )
            + 1e-12
        )
        w /= w.sum(0)
        parts = bases if layer == "base" else [s - bs for s, bs in zip(srcs, bases)]
        fused = fused + sum(wn * x for wn, x in zip(w, parts))
    return fused


BASELINES = {"mean": mean_fusion, "max": max_fusion, "Laplacian": laplacian_fusion, "GFF": gff_fusion}
