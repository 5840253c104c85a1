"""Volume inputs users have: DICOM series folders (--series), one slice of a series, 4D images (--frame),
FreeSurfer .mgz (nibabel): read by amif.volumes and fused through `amif fuse`."""

from __future__ import annotations

import builtins
import locale
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from amif.cli import main
from amif.errors import AMIFError

SERIES_A = "1.2.826.0.1.3680043.2.1125.7.1"
SERIES_B = "1.2.826.0.1.3680043.2.1125.7.2"
STUDY = "1.2.826.0.1.3680043.2.1125.7"
NOISE = ("HDF5", "ITK", "WARNING", "GDCM")


def read_volume(path, series=None, frame=None):
    """amif.volumes.read_volume, imported per test (so that each test reports its own failure where it is missing)."""
    from amif.volumes import read_volume

    return read_volume(path, series, frame)


def _write_series(folder: Path, uid: str, slices: int, spacing, origin, offset: int = 0, modality: str = "MR"):
    """A DICOM series of `slices` axial 32x32 int16 slices (slice s holds offset + s + a ramp), as SimpleITK's
    DicomSeriesFromArray example writes one. GDCM's writer sets the C locale (ASCII file names and text
    for Python after it): the locale is put back."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        _write_slices(folder, uid, slices, spacing, origin, offset, modality)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_slices(folder: Path, uid: str, slices: int, spacing, origin, offset: int, modality: str):
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    ramp = np.arange(32 * 32, dtype=np.int16).reshape(32, 32) % 200
    for s in range(slices):
        img = sitk.GetImageFromArray((ramp + offset + s).astype(np.int16))
        pos = (origin[0], origin[1], origin[2] + s * spacing[2])
        img.SetSpacing(spacing[:2])
        img.SetOrigin(pos)
        for tag, value in (
            ("0008|0060", modality),
            ("0020|000d", STUDY),
            ("0020|000e", uid),
            ("0020|0032", "\\".join(str(v) for v in pos)),
            ("0020|0013", str(s + 1)),
            ("0020|0037", "1\\0\\0\\0\\1\\0"),
            ("0028|0030", f"{spacing[1]}\\{spacing[0]}"),
            ("0018|0050", str(spacing[2])),
            ("0008|0018", f"{uid}.{s + 1}"),
        ):
            img.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{uid[-1]}-{s:02d}.dcm"))
        writer.Execute(img)


@pytest.fixture
def dicom(tmp_path):
    """A folder with two overlapping series: A (6 slices, 0.5x0.75x2.5 mm) and B (4 slices, 1x1x3 mm)."""
    folder = tmp_path / "dicom"
    _write_series(folder, SERIES_A, 6, (0.5, 0.75, 2.5), (10.0, -20.0, 30.0))
    _write_series(folder, SERIES_B, 4, (1.0, 1.0, 3.0), (12.0, -18.0, 33.0), offset=1000, modality="PT")
    return folder


def _quiet(capfd):
    """Nothing from ITK, GDCM or HDF5 reached the process's stderr (C++ output included)."""
    err = capfd.readouterr().err
    assert not any(word in err for word in NOISE), err


def _error(capfd, args, match):
    capfd.readouterr()
    assert main(args) == 2
    err = capfd.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("amif: error: ") and match in lines[0], err
    return lines[0]


def test_dicom_folder_reads_its_first_series_or_the_one_asked(dicom, capfd):
    first = read_volume(dicom)  # GDCM's first series: either one
    assert first.GetSize()[2] in (4, 6)
    a = read_volume(dicom, series=SERIES_A)
    assert a.GetSize() == (32, 32, 6)
    assert np.allclose(a.GetSpacing(), (0.5, 0.75, 2.5))
    assert np.allclose(a.GetOrigin(), (10.0, -20.0, 30.0))
    arr = sitk.GetArrayFromImage(a)
    assert [int(arr[s, 0, 1]) for s in range(6)] == [1 + s for s in range(6)]  # slices in order
    b = read_volume(dicom, series=SERIES_B)
    assert b.GetSize() == (32, 32, 4) and np.allclose(b.GetSpacing(), (1.0, 1.0, 3.0))
    assert np.allclose(b.GetOrigin(), (12.0, -18.0, 33.0))
    assert int(sitk.GetArrayFromImage(b)[0, 0, 0]) == 1000
    _quiet(capfd)


def test_unknown_series_lists_the_ones_found(dicom, capfd):
    with pytest.raises(AMIFError, match="No DICOM series 1.2.3 in") as e:
        read_volume(dicom, series="1.2.3")
    assert SERIES_A in str(e.value) and SERIES_B in str(e.value)
    _quiet(capfd)


def test_one_file_of_a_series_is_refused(dicom, capfd):
    with pytest.raises(AMIFError, match="is one slice of a DICOM series of 6 files: give the folder"):
        read_volume(dicom / "1-02.dcm")
    _quiet(capfd)


def test_a_single_dicom_file_alone_reads(tmp_path, capfd):
    _write_series(tmp_path / "one", SERIES_A, 1, (0.5, 0.5, 1.0), (0.0, 0.0, 0.0))
    img = read_volume(tmp_path / "one" / "1-00.dcm")
    assert img.GetSize()[:2] == (32, 32)
    _quiet(capfd)


def test_folder_without_dicom_is_one_error(tmp_path, capfd):
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "notes.txt").write_text("no images here")
    with pytest.raises(AMIFError, match="No DICOM series in the folder"):
        read_volume(folder)
    _quiet(capfd)


def test_fuse_dicom_folders_end_to_end(tiny_package, tmp_path, capfd):
    a, b = tmp_path / "mri", tmp_path / "pet"
    _write_series(a, SERIES_A, 6, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    _write_series(b, SERIES_B, 6, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), offset=50, modality="PT")
    out = tmp_path / "out.nrrd"
    assert main(["fuse", str(a), str(b), "-o", str(out), "-m", str(tiny_package[2] / "tiny"), "-q"]) == 0
    fused = sitk.ReadImage(str(out))
    assert fused.GetSize() == (32, 32, 6) and fused.HasMetaDataKey("AMIF_watermark")
    _quiet(capfd)


def test_fuse_series_option(tiny_package, dicom, tmp_path, capfd):
    model = ["-m", str(tiny_package[2] / "tiny"), "-q"]
    b = tmp_path / "b"
    _write_series(b, "1.2.826.0.1.3680043.2.1125.8.1", 6, (0.5, 0.75, 2.5), (10.0, -20.0, 30.0), modality="PT")
    out = tmp_path / "out.nrrd"
    assert main(["fuse", str(dicom), str(b), "-o", str(out), "--series", SERIES_A, *model]) == 0
    assert sitk.ReadImage(str(out)).GetSize() == (32, 32, 6)
    out2 = tmp_path / "out2.nrrd"
    assert main(["fuse", str(dicom), str(b), "-o", str(out2), "--series", SERIES_B, *model]) == 0
    assert sitk.ReadImage(str(out2)).GetSize() == (32, 32, 4)  # the output keeps the first volume's grid
    line = _error(
        capfd,
        ["fuse", str(dicom), str(b), "-o", str(tmp_path / "x.nrrd"), "--series", "9.9", *model],
        "No DICOM series 9.9",
    )
    assert SERIES_A in line and SERIES_B in line
    assert not (tmp_path / "x.nrrd").exists()
    _error(
        capfd,
        ["fuse", str(dicom / "1-00.dcm"), str(b), "-o", str(tmp_path / "x.nrrd"), *model],
        "1-00.dcm is one slice of a DICOM series of 6 files",
    )
    assert not (tmp_path / "x.nrrd").exists()


def test_a_folder_is_still_refused_as_a_2d_input(tiny_package, tmp_path, capfd):
    (tmp_path / "a.png").mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "b.png")
    _error(
        capfd,
        [
            "fuse",
            str(tmp_path / "a.png"),
            str(tmp_path / "b.png"),
            "-o",
            str(tmp_path / "f.png"),
            "-m",
            str(tiny_package[2] / "tiny"),
        ],
        "it is a folder",
    )


# ---------------------------------------------------------------- 4D images


def _frames():
    rng = np.random.default_rng(3)
    return [(rng.random((5, 32, 32)) * 100 + 10 * t).astype(np.float32) for t in range(3)]


@pytest.fixture
def four_d(tmp_path):
    frames = []
    for arr in _frames():
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((0.8, 0.9, 2.0))
        img.SetOrigin((1.0, 2.0, 3.0))
        frames.append(img)
    path = tmp_path / "dyn.nii.gz"
    sitk.WriteImage(sitk.JoinSeries(frames), str(path))
    return path


def test_4d_needs_a_frame(four_d):
    with pytest.raises(AMIFError, match="is a 4D image; a 3D volume is needed: use --frame N or --frame mean"):
        read_volume(four_d)


def test_4d_frame_and_mean(four_d):
    frames = _frames()
    one = read_volume(four_d, frame=1)
    assert one.GetDimension() == 3 and one.GetSize() == (32, 32, 5)
    assert np.allclose(one.GetSpacing(), (0.8, 0.9, 2.0)) and np.allclose(one.GetOrigin(), (1.0, 2.0, 3.0))
    assert np.array_equal(sitk.GetArrayFromImage(one), frames[1])
    mean = read_volume(four_d, frame="mean")
    assert mean.GetDimension() == 3 and np.allclose(mean.GetSpacing(), (0.8, 0.9, 2.0))
    assert np.allclose(sitk.GetArrayFromImage(mean), np.mean(frames, axis=0), atol=1e-4)
    with pytest.raises(AMIFError, match="has 3 frames: --frame 3 is out of range"):
        read_volume(four_d, frame=3)


def test_fuse_4d_with_frame(tiny_package, four_d, tmp_path, capfd):
    b = sitk.GetImageFromArray(_frames()[0])
    b.SetSpacing((0.8, 0.9, 2.0))
    b.SetOrigin((1.0, 2.0, 3.0))
    sitk.WriteImage(b, str(tmp_path / "b.nrrd"))
    model = ["-m", str(tiny_package[2] / "tiny"), "-q"]
    out = tmp_path / "out.nrrd"
    _error(
        capfd, ["fuse", str(four_d), str(tmp_path / "b.nrrd"), "-o", str(out), *model], "use --frame N or --frame mean"
    )
    assert not out.exists()
    assert main(["fuse", str(four_d), str(tmp_path / "b.nrrd"), "-o", str(out), "--frame", "mean", *model]) == 0
    assert sitk.ReadImage(str(out)).GetSize() == (32, 32, 5)
    with pytest.raises(SystemExit):
        main(["fuse", str(four_d), str(tmp_path / "b.nrrd"), "-o", str(out), "--frame", "last", *model])


# ---------------------------------------------------------------- .mgz (nibabel)


def test_mgz_keeps_nibabels_geometry(tmp_path):
    nibabel = pytest.importorskip("nibabel")
    data = np.arange(6 * 7 * 8, dtype=np.float32).reshape(6, 7, 8)
    c, s = np.cos(0.3), np.sin(0.3)
    affine = np.array(
        [[-1.0 * c, 0.0, 1.5 * s, 90.0], [0.0, 1.2, 0.0, -100.0], [1.0 * s, 0.0, 1.5 * c, 40.0], [0, 0, 0, 1]]
    )
    path = tmp_path / "brain.mgz"
    nibabel.MGHImage(data, affine).to_filename(str(path))
    img = read_volume(path)
    assert img.GetSize() == (6, 7, 8)
    stated = nibabel.load(str(path)).affine
    flip = np.diag([-1.0, -1.0, 1.0])
    for ijk in ((0, 0, 0), (5, 0, 0), (0, 6, 0), (0, 0, 7), (2, 3, 4)):
        lps = flip @ (stated @ np.array([*ijk, 1.0]))[:3]
        assert np.allclose(img.TransformIndexToPhysicalPoint(ijk), lps, atol=1e-4), ijk
        assert img[ijk] == data[ijk]


def test_mgz_without_nibabel_is_one_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "brain.mgz"
    path.write_bytes(b"\0" * 400)
    real = builtins.__import__

    def no_nibabel(name, *args, **kwargs):
        if name == "nibabel" or name.startswith("nibabel."):
            raise ImportError("No module named 'nibabel'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_nibabel)
    with pytest.raises(AMIFError, match="reading .mgz needs nibabel: pip install nibabel"):
        read_volume(path)
