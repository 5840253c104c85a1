"""Reading volume inputs: image files SimpleITK reads, DICOM series folders, 4D images and FreeSurfer .mgz.

`read_volume(path, series=None, frame=None)` returns a SimpleITK image, 3D for every input but a plain
file of another dimension (which fusion then refuses with its own message), or raises one AMIFError:

- a folder is read as a DICOM series (SimpleITK's GDCM series reader): its first series, or the one whose
  SeriesInstanceUID is `series`; a folder without DICOM, or an unknown UID (the message lists the UIDs
  found), is an AMIFError. ITK's warnings are kept off while the folder is probed and read.
- a single DICOM file whose folder holds more files of its series is refused: the folder is the volume.
- a 4D image (dimension 4: a 4D NIfTI or NRRD) needs `frame`: N (0-based) picks frame N, "mean" averages
  the frames (as float32); a 4D image of one frame is that frame. A 3D image ignores `frame`.
- `.mgz` / `.mgh` files are read with nibabel when it is installed (the optional extra `formats`); the
  voxel-to-world mapping is nibabel's affine with RAS turned into SimpleITK's LPS.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import AMIFError
from .files import shown

MGH = (".mgz", ".mgh")
SERIES_UID = "0020|000e"


def parse_frame(text):
    """`--frame`'s value: "mean" or a frame number >= 0 (an int); anything else is a ValueError."""
    if isinstance(text, str) and text.strip().lower() == "mean":
        return "mean"
    n = int(text)
    if n < 0:
        raise ValueError(f"a frame number is 0 or more, not {n}")
    return n


@contextlib.contextmanager
def quiet_itk() -> Iterator[None]:
    """ITK's warnings (printed by the C++ library on stderr) are off inside the block, then as they were."""
    import SimpleITK as sitk

    old = sitk.ProcessObject_GetGlobalWarningDisplay()
    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject_SetGlobalWarningDisplay(old)


def itk_path(path, role: str = "") -> str:
    """`path` as SimpleITK takes it; a name that is not valid UTF-8 (which aborts SimpleITK's C++) is an
    AMIFError (naming the path's `role`, e.g. "input", when given)."""
    try:
        os.path.abspath(path).encode("utf-8")
    except UnicodeError:
        what = f"The {role} {shown(path)}" if role else shown(path)
        raise AMIFError(f"{what} has a name that is not valid UTF-8, which SimpleITK cannot use: rename it.") from None
    return str(path)


def dicom_series(folder) -> tuple[str, ...]:
    """The SeriesInstanceUIDs of the DICOM series in `folder` (not its subfolders), in GDCM's order."""
    import SimpleITK as sitk

    with quiet_itk():
        return tuple(sitk.ImageSeriesReader.GetGDCMSeriesIDs(itk_path(folder)))


def _series_files(folder, uid: str) -> tuple[str, ...]:
    import SimpleITK as sitk

    with quiet_itk():
        return tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(itk_path(folder), uid))


def _read_series(folder: Path, series):
    import SimpleITK as sitk

    ids = dicom_series(folder)
    if not ids:
        raise AMIFError(f"No DICOM series in the folder {shown(folder)}.")
    if series is not None and series not in ids:
        raise AMIFError(
            f"No DICOM series {shown(series)} in the folder {shown(folder)}; it holds " + ", ".join(ids) + "."
        )
    files = _series_files(folder, series or ids[0])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(files))
    try:
        with quiet_itk():
            return reader.Execute()
    except RuntimeError:
        raise AMIFError(
            f"Cannot read the DICOM series {series or ids[0]} in {shown(folder)} as an image volume."
        ) from None


def _read_file(path: Path):
    import SimpleITK as sitk

    what = f"Cannot read {shown(path.name)} as an image volume."
    reader = sitk.ImageFileReader()
    reader.SetFileName(itk_path(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise AMIFError(what) from None
    if reader.HasMetaDataKey(SERIES_UID):
        uid = reader.GetMetaData(SERIES_UID).strip().rstrip("\0").strip()
        n = len(_series_files(path.parent, uid)) if uid else 0
        if n > 1:
            raise AMIFError(
                f"{shown(path.name)} is one slice of a DICOM series of {n} files: give the folder "
                f"{shown(path.parent)} instead."
            )
    try:
        return reader.Execute()
    except RuntimeError:
        raise AMIFError(what) from None


def _read_mgh(path: Path):
    """An .mgz/.mgh file as a SimpleITK image of nibabel's geometry (4D when it has frames)."""
    import SimpleITK as sitk

    try:
        import nibabel
    except ImportError:
        raise AMIFError(f"Cannot read {shown(path.name)}: reading .mgz needs nibabel: pip install nibabel") from None
    try:
        img = nibabel.load(str(path))
        data = np.asanyarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception:  # nibabel raises many kinds on a bad file
        raise AMIFError(f"Cannot read {shown(path.name)} as an image volume.") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim not in (3, 4):
        raise AMIFError(f"{shown(path.name)} is a {data.ndim}D image; a 3D volume is needed.")
    data = data.astype(data.dtype.newbyteorder("="), copy=False)
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3]  # nibabel's world is RAS, SimpleITK's is LPS
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    if not np.all(spacing > 0):
        raise AMIFError(f"Cannot read {shown(path.name)}: its affine has a zero voxel size.")
    # nibabel's array is indexed (i, j, k[, t]); SimpleITK's from numpy is (k, j, i) / (t, k, j, i)
    out = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(tuple(range(data.ndim))[::-1])))
    dim = data.ndim
    direction, sp, origin = np.eye(dim), np.ones(dim), np.zeros(dim)
    direction[:3, :3], sp[:3], origin[:3] = lps[:, :3] / spacing, spacing, lps[:, 3]
    try:
        out.SetSpacing([float(s) for s in sp])
        out.SetOrigin([float(o) for o in origin])
        out.SetDirection([float(d) for d in direction.ravel()])
    except RuntimeError:
        raise AMIFError(
            f"Cannot read {shown(path.name)}: its affine is not a rotation with voxel sizes (sheared)."
        ) from None
    return out


def pick_frame(img, frame, name: str):
    """A 3D volume of the 4D image `img`: frame `frame` (0-based) or, for "mean", the mean of all frames
    (float32). Images of another dimension come back as they are. `name` names the image in errors."""
    import SimpleITK as sitk

    if img.GetDimension() != 4:
        return img
    size = list(img.GetSize())
    n = size[3]
    if frame is None and n > 1:
        raise AMIFError(
            f"{name} is a 4D image; a 3D volume is needed: use --frame N or --frame mean "
            f"({n} frames, N from 0 to {n - 1})."
        )
    if frame == "mean":
        first = sitk.Extract(img, size[:3] + [0], [0, 0, 0, 0])
        arr = sitk.GetArrayViewFromImage(img)
        mean = sitk.GetImageFromArray(
            arr.mean(axis=0, dtype=np.float64).astype(np.float32), isVector=img.GetNumberOfComponentsPerPixel() > 1
        )
        mean.CopyInformation(first)
        return mean
    index = 0 if frame is None else int(frame)
    if not 0 <= index < n:
        raise AMIFError(f"{name} has {n} frames: --frame {index} is out of range (0 to {n - 1}).")
    return sitk.Extract(img, size[:3] + [0], [0, 0, 0, index])


def read_volume(path, series=None, frame=None):
    """The volume at `path` (a file or a DICOM series folder) as a SimpleITK image; see the module's notes.
    `series`: a SeriesInstanceUID, for a folder; `frame`: N or "mean", for a 4D image. One AMIFError
    for anything that cannot be read."""
    p = Path(path)
    if p.is_dir():
        img = _read_series(p, series)
    elif not p.exists():
        raise AMIFError(f"Cannot read {shown(p.name)} as an image volume: it does not exist.")
    elif p.name.lower().endswith(MGH):
        img = _read_mgh(p)
    else:
        img = _read_file(p)
    return pick_frame(img, frame, shown(p.name))


def read_volumes(paths, series=None, frame=None) -> list:
    """`read_volume` of each path, with `series` applied to the folders that hold that series (the other
    folders give their first series) and `frame` to the 4D images. A `series` that no folder among
    `paths` holds is an AMIFError listing the series found."""
    picks = [None] * len(paths)
    if series is not None:
        folders = [i for i, p in enumerate(paths) if Path(p).is_dir()]
        if not folders:
            raise AMIFError("--series picks a series of a DICOM folder, and no input is a folder.")
        found = {i: dicom_series(paths[i]) for i in folders}
        holders = [i for i in folders if series in found[i]]
        if not holders:
            ids = [u for i in folders for u in found[i]]
            raise AMIFError(
                f"No DICOM series {shown(series)} in "
                + " or ".join(shown(paths[i]) for i in folders)
                + ("; found " + ", ".join(ids) + "." if ids else "; they hold no DICOM series.")
            )
        for i in holders:
            picks[i] = series
    return [read_volume(p, s, frame) for p, s in zip(paths, picks)]
