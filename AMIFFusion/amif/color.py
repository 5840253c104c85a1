"""YCbCr (BT.601 full range, as in JPEG): colour PET/SPECT are fused on Y, chroma restored."""

from __future__ import annotations

import numpy as np


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) RGB in [0, 1] -> (..., 3) Y, Cb, Cr in [0, 1] (Cb, Cr centred on 0.5)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 0.5 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 0.5 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return np.stack([y, cb, cr], axis=-1)


def ycbcr_to_rgb(ycc: np.ndarray) -> np.ndarray:
    """(..., 3) Y, Cb, Cr -> RGB in [0, 1] with the luminance Y kept: where a colour would leave the
    RGB cube, its chroma is scaled down (same hue, less saturation) until it fits, instead of
    clipping the channels, which would darken bright saturated pixels (a fused Y that the output's
    grey no longer shows). In-gamut colours, e.g. any rgb_to_ycbcr(rgb), come back unchanged."""
    y = np.clip(ycc[..., 0], 0.0, 1.0)[..., None]
    cb, cr = ycc[..., 1] - 0.5, ycc[..., 2] - 0.5
    d = np.stack([1.402 * cr, -0.344136 * cb - 0.714136 * cr, 1.772 * cb], axis=-1)  # zero luminance
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.where(d > 0, (1 - y) / d, np.where(d < 0, -y / d, np.inf))
    s = np.clip(room.min(-1, keepdims=True), 0.0, 1.0)
    return np.clip(y + s * d, 0.0, 1.0)  # the clip only removes rounding


def luminance(img: np.ndarray) -> np.ndarray:
    """Grey (h, w) passes through; (h, w, 3) RGB gives its Y."""
    return img if img.ndim == 2 else rgb_to_ycbcr(img)[..., 0]
