"""The bundled sample pair: an MNI ICBM152-based MRI and a simulated FDG-like PET (made by
tools/make_sample_data.py), as files, as volumes on one grid and as the slices figures show.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .package import resources_dir

SAMPLE_DIR = resources_dir() / "SampleData"
FILES = ("AMIFSample-MRI.nrrd", "AMIFSample-PET.nrrd")
SHOW_DEPTH = 0.55  # the axial slice the demo and the figures show, as a fraction of the extent


def sample_paths() -> tuple[Path, Path]:
    return SAMPLE_DIR / FILES[0], SAMPLE_DIR / FILES[1]


def sample_volumes():
    """MRI and PET as float SimpleITK images, the PET resampled onto the MRI's (finer) grid."""
    import SimpleITK as sitk

    from .fusion import resample_onto

    mri, pet = (sitk.ReadImage(str(p), sitk.sitkFloat32) for p in sample_paths())
    return mri, resample_onto(pet, mri)


def unit_slice(img, depth: float = SHOW_DEPTH) -> np.ndarray:
    """The axial slice at `depth` of a SimpleITK volume, windowed to [0, 1] by the volume's robust window."""
    from .fusion import display_array, robust_window

    vol = display_array(img)
    lo, hi = robust_window(vol)
    return np.clip((vol[int(depth * vol.shape[0])] - lo) / (hi - lo), 0, 1)


def sample_slices(depth: float = SHOW_DEPTH) -> tuple[np.ndarray, np.ndarray]:
    """The sample's MRI and PET at one axial slice, each in [0, 1]."""
    mri, pet = sample_volumes()
    return unit_slice(mri, depth), unit_slice(pet, depth)
