"""The Harvard registered pairs: <pair>/<split>/<MRI|CT|PET|SPECT>/<name>.png (see its README)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from amif.color import luminance
from amif.errors import AMIFError
from amif.images import read_image  # noqa: F401 (also this module's API)

PAIR_TYPES = {"CT-MRI": "CT", "PET-MRI": "PET", "SPECT-MRI": "SPECT"}


@dataclass
class Pair:
    kind: str  # CT, PET or SPECT
    name: str
    mri: Path
    other: Path


def default_data_dir() -> Path:
    """../shared/data/harvard from the project root (this file is research/amif_research/data.py)."""
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


def load_pairs(pairs: list[Pair]) -> tuple[np.ndarray, np.ndarray]:
    """Stack of (MRI, luminance of the other) as uint8 arrays of shape (n, h, w)."""
    a = np.stack([np.round(luminance(read_image(p.mri)) * 255) for p in pairs]).astype(np.uint8)
    b = np.stack([np.round(luminance(read_image(p.other)) * 255) for p in pairs]).astype(np.uint8)
    return a, b
