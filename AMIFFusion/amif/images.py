"""2D image files (PNG, JPEG) as float arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import AMIFError


def read_image(path: str | Path, unit: bool = True) -> np.ndarray:
    """PNG/JPEG -> float32 in [0, 1]: (h, w) grey or (h, w, 3) RGB (8-bit / 255, others by their
    minimum and maximum). unit=False: the values as stored (uint8, or float64 for 16- and 32-bit
    modes), for a caller that maps them itself (`amif verify`: intensity.unit_values)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB") if im.mode not in ("L", "I;16", "I", "F") else im
            arr = np.asarray(im)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise AMIFError(f"Cannot read image {Path(path).name}: {e}") from None
    if not unit:
        arr = arr if arr.dtype == np.uint8 else arr.astype(np.float64)
    elif arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    else:
        arr = arr.astype(np.float32)
        arr = (arr - arr.min()) / max(float(arr.max() - arr.min()), 1e-8)
    if arr.ndim == 3 and np.allclose(arr[..., 0], arr[..., 1]) and np.allclose(arr[..., 0], arr[..., 2]):
        arr = arr[..., 0]
    return arr
