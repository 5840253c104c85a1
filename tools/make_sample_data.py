"""Regenerate the bundled sample pair: an MRI T1 and a simulated FDG-PET-like volume.

Source: the MNI ICBM152 2009a template (T1, grey- and white-matter maps) as shipped inside the
nilearn wheel (`pip download nilearn --no-deps`, or an installed nilearn). The PET-like volume is
simulated: grey matter hot, white matter warm, a little uptake elsewhere in the head, 6 mm FWHM
partial-volume blur, multiplicative noise, on a coarser 3 mm grid (as PET is), so loading the
pair also exercises resampling. Usage:

    python tools/make_sample_data.py [--nilearn PATH_TO_WHEEL_OR_PACKAGE_DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

OUT = Path(__file__).resolve().parents[1] / "AMIFFusion" / "Resources" / "SampleData"
NAMES = {k: f"nilearn/datasets/data/mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("t1", "gm", "wm")}


def template_files(nilearn: str | None, tmp: Path) -> dict[str, Path]:
    if nilearn and nilearn.endswith(".whl"):
        with zipfile.ZipFile(nilearn) as z:
            for name in NAMES.values():
                z.extract(name, tmp)
        return {k: tmp / v for k, v in NAMES.items()}
    root = Path(nilearn) if nilearn else Path(importlib.util.find_spec("nilearn").origin).parent
    return {k: root.parent / v for k, v in NAMES.items()}


def resample(img: sitk.Image, spacing: float, interp=sitk.sitkLinear) -> sitk.Image:
    size = [int(round(n * s / spacing)) for n, s in zip(img.GetSize(), img.GetSpacing())]
    return sitk.Resample(
        img, size, sitk.Transform(), interp, img.GetOrigin(), (spacing,) * 3, img.GetDirection(), 0.0, sitk.sitkFloat32
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nilearn", help="nilearn wheel or package folder (default: the installed nilearn)")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        files = template_files(args.nilearn, Path(tmp))
        t1, gm, wm = (sitk.Cast(sitk.ReadImage(str(files[k])), sitk.sitkFloat32) for k in ("t1", "gm", "wm"))
    mri = resample(t1, 1.5)
    arr = sitk.GetArrayFromImage(mri)
    mri_u8 = sitk.GetImageFromArray(np.clip(arr, 0, 255).round().astype(np.uint8))
    mri_u8.CopyInformation(mri)

    g, w = sitk.GetArrayFromImage(gm) / 255.0, sitk.GetArrayFromImage(wm) / 255.0
    head = (sitk.GetArrayFromImage(t1) > 20).astype(np.float32)
    uptake = 1.0 * g + 0.3 * w + 0.05 * head
    pet = sitk.GetImageFromArray(uptake.astype(np.float32))
    pet.CopyInformation(t1)
    pet = sitk.SmoothingRecursiveGaussian(pet, 6.0 / 2.3548)  # 6 mm FWHM
    pet = resample(pet, 3.0)
    p = sitk.GetArrayFromImage(pet)
    p = p * (1 + 0.08 * rng.standard_normal(p.shape)) + 0.01 * rng.standard_normal(p.shape)
    p = np.clip(p / np.percentile(p, 99.9), 0, None) * 10000
    pet_u16 = sitk.GetImageFromArray(p.round().clip(0, 65535).astype(np.uint16))
    pet_u16.CopyInformation(pet)

    OUT.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(mri_u8, str(OUT / "AMIFSample-MRI.nrrd"), useCompression=True)
    sitk.WriteImage(pet_u16, str(OUT / "AMIFSample-PET.nrrd"), useCompression=True)
    for f in ("AMIFSample-MRI.nrrd", "AMIFSample-PET.nrrd"):
        print(f, (OUT / f).stat().st_size // 1024, "KiB")


if __name__ == "__main__":
    main()
