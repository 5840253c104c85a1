"""Verdicts a few edited voxels cannot flip, and normalisation that stays finite for any input.

`verify` maps any image to [0, 1] robustly (amif.intensity.unit_values): a fused output as it is, a
few voxels set to anything (2, 50, 1e30, Inf, NaN) leave the verdict where it was, and an image that
is mostly NaN or infinite is an error, never "clean". Fusion normalises in float64 with an outlier-
proof window, so extreme finite voxels give a finite output; a non-finite network output is an error
and nothing is written; float colour volumes are scaled by their range, not clipped."""

import numpy as np
import pytest
import SimpleITK as sitk
from test_slicer_logic import blobs as slicer_blobs

from amif.cli import main
from amif.errors import AMIFError
from amif.fusion import fuse_images, fuse_volumes
from amif.package import bundled_key_path, bundled_model_path, load_package
from amif.verify import verify_image, verify_volume

EDITS = (2.0, 50.0, 1e3, 1e30, np.inf, np.nan)


def edited(arr, value, fraction=None, seed=0):
    """A copy of arr with one voxel (the middle one) or `fraction` of its voxels (at random) set to value."""
    out = np.array(arr, np.float32, copy=True)
    if fraction is None:
        out.flat[out.size // 2] = value
    else:
        out.flat[np.random.default_rng(seed).choice(out.size, max(1, int(out.size * fraction)), replace=False)] = value
    return out


def all_edits(arr):
    """(description, edited copy) for 1 voxel and 0.1% of the voxels at each of EDITS."""
    for value in EDITS:
        yield f"1 voxel at {value}", edited(arr, value)
        yield f"0.1% at {value}", edited(arr, value, 0.001)


@pytest.fixture(scope="module")
def bundled():
    return load_package(bundled_model_path())


@pytest.fixture(scope="module")
def fused_crops(bundled):
    """12 axial slices of the bundled sample fused by the bundled model, unkeyed and keyed: SimpleITK images."""
    from amif.sample import sample_volumes

    mri, pet = sample_volumes()
    mri, pet = mri[:, :, 64:76], pet[:, :, 64:76]
    out = {}
    for name, key in (("marked", None), ("clean", bundled_key_path())):
        r = fuse_volumes(mri, pet, bundled, key)
        assert r.verdict.state == name
        out[name] = r.image
    return out


def test_verify_volume_a_few_edited_voxels_cannot_flip_the_verdict(bundled, fused_crops):
    from amif.fusion import display_array

    for state, img in fused_crops.items():
        vol = display_array(img)
        base = verify_volume(vol, bundled.identifier, bundled.threshold)
        assert base.state == state
        verdicts = {
            what: (verify_volume(vol_e, bundled.identifier, bundled.threshold), vol_e) for what, vol_e in all_edits(vol)
        }
        moved = {
            what: str(v) for what, (v, _) in verdicts.items() if v.state != state or abs(v.score - base.score) > 0.05
        }
        assert not moved, f"{state} output ({base}) after edits: {moved}"
        for what, (v, vol_e) in verdicts.items():  # NaN and infinite voxels are counted
            assert v.nonfinite == np.count_nonzero(~np.isfinite(vol_e)), what


def test_cli_verify_of_an_edited_nrrd_keeps_its_verdict(fused_crops, tmp_path, capsys):
    for state, img in fused_crops.items():
        arr = sitk.GetArrayFromImage(img)
        for what, arr_e in all_edits(arr):
            out = sitk.GetImageFromArray(arr_e)
            out.CopyInformation(img)
            path = tmp_path / "edited.nrrd"
            sitk.WriteImage(out, str(path))
            capsys.readouterr()
            with pytest.raises(SystemExit) as ex:
                main(["verify", str(path)])
            text = capsys.readouterr().out
            assert ex.value.code == (1 if state == "marked" else 0), f"{state} output, {what}: {text}"
            assert f": {state} (score" in text, f"{state} output, {what}: {text}"


def test_verify_image_a_few_edited_pixels_cannot_flip_the_verdict(bundled):
    from amif.sample import sample_slices

    a, b = sample_slices()
    for key, state in ((None, "marked"), (bundled_key_path(), "clean")):
        y = fuse_images(a, b, bundled, key).fused
        assert verify_image(y, bundled.identifier, bundled.threshold).state == state
        for what, y_e in all_edits(y):
            v = verify_image(y_e, bundled.identifier, bundled.threshold)
            assert v.state == state, f"{state} image, {what}: {v}"


def test_cli_verify_of_a_16_bit_png_with_one_bright_pixel(bundled, tmp_path, capsys):
    """A 16-bit PNG is read as stored and mapped robustly: one pixel at 65535 does not dim the rest."""
    from PIL import Image

    from amif.sample import sample_slices

    a, b = sample_slices()
    y = fuse_images(a, b, bundled, None).fused
    pixels = np.round(y * 1000).astype(np.uint16)
    pixels[10:14, 10:14] = 65535
    Image.fromarray(pixels).save(tmp_path / "y16.png")
    with pytest.raises(SystemExit) as ex:
        main(["verify", str(tmp_path / "y16.png")])
    assert ex.value.code == 1 and ": marked (score" in capsys.readouterr().out


def test_a_mostly_nonfinite_volume_is_an_error_not_clean(bundled, fused_crops, tmp_path, capsys):
    arr = sitk.GetArrayFromImage(fused_crops["marked"])
    for fraction, value in ((None, np.nan), (0.6, np.nan), (0.6, np.inf)):
        bad = np.full_like(arr, value) if fraction is None else edited(arr, value, fraction)
        with pytest.raises(AMIFError, match="mostly NaN or infinite"):
            verify_volume(bad, bundled.identifier, bundled.threshold)
        img = sitk.GetImageFromArray(bad)
        img.CopyInformation(fused_crops["marked"])
        sitk.WriteImage(img, str(tmp_path / "bad.nrrd"))
        capsys.readouterr()
        assert main(["verify", str(tmp_path / "bad.nrrd")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("amif: error: ") and "mostly NaN or infinite" in err


# ---------------------------------------------------------------- fusion of extreme inputs

SHAPE = (6, 40, 48)


def blobs(seed=0):
    return slicer_blobs(SHAPE, seed)


def extreme(vol, fraction=0.01, seed=1):
    """vol with `fraction` of its voxels at +-3e38 (half each), finite float32."""
    out = vol.copy()
    idx = np.random.default_rng(seed).choice(vol.size, int(vol.size * fraction), replace=False)
    out.flat[idx[: len(idx) // 2]] = 3e38
    out.flat[idx[len(idx) // 2 :]] = -3e38
    return out


def test_extreme_finite_voxels_give_a_finite_output(tiny_package):
    pkg, _, _ = tiny_package
    mri, pet = blobs(), blobs(seed=2)
    bad = extreme(mri)
    assert np.isfinite(bad).all()
    r = fuse_volumes(sitk.GetImageFromArray(bad), sitk.GetImageFromArray(pet), pkg)
    assert np.isfinite(sitk.GetArrayFromImage(r.image)).all()
    # the window ignores the extremes: close to the clean MRI's own
    clean = fuse_volumes(sitk.GetImageFromArray(mri), sitk.GetImageFromArray(pet), pkg)
    assert np.allclose(r.windows[0], clean.windows[0], rtol=0.05, atol=1.0), (r.windows[0], clean.windows[0])
    # an explicit window spanning the extremes is still finite arithmetic
    r = fuse_volumes(sitk.GetImageFromArray(bad), sitk.GetImageFromArray(pet), pkg, window_a=(-3e38, 3e38))
    assert np.isfinite(sitk.GetArrayFromImage(r.image)).all()
    # 2D: the same
    y = fuse_images(bad[3], pet[3], pkg).fused
    assert np.isfinite(y).all()


def test_the_adapter_fuses_extreme_voxels_to_a_finite_output(tiny_package):
    import slicer

    from AMIFFusionLib import logic

    pkg_path = tiny_package[2] / "tiny.json"
    scene = slicer.vtkMRMLScene()
    nodes = []
    for arr, name in ((extreme(blobs()), "MRI"), (blobs(seed=2), "PET")):
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        slicer.util.updateVolumeFromArray(node, arr)
        nodes.append(node)
    fused = logic.fuse(*nodes, model_path=pkg_path, show=False)
    assert np.isfinite(slicer.util.arrayFromVolume(fused.node)).all()
    # shown with a display window computed from the extremes: still finite
    nodes[0].CreateDefaultDisplayNodes()
    nodes[0].GetDisplayNode().AutoWindowLevelOff()
    nodes[0].GetDisplayNode().SetWindowLevel(6e38, 0.0)
    fused = logic.fuse(*nodes, model_path=pkg_path, show=False)
    assert fused.windows[0] == (-3e38, 3e38)
    assert np.isfinite(slicer.util.arrayFromVolume(fused.node)).all()


def test_float_rgb_0_255_is_scaled_by_its_range_not_clipped(tiny_package):
    from amif.color import rgb_to_ycbcr

    pkg, _, _ = tiny_package
    mri = sitk.GetImageFromArray(blobs())
    rng = np.random.default_rng(3)
    rgb8 = np.clip(
        np.stack([blobs(seed=4), blobs(seed=5), blobs(seed=6)], -1) + rng.integers(0, 40, SHAPE + (3,)), 0, 255
    ).astype(np.uint8)
    outs = [
        sitk.GetArrayFromImage(fuse_volumes(mri, sitk.GetImageFromArray(v, isVector=True), pkg).image)
        for v in (rgb8, rgb8.astype(np.float32))
    ]
    assert np.abs(outs[0] - outs[1]).max() <= 1 / 255
    # not the clipped one: the float colours' chroma survives (a clip to [0, 1] makes them white)
    assert np.abs(rgb_to_ycbcr(outs[1])[..., 1:] - 0.5).max() > 0.05


def test_a_network_producing_nan_is_an_error_and_nothing_is_written(tiny_package, tmp_path, monkeypatch):
    import amif.fusion

    pkg, _, folder = tiny_package
    monkeypatch.setattr(
        amif.fusion, "run_network", lambda package, a, b, code, *args, **kw: np.full(np.shape(a), np.nan, np.float32)
    )
    mri, pet = sitk.GetImageFromArray(blobs()), sitk.GetImageFromArray(blobs(seed=2))
    with pytest.raises(AMIFError, match="NaN or infinite"):
        fuse_volumes(mri, pet, pkg)
    with pytest.raises(AMIFError, match="NaN or infinite"):
        fuse_images(blobs()[3], blobs(seed=2)[3], pkg)
    sitk.WriteImage(mri, str(tmp_path / "a.nrrd"))
    sitk.WriteImage(pet, str(tmp_path / "b.nrrd"))
    out = tmp_path / "f.nrrd"
    assert (
        main(
            [
                "fuse",
                str(tmp_path / "a.nrrd"),
                str(tmp_path / "b.nrrd"),
                "-o",
                str(out),
                "-m",
                str(folder / "tiny"),
                "-q",
            ]
        )
        == 2
    )
    assert not out.exists()
