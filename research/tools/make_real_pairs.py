"""Build two real registered volume pairs from files that nibabel and nilearn ship, into a folder.

    python research/tools/make_real_pairs.py OUT [--nilearn-wheel PATH] [--mni-spacing MM]

  t1_bold-A.nii.gz, t1_bold-B.nii.gz: nibabel's tests/data anatomical.nii (a T1, 33x41x25 at 2 mm)
      and the mean over time of its functional.nii (BOLD, 4 x 4 x 8 mm, covering about half of the T1's
      slices): B on its own grid, as a viewer loads it.
  mni_stat-A.nrrd, mni_stat-B.nrrd: nilearn's MNI ICBM152 2009a T1 (1 mm) and its NeuroVault statistical
      map image_10426 (a signed t map on a coarser MNI grid). `--mni-spacing` resamples the T1 to that
      spacing (mm) first (smaller, faster pairs for tests).

nilearn's files are read from an installed nilearn (located, not imported) or from its wheel
(`--nilearn-wheel`, e.g. from `pip download nilearn --no-deps`); without either the MNI pair is left
out. The images are built at run time and never committed. Every file is written atomically.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "AMIFFusion"))

from amif.files import atomic_output  # noqa: E402

MNI_T1 = "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
STAT_MAP = "nilearn/datasets/data/image_10426.nii.gz"
NIBABEL_FILES = ("anatomical.nii", "functional.nii")


def nibabel_data() -> Path | None:
    """nibabel's tests/data folder when it holds anatomical.nii and functional.nii, else None."""
    spec = importlib.util.find_spec("nibabel")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(list(spec.submodule_search_locations)[0]) / "tests" / "data"
    return d if all((d / f).is_file() for f in NIBABEL_FILES) else None


def nilearn_files(wheel=None) -> dict[str, bytes] | None:
    """{name: bytes} of nilearn's MNI T1 and statistical map, from `wheel` (a path) if given, else from
    an installed nilearn (found without importing it), else from AMIF_NILEARN_WHEEL; None if none has them."""
    wheel = wheel or os.environ.get("AMIF_NILEARN_WHEEL")
    if not wheel:
        spec = importlib.util.find_spec("nilearn")
        if spec is not None and spec.submodule_search_locations:
            root = Path(list(spec.submodule_search_locations)[0]).parent
            if all((root / n).is_file() for n in (MNI_T1, STAT_MAP)):
                return {n: (root / n).read_bytes() for n in (MNI_T1, STAT_MAP)}
        return None
    if not Path(wheel).is_file():
        return None
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        return {n: z.read(n) for n in (MNI_T1, STAT_MAP)} if {MNI_T1, STAT_MAP} <= names else None


def _write(img, path: Path) -> Path:
    import SimpleITK as sitk

    with atomic_output(path) as tmp:
        sitk.WriteImage(img, str(tmp), True)
    return path


def _read_bytes(data: bytes, suffix: str):
    import SimpleITK as sitk

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"image{suffix}"
        p.write_bytes(data)
        return sitk.ReadImage(str(p), sitk.sitkFloat32)


def t1_bold(data: Path):
    """(T1, mean BOLD) as SimpleITK float images on their own grids."""
    import nibabel as nib
    import SimpleITK as sitk

    t1 = sitk.ReadImage(str(data / NIBABEL_FILES[0]), sitk.sitkFloat32)
    func = nib.load(str(data / NIBABEL_FILES[1]))
    mean = np.asarray(func.dataobj, np.float32).mean(-1)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "mean.nii"
        nib.Nifti1Image(mean, func.affine).to_filename(str(p))
        return t1, sitk.ReadImage(str(p), sitk.sitkFloat32)


def mni_stat(files: dict[str, bytes], spacing: float | None = None):
    """(MNI T1, statistical map) as SimpleITK float images; the T1 resampled to `spacing` mm if given."""
    import SimpleITK as sitk

    t1, stat = (_read_bytes(files[n], ".nii.gz") for n in (MNI_T1, STAT_MAP))
    if spacing:
        size = [max(1, round(n * s / spacing)) for n, s in zip(t1.GetSize(), t1.GetSpacing())]
        ref = sitk.Image(size, sitk.sitkFloat32)
        ref.SetSpacing([float(spacing)] * 3)
        ref.SetDirection(t1.GetDirection())
        ref.SetOrigin(t1.TransformContinuousIndexToPhysicalPoint([(spacing / s - 1) / 2 for s in t1.GetSpacing()]))
        t1 = sitk.Resample(t1, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return t1, stat


def build_pairs(out, wheel=None, mni_spacing: float | None = None) -> dict[str, tuple[Path, Path]]:
    """Write the pairs whose source files are present into folder `out`: {name: (A path, B path)}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pairs = {}
    data = nibabel_data()
    if data is not None:
        a, b = t1_bold(data)
        pairs["t1_bold"] = (_write(a, out / "t1_bold-A.nii.gz"), _write(b, out / "t1_bold-B.nii.gz"))
    files = nilearn_files(wheel)
    if files is not None:
        a, b = mni_stat(files, mni_spacing)
        pairs["mni_stat"] = (_write(a, out / "mni_stat-A.nrrd"), _write(b, out / "mni_stat-B.nrrd"))
    return pairs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="folder to write the pairs into")
    p.add_argument("--nilearn-wheel", help="nilearn wheel to read its files from (default: an installed nilearn)")
    p.add_argument("--mni-spacing", type=float, help="resample the MNI T1 to this spacing, mm")
    args = p.parse_args(argv)
    pairs = build_pairs(args.out, args.nilearn_wheel, args.mni_spacing)
    for name, (a, b) in pairs.items():
        print(f"{name}: {a} {b}")
    missing = {"t1_bold", "mni_stat"} - set(pairs)
    if missing:
        print(f"left out (source files not found): {', '.join(sorted(missing))}", file=sys.stderr)
    return 0 if pairs else 1


if __name__ == "__main__":
    sys.exit(main())
