"""The Harvard registered pairs: <pair>/<split>/<MRI|CT|PET|SPECT>/<name>.png (see its README)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .color import luminance
from .errors import AMIFError

PAIR_TYPES = {"CT-MRI": "CT", "PET-MRI": "PET", "SPECT-MRI": "SPECT"}


@dataclass
class Pair:
    kind: str  # CT, PET or SPECT
    name: str
    mri: Path
    other: Path


def default_data_dir() -> Path:
    """../shared/data/harvard from the project root (this file is AMIFFusion/amif/data.py)."""
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "harvard"


def list_pairs(root: str | Path, split: str, kinds=None) -> list[Pair]:
    root = Path(root)
    pairs = []
    for folder, kind in PAIR_TYPES.items():
        if kinds and kind not in kinds:
            continue
        mri_dir, other_dir = root / folder / split / "MRI", root / folder / split / kind
        for p in sorted(mri_dir.glob("*.png")):
            q = other_dir / p.name
            if q.exists():
                pairs.append(Pair(kind, p.stem, p, q))
    if not pairs:
        raise AMIFError(f"No registered pairs found under {root} (split '{split}').")
    return pairs


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


def load_pairs(pairs: list[Pair]) -> tuple[np.ndarray, np.ndarray]:
    """Stack of (MRI, luminance of the other) as uint8 arrays of shape (n, h, w)."""
    a = np.stack([np.round(luminance(read_image(p.mri)) * 255) for p in pairs]).astype(np.uint8)
    b = np.stack([np.round(luminance(read_image(p.other)) * 255) for p in pairs]).astype(np.uint8)
    return a, b
