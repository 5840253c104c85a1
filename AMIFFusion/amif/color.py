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
    y, cb, cr = ycc[..., 0], ycc[..., 1] - 0.5, ycc[..., 2] - 0.5
    r = y + 1.402 * cr
    g = y - 0.344136 * cb - 0.714136 * cr
    b = y + 1.772 * cb
    return np.clip(np.stack([r, g, b], axis=-1), 0.0, 1.0)


def luminance(img: np.ndarray) -> np.ndarray:
    """Grey (h, w) passes through; (h, w, 3) RGB gives its Y."""
    return img if img.ndim == 2 else rgb_to_ycbcr(img)[..., 0]
