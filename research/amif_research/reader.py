"""What a reader sees in a fused image, beside the ten fusion metrics (numpy only).

* `anatomy_under_function`: where the second modality dominates, how much of the MRI's fine
  detail the output keeps (1 = all of it at full contrast, 0 = none).
* `rim_share`: the share of pixels near strong source edges where the output is darker than both
  sources (undershoot: dark rims) or brighter than both (overshoot: halos) by more than a few levels.
* `colour_error`: where a PET/SPECT source is hot, the hue and saturation error of the output's
  colour against the source's.

Grey inputs are 2D arrays on the 0-255 scale (the outputs rounded as for the metrics); colour
inputs are (h, w, 3) RGB. A measure with no pixel to measure returns NaN.
"""

from __future__ import annotations

import numpy as np

from .baselines import _blur

DOMINANCE_LEVELS = 10  # the second modality dominates where its grey exceeds the MRI's by more than this
EDGE_LEVELS = 32  # a strong edge: a pixel differs from one of its 4 neighbours by at least this, in A or in B
RIM_RADIUS = 2  # "near" a strong edge: within this many pixels of one (square neighbourhood)
RIM_LEVELS = 8  # an under/overshoot: the output is beyond both sources by more than this many grey levels
HOT_LEVEL = 128  # a PET/SPECT pixel is hot where the source's luminance is at least this (0-255)
HUE_MIN_SATURATION = 0.2  # hue is compared only where source and output both have at least this HSV saturation
READER_NAMES = ("anatomy", "undershoot", "overshoot", "hue_err", "sat_err")


def _f(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def high_pass(img) -> np.ndarray:
    """Fine detail: the image minus its blur by the separable 5-tap binomial [1, 4, 6, 4, 1] / 16
    (mirror-reflected borders). A pixel-period checkerboard passes unchanged; a constant gives 0."""
    x = _f(img)
    return x - _blur(x)


def anatomy_under_function(out, mri, other) -> float:
    """MRI detail kept where the second modality dominates.

    Region D: pixels where `other` > `mri` + DOMINANCE_LEVELS. With h = `high_pass`, returns
    sum_D h(out) h(mri) / sum_D h(mri)^2, the gain of the MRI's detail in the output (the least-squares
    coefficient of h(out) on h(mri) over D): 1 when out = other + mri with `other` flat on D,
    0 when the output there is flat (e.g. the max rule over a flat `other`). NaN when D is empty or
    the MRI has no detail on D.
    """
    out, mri, other = _f(out), _f(mri), _f(other)
    d = other > mri + DOMINANCE_LEVELS
    hm = high_pass(mri)[d]
    energy = float(np.sum(hm * hm))
    if energy == 0:
        return float("nan")
    return float(np.sum(high_pass(out)[d] * hm) / energy)


def _contrast(x: np.ndarray) -> np.ndarray:
    """Per pixel, the largest absolute difference to one of its 4 neighbours (inside the image)."""
    c = np.zeros_like(x)
    dy, dx = np.abs(np.diff(x, axis=0)), np.abs(np.diff(x, axis=1))
    c[1:] = np.maximum(c[1:], dy)
    c[:-1] = np.maximum(c[:-1], dy)
    c[:, 1:] = np.maximum(c[:, 1:], dx)
    c[:, :-1] = np.maximum(c[:, :-1], dx)
    return c


def near_edges(a, b, radius: int = RIM_RADIUS) -> np.ndarray:
    """Boolean mask of pixels within `radius` (Chebyshev distance) of a strong edge of A or B:
    a pixel whose 4-neighbour contrast (`_contrast`) is at least EDGE_LEVELS."""
    edge = (_contrast(_f(a)) >= EDGE_LEVELS) | (_contrast(_f(b)) >= EDGE_LEVELS)
    h, w = edge.shape
    p = np.pad(edge, radius)
    near = np.zeros_like(edge)
    for i in range(2 * radius + 1):
        for j in range(2 * radius + 1):
            near |= p[i : i + h, j : j + w]
    return near


def rim_share(out, a, b, levels: float = RIM_LEVELS) -> dict:
    """Rims and halos near strong edges.

    Over the pixels of `near_edges(a, b)`: "undershoot" is the share where out < min(a, b) - levels
    (darker than both sources), "overshoot" the share where out > max(a, b) + levels (brighter than
    both), and "pixels" the number of near-edge pixels. Shares are NaN when there is no strong edge.
    A convex combination of the sources (mean, max rule) has both shares 0.
    """
    out, a, b = _f(out), _f(a), _f(b)
    near = near_edges(a, b)
    n = int(near.sum())
    if n == 0:
        return {"undershoot": float("nan"), "overshoot": float("nan"), "pixels": 0}
    under = (out < np.minimum(a, b) - levels) & near
    over = (out > np.maximum(a, b) + levels) & near
    return {"undershoot": float(under.sum() / n), "overshoot": float(over.sum() / n), "pixels": n}


def rgb_to_hsv(rgb) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in degrees [0, 360), saturation (max - min) / max in [0, 1] (0 for black) and value max,
    of (h, w, 3) RGB on any non-negative scale (hue and saturation do not depend on it)."""
    x = _f(rgb)[..., :3]
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    mx, mn = x.max(-1), x.min(-1)
    c = mx - mn
    safe = np.where(c > 0, c, 1.0)
    h = np.where(mx == r, ((g - b) / safe) % 6, np.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = np.where(c > 0, 60.0 * h, 0.0) % 360
    sat = np.where(mx > 0, c / np.where(mx > 0, mx, 1.0), 0.0)
    return hue, sat, mx


def hot_mask(src_rgb) -> np.ndarray:
    """Hot pixels of a PET/SPECT source, RGB in [0, 1]: luminance 0.299 R + 0.587 G + 0.114 B at
    least HOT_LEVEL / 255."""
    x = _f(src_rgb)[..., :3]
    return x @ np.array([0.299, 0.587, 0.114]) >= HOT_LEVEL / 255


def colour_error(out_rgb, src_rgb, hot) -> dict:
    """Colour fidelity where the source is hot (the boolean mask `hot`, e.g. `hot_mask(src)`).

    "hue_deg": mean circular HSV hue difference in degrees (0-180) over the hot pixels where source
    and output both have saturation >= HUE_MIN_SATURATION (hue is undefined for greys);
    "saturation": mean |s_out - s_src| of HSV saturation (0-1) over all hot pixels, a paler lesion
    counting as much as a garish one; "pixels": the number of hot pixels. NaN where nothing is measured.
    """
    h_out, s_out, _ = rgb_to_hsv(out_rgb)
    h_src, s_src, _ = rgb_to_hsv(src_rgb)
    hot = np.asarray(hot, bool)
    n = int(hot.sum())
    if n == 0:
        return {"hue_deg": float("nan"), "saturation": float("nan"), "pixels": 0}
    chroma = hot & (s_out >= HUE_MIN_SATURATION) & (s_src >= HUE_MIN_SATURATION)
    d = np.abs(h_out - h_src)[chroma]
    d = np.minimum(d, 360 - d)
    return {
        "hue_deg": float(d.mean()) if d.size else float("nan"),
        "saturation": float(np.abs(s_out - s_src)[hot].mean()),
        "pixels": n,
    }


def reader_measures(out, a, b, out_rgb=None, src_rgb=None) -> list[float]:
    """The READER_NAMES values of one output: grey `out`, MRI `a` and the other source's grey `b`
    (0-255); with colour output and source (RGB in [0, 1]) also the colour errors, else NaN."""
    rim = rim_share(out, a, b)
    hue = sat = float("nan")
    if out_rgb is not None and src_rgb is not None:
        c = colour_error(out_rgb, src_rgb, hot_mask(src_rgb))
        hue, sat = c["hue_deg"], c["saturation"]
    return [anatomy_under_function(out, a, b), rim["undershoot"], rim["overshoot"], hue, sat]
