"""Fusion metrics on grey images in 0-255 (numpy only).

They follow the evaluation code of CDDFuse (Zhao et al., CVPR 2023, `utils/Evaluator.py`) so that
numbers compare with published tables. Conventions (each function says its own):

* Inputs are 2D arrays on the 0-255 scale. CDDFuse reads every image (sources and fused output)
  from 8-bit files in grey mode, so its inputs are integers; `to_grey` does the same conversion
  (0.299 R + 0.587 G + 0.114 B, rounded) for colour (h, w, 3) arrays. Callers should round fused
  outputs to integers in 0..255 (as saving them to PNG would) before measuring.
* "Sum" metrics (MI, SCD, VIF, Qabf's two sources, SSIM) add the fused image's score against A
  and against B, so an output identical to both sources gets MI = 2 H, VIF = 2, SSIM = 2.
* All ten are "higher is better".
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

NAMES = ("EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM", "PSNR")


def _f(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def to_grey(img) -> np.ndarray:
    """(h, w) passes through as float64; (h, w, 3|4) colour gives round(0.299 R + 0.587 G + 0.114 B),
    like OpenCV's COLOR_BGR2GRAY followed by np.round in CDDFuse's image reader."""
    x = _f(img)
    if x.ndim == 3:
        x = np.round(x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114)
    if x.ndim != 2:
        raise ValueError(f"metrics need 2D grey or (h, w, 3) colour images, got shape {x.shape}")
    return x


def _levels(img) -> np.ndarray:
    """Grey levels 0..255 as integers (values rounded and clipped)."""
    return np.clip(np.round(to_grey(img)), 0, 255).astype(np.int64)


# ----------------------------------------------------------------- single-image metrics


def entropy(img) -> float:
    """EN: Shannon entropy in bits of the 256-bin histogram of the image rounded to 0..255."""
    h = np.bincount(_levels(img).ravel(), minlength=256)
    p = h[h > 0] / h.sum()
    return float(-(p * np.log2(p)).sum())


def standard_deviation(img) -> float:
    """SD: population standard deviation (np.std, ddof 0) of the grey values."""
    return float(np.std(to_grey(img)))


def spatial_frequency(img) -> float:
    """SF = sqrt(RF^2 + CF^2), RF and CF the RMS of horizontal and vertical first differences."""
    x = to_grey(img)
    rf = np.mean((x[:, 1:] - x[:, :-1]) ** 2)
    cf = np.mean((x[1:, :] - x[:-1, :]) ** 2)
    return float(np.sqrt(rf + cf))


def average_gradient(img) -> float:
    """AG: mean of sqrt((Gx^2 + Gy^2) / 2), Gx and Gy central differences (one-sided at the
    borders), as in CDDFuse (the same as np.gradient)."""
    gy, gx = np.gradient(to_grey(img))
    return float(np.mean(np.sqrt((gx**2 + gy**2) / 2)))


# ----------------------------------------------------------------- metrics against the sources


def _mutual_info(x, y) -> float:
    """Mutual information in nats of two images' grey levels (joint 256x256 histogram). For
    integer images this equals sklearn's mutual_info_score on the flattened arrays (CDDFuse)."""
    joint = np.bincount((_levels(x) * 256 + _levels(y)).ravel(), minlength=256 * 256).reshape(256, 256)
    p = joint / joint.sum()
    px, py = p.sum(1), p.sum(0)
    nz = p > 0
    return float(max(0.0, (p[nz] * np.log(p[nz] / np.outer(px, py)[nz])).sum()))


def mutual_information(a, b, f) -> float:
    """MI: MI(F, A) + MI(F, B) in nats (natural log), as CDDFuse's sklearn mutual_info_score sum."""
    return _mutual_info(f, a) + _mutual_info(f, b)


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    den = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / den) if den > 0 else 0.0


def scd(a, b, f) -> float:
    """SCD (sum of the correlations of differences): corr(A, F - B) + corr(B, F - A), Pearson
    correlations over all pixels. Where CDDFuse divides 0 by 0 (a constant image or difference)
    the correlation here is 0 instead of NaN."""
    a, b, f = to_grey(a), to_grey(b), to_grey(f)
    return _corr(a, f - b) + _corr(b, f - a)


def _filter_valid(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of x with the outer product k k^T (k symmetric)."""
    x = sliding_window_view(x, len(k), axis=0) @ k
    return sliding_window_view(x, len(k), axis=1) @ k


def _vifp(ref: np.ndarray, dist: np.ndarray) -> float:
    """Pixel-domain VIF over 4 scales (Sheikh & Bovik's vifp_mscale), noise variance 2, Gaussian
    windows of 17, 9, 5, 3 pixels (sd = N / 5), 'valid' filtering and 2x decimation between
    scales, exactly as CDDFuse's compare_viff; 0/0 (a flat reference) gives 1 as there."""
    sigma_nsq, eps = 2.0, 1e-10
    num = den = 0.0
    for scale in range(1, 5):
        n = 2 ** (4 - scale + 1) + 1
        sd = n / 5.0
        x = np.arange(n) - (n - 1) / 2
        k = np.exp(-(x * x) / (2 * sd * sd))
        k /= k.sum()  # the 2D window is k k^T: separable, already normalized
        if scale > 1:
            ref, dist = _filter_valid(ref, k)[::2, ::2], _filter_valid(dist, k)[::2, ::2]
        mu1, mu2 = _filter_valid(ref, k), _filter_valid(dist, k)
        s1 = np.maximum(_filter_valid(ref * ref, k) - mu1 * mu1, 0)
        s2 = np.maximum(_filter_valid(dist * dist, k) - mu2 * mu2, 0)
        s12 = _filter_valid(ref * dist, k) - mu1 * mu2
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
    return float(num / den) if den > 0 else 1.0


def vif(a, b, f) -> float:
    """VIF (VIFF in CDDFuse): 4-scale pixel-domain VIF of F against A plus that against B."""
    f = to_grey(f)
    return _vifp(to_grey(a), f) + _vifp(to_grey(b), f)


def _sobel(x: np.ndarray):
    """Sobel strength and angle as CDDFuse: scipy convolve2d(mode='same'), i.e. zero padding (so
    an image that is not dark at its border has edges there)."""
    p = np.pad(x, 1)
    s = [[p[i : i + x.shape[0], j : j + x.shape[1]] for j in range(3)] for i in range(3)]
    # convolution with [[-1,0,1],[-2,0,2],[-1,0,1]] and [[1,2,1],[0,0,0],[-1,-2,-1]] (kernel flipped)
    gx = (s[0][0] + 2 * s[1][0] + s[2][0]) - (s[0][2] + 2 * s[1][2] + s[2][2])
    gy = (s[2][0] + 2 * s[2][1] + s[2][2]) - (s[0][0] + 2 * s[0][1] + s[0][2])
    mag = np.sqrt(gx * gx + gy * gy)
    ang = np.full_like(x, np.pi / 2)
    nz = gx != 0
    ang[nz] = np.arctan(gy[nz] / gx[nz])
    return mag, ang


def qabf(a, b, f) -> float:
    """Qabf (Xydeas & Petrovic) with Sobel edges, as CDDFuse: edge strength and orientation
    preservation of A and B in F, weighted by the sources' edge strengths. CDDFuse's quirk is
    kept: where a source's strength equals F's the strength ratio is F's strength (not 1); for
    integer images this changes the score by under 0.1%. No edge in either source gives 0
    (CDDFuse: NaN)."""
    tg, kg, dg, ta, ka, da = 0.9994, -15.0, 0.5, 0.9879, -22.0, 0.8
    ga, aa = _sobel(to_grey(a))
    gb, ab = _sobel(to_grey(b))
    gf, af = _sobel(to_grey(f))

    def q(gs, as_):
        with np.errstate(divide="ignore", invalid="ignore"):
            g = np.where(gs > gf, gf / gs, np.where(gs == gf, gf, gs / gf))
        al = 1 - np.abs(as_ - af) / (np.pi / 2)
        return tg / (1 + np.exp(kg * (g - dg))) * ta / (1 + np.exp(ka * (al - da)))

    den = (ga + gb).sum()
    return float(((q(ga, aa) * ga + q(gb, ab) * gb).sum() / den) if den > 0 else 0.0)


def _ssim(x: np.ndarray, y: np.ndarray) -> float:
    """skimage.metrics.structural_similarity(x, y) with its defaults on float input in the
    versions CDDFuse used: 7x7 uniform window, K1 0.01, K2 0.03, sample covariance (49/48), and
    data_range 2 (the old default for floating-point images, whose "dtype range" was -1..1),
    mean over the windows that lie inside the image (skimage crops 3 pixels from each side)."""
    w, data_range = 7, 2.0
    k = np.full(w, 1.0 / w)
    ux, uy = _filter_valid(x, k), _filter_valid(y, k)
    cov = w * w / (w * w - 1)
    vx = cov * (_filter_valid(x * x, k) - ux * ux)
    vy = cov * (_filter_valid(y * y, k) - uy * uy)
    vxy = cov * (_filter_valid(x * y, k) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return float(s.mean())


def ssim(a, b, f) -> float:
    """SSIM: SSIM(F, A) + SSIM(F, B), each as `_ssim` (CDDFuse's skimage call, data range 2)."""
    f = to_grey(f)
    return _ssim(f, to_grey(a)) + _ssim(f, to_grey(b))


def psnr(a, b, f) -> float:
    """PSNR as CDDFuse's code computes it: 10 log10(max(F)^2 / MSE), MSE the mean of the mean
    squared errors of F against A and against B. Note the peak is F's maximum (255 for most
    fused images), not a fixed 255. F equal to both sources (MSE 0) gives +inf, uncapped."""
    a, b, f = to_grey(a), to_grey(b), to_grey(f)
    mse = (np.mean((a - f) ** 2) + np.mean((b - f) ** 2)) / 2
    peak = float(np.max(f)) ** 2
    if mse == 0:
        return float("inf")
    return float(10 * np.log10(peak / mse)) if peak > 0 else float("-inf")


ALL = {
    "EN": lambda a, b, f: entropy(f),
    "SD": lambda a, b, f: standard_deviation(f),
    "SF": lambda a, b, f: spatial_frequency(f),
    "AG": lambda a, b, f: average_gradient(f),
    "MI": mutual_information,
    "SCD": scd,
    "VIF": vif,
    "Qabf": qabf,
    "SSIM": ssim,
    "PSNR": psnr,
}


def all_metrics(a, b, f) -> dict[str, float]:
    """The ten metrics of F fused from A and B, in the order of NAMES."""
    a, b, f = to_grey(a), to_grey(b), to_grey(f)
    return {name: ALL[name](a, b, f) for name in NAMES}
