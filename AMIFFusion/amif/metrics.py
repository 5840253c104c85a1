"""Fusion metrics on grey images in 0-255 (numpy only), following the CDDFuse (CVPR 2023)
evaluation conventions so numbers compare with published tables. Minimal set for the engine
issue: EN, SF, Qabf, VIF; the evaluation issue extends it.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def _f(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def entropy(img) -> float:
    """EN: Shannon entropy (bits) of the 256-bin histogram of the image rounded to 0..255."""
    h = np.bincount(np.clip(np.round(_f(img)), 0, 255).astype(np.int64).ravel(), minlength=256)
    p = h[h > 0] / h.sum()
    return float(-(p * np.log2(p)).sum())


def spatial_frequency(img) -> float:
    """SF = sqrt(RF^2 + CF^2), RF/CF the RMS of horizontal/vertical first differences."""
    x = _f(img)
    rf = np.mean((x[:, 1:] - x[:, :-1]) ** 2)
    cf = np.mean((x[1:, :] - x[:-1, :]) ** 2)
    return float(np.sqrt(rf + cf))


def _conv_valid(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    return np.einsum("ijkl,kl->ij", sliding_window_view(x, k.shape), k)


def _sobel(x: np.ndarray):
    """Sobel magnitude and angle, replicate-padded ('same' size)."""
    p = np.pad(x, 1, mode="edge")
    kx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float64)
    gx, gy = _conv_valid(p, kx[::-1, ::-1]), _conv_valid(p, kx.T[::-1, ::-1])
    mag = np.sqrt(gx**2 + gy**2)
    ang = np.where(gx == 0, np.pi / 2, np.arctan(gy / np.where(gx == 0, 1, gx)))
    return mag, ang


def qabf(a, b, f) -> float:
    """Qabf (Xydeas & Petrovic) with Sobel edges: edge strength and orientation kept from A and B."""
    tg, kg, dg, ta, ka, da = 0.9994, -15.0, 0.5, 0.9879, -22.0, 0.8
    ga, aa = _sobel(_f(a))
    gb, ab = _sobel(_f(b))
    gf, af = _sobel(_f(f))

    def q(gs, as_):
        with np.errstate(divide="ignore", invalid="ignore"):
            g = np.where(gs > gf, gf / gs, np.where(gs == gf, 1.0, gs / gf))
        g = np.nan_to_num(g, nan=1.0)
        al = 1 - np.abs(as_ - af) / (np.pi / 2)
        return tg / (1 + np.exp(kg * (g - dg))) * ta / (1 + np.exp(ka * (al - da)))

    den = (ga + gb).sum()
    return float(((q(ga, aa) * ga + q(gb, ab) * gb).sum() / den) if den > 0 else 0.0)


def _vifp(ref: np.ndarray, dist: np.ndarray) -> float:
    """Pixel-domain VIF over 4 scales (Sheikh & Bovik), noise variance 2, as in CDDFuse."""
    sigma_nsq, eps = 2.0, 1e-10
    num = den = 0.0
    for scale in range(1, 5):
        n = 2 ** (4 - scale + 1) + 1
        sd = n / 5.0
        y, x = np.ogrid[-(n - 1) / 2 : (n - 1) / 2 + 1, -(n - 1) / 2 : (n - 1) / 2 + 1]
        h = np.exp(-(x * x + y * y) / (2 * sd * sd))
        h /= h.sum()
        if scale > 1:
            ref, dist = _conv_valid(ref, h)[::2, ::2], _conv_valid(dist, h)[::2, ::2]
        mu1, mu2 = _conv_valid(ref, h), _conv_valid(dist, h)
        s1 = np.maximum(_conv_valid(ref * ref, h) - mu1 * mu1, 0)
        s2 = np.maximum(_conv_valid(dist * dist, h) - mu2 * mu2, 0)
        s12 = _conv_valid(ref * dist, h) - mu1 * mu2
        g = s12 / (s1 + eps)
        sv = s2 - g * s12
        low1 = s1 < eps
        g[low1], sv[low1], s1[low1] = 0, s2[low1], 0
        low2 = s2 < eps
        g[low2], sv[low2] = 0, 0
        neg = g < 0
        sv[neg], g[neg] = s2[neg], 0
        sv[sv <= eps] = eps
        num += np.sum(np.log10(1 + g * g * s1 / (sv + sigma_nsq)))
        den += np.sum(np.log10(1 + s1 / sigma_nsq))
    return float(num / den) if den > 0 else 0.0


def vif(a, b, f) -> float:
    """VIF of the fused image against each source, summed (CDDFuse convention)."""
    return _vifp(_f(a), _f(f)) + _vifp(_f(b), _f(f))


def max_rule(a, b) -> np.ndarray:
    """Element-wise max baseline."""
    return np.maximum(_f(a), _f(b))


METRICS = {"EN": lambda a, b, f: entropy(f), "SF": lambda a, b, f: spatial_frequency(f), "Qabf": qabf, "VIF": vif}
