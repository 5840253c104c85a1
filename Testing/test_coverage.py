"""A second volume that covers only part of the first one's grid, and signed second volumes (z-maps).

Outside its extent the second volume B is taken to be its own background (amif.fusion.zero_signal_value):
its minimum for an ordinary volume, which its window maps to 0 ("no signal"), and 0 for a signed map with
a zero background. Its window, unless one is given, is computed on the voxels inside its extent only.
The references are fusions of A with B already on A's grid, padded by hand with that background value:
the same network inputs, so the outputs must agree to float32 rounding (1e-5)."""

import numpy as np
import SimpleITK as sitk

from amif.fusion import fuse_volumes, robust_window

SHAPE = (8, 36, 40)  # z, y, x of A
SLAB = 20  # B covers A's x < SLAB: half of A
REACH = 8  # voxels: farther than this from the map, the tiny network's output does not see it


def blobs(shape, seed, low=50.0, high=200.0):
    """Smooth positive intensities (an MRI or PET stand-in): a sum of Gaussian blobs."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    vol = np.zeros(shape, np.float32)
    for _ in range(6):
        c, r = rng.uniform(-0.6, 0.6, 3), rng.uniform(0.2, 0.5)
        vol += rng.uniform(low, high) * np.exp(-((k - c[0]) ** 2 + (j - c[1]) ** 2 + (i - c[2]) ** 2) / r**2)
    return vol


def signed_map(shape):
    """A thresholded statistical map: +5 and -5 peaks (activation, deactivation) on an exact-zero background."""
    k, j, i = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    m = 5 * np.exp(-((j - 10) ** 2 + (i - 6) ** 2) / 12) - 5 * np.exp(-((j - 26) ** 2 + (i - 13) ** 2) / 12)
    m[np.abs(m) < 0.5] = 0
    return m.astype(np.float32)


def image(arr, origin=(0.0, 0.0, 0.0)):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 1.0, 2.0))
    img.SetOrigin(origin)
    return img


def padded(slab: np.ndarray, fill: float) -> np.ndarray:
    """The slab on A's whole grid (x < SLAB), `fill` elsewhere."""
    full = np.full(SHAPE, fill, np.float32)
    full[..., :SLAB] = slab
    return full


def fused(r) -> np.ndarray:
    return sitk.GetArrayFromImage(r.image)


def test_coverage_is_where_the_resampling_read_the_second_volume():
    from amif.fusion import resample_with_coverage

    a = image(blobs(SHAPE, 0))
    b = image(blobs((6, 20, 17), 1), origin=(9.3, -4.6, 3.1))
    b.SetDirection(sitk.VersorTransform((0, 0, 1), 0.4).GetMatrix())
    _, covered = resample_with_coverage(b, a)
    nan = sitk.Resample(b, a, sitk.Transform(), sitk.sitkLinear, float("nan"), sitk.sitkFloat64)
    expected = np.isfinite(sitk.GetArrayViewFromImage(nan))
    assert 0.1 < expected.mean() < 0.9  # partly covered: the comparison means something
    np.testing.assert_array_equal(covered, expected)


def test_a_slab_is_windowed_on_its_own_values_and_is_no_signal_outside(tiny_package):
    pkg = tiny_package[0]
    mri = blobs(SHAPE, 2)
    pet = blobs(SHAPE, 3, 5.0, 40.0)[..., :SLAB] + 2.0  # a positive PET without zeros: min 2
    a, b = image(mri), image(pet)
    own = robust_window(pet)
    assert own[0] > pet.min()  # the fill (its minimum) on half of A would drag the window's low end

    r = fuse_volumes(a, b, pkg)
    np.testing.assert_allclose(r.windows[1], own, rtol=1e-6)  # the window of B alone: the fill left out
    # outside its extent B is no signal: padded with its minimum, which its window maps to 0
    assert (np.clip((pet.min() - own[0]) / (own[1] - own[0]), 0, 1)) == 0
    ref = fuse_volumes(a, image(padded(pet, pet.min())), pkg, window_b=own)
    np.testing.assert_allclose(fused(r), fused(ref), atol=1e-5)


def test_a_signed_map_keeps_its_sign_and_shows_no_box(tiny_package):
    pkg, key, _ = tiny_package
    a = image(blobs(SHAPE, 4))
    z = signed_map(SHAPE)[..., :SLAB]
    r = fuse_volumes(a, image(z), pkg, key)
    lo, hi = r.windows[1]
    np.testing.assert_allclose((lo, hi), robust_window(z), rtol=1e-6)  # its own range, both signs
    assert lo < -4 and hi > 4

    # No box: A's voxels outside the map's extent get the same input as its zero background inside it,
    # so the output equals the fusion with the map padded by its zeros (same inputs: float32 rounding).
    ref = fuse_volumes(a, image(padded(z, 0.0)), pkg, key, window_b=(lo, hi))
    np.testing.assert_allclose(fused(r), fused(ref), atol=1e-5)
    # Measured as the output's difference from A fused with no map at all (B = 0 everywhere, same
    # window): none (float32 rounding) outside the extent beyond the network's reach, through which the
    # map's peaks show a few voxels past its edge (REACH: twice the 4 voxels measured for the tiny net);
    # where the map is negative, a clear one.
    none = fused(fuse_volumes(a, image(np.zeros(SHAPE, np.float32)), pkg, key, window_b=(lo, hi)))
    change = fused(r) - none
    assert np.abs(change[..., SLAB + REACH :]).max() < 1e-5
    negative = padded(z, 0.0) < -2
    assert negative.sum() > 50 and np.abs(change[negative]).mean() > 1e-3
    # the sign is kept in the network's input: deactivations below the zero background, activations above
    assert (-2 - lo) / (hi - lo) < (0 - lo) / (hi - lo) < (2 - lo) / (hi - lo)


def test_the_adapter_with_display_windows_fills_outside_with_the_background(tiny_package):
    """The Slicer adapter passes the display window of each volume: used as it is, and the voxels outside
    the second volume's extent are its background under that window (no signal for a PET, the zero
    grey for a signed map), as if the second volume were padded with it on the first one's grid."""
    import slicer
    from test_slicer_logic import add_volume

    from AMIFFusionLib import logic

    pkg, key, folder = tiny_package
    model = folder / "tiny.json"
    pet = blobs(SHAPE, 5, 5.0, 40.0)[..., :SLAB] + 2.0
    cases = (("pet", pet, float(pet.min()), (10.0, 40.0)), ("z-map", signed_map(SHAPE)[..., :SLAB], 0.0, (-5.0, 5.0)))
    for name, slab, background, (low, high) in cases:
        scene = slicer.vtkMRMLScene()
        mri = add_volume(scene, blobs(SHAPE, 6), "mri")
        nodes = [add_volume(scene, slab, name), add_volume(scene, padded(slab, background), name + "-padded")]
        for node in nodes:
            node.CreateDefaultDisplayNodes()
            node.GetDisplayNode().AutoWindowLevelOff()
            node.GetDisplayNode().SetWindowLevelMinMax(low, high)
        out, ref = (logic.fuse(mri, node, key_path=key, model_path=model) for node in nodes)
        assert out.windows[1] == (low, high), name  # the display window, as it is
        np.testing.assert_allclose(
            slicer.util.arrayFromVolume(out.node), slicer.util.arrayFromVolume(ref.node), atol=1e-5, err_msg=name
        )


def test_a_colour_table_second_volume_has_its_background_colour_outside_its_extent():
    """Shown through a colour table, the second volume outside its extent has the colour of its background:
    for a PET the table's first entry (its minimum is below the window: "no signal"), for a signed map the
    colour of 0, as inside its extent."""
    import slicer
    from test_color_table import HEAT, shown
    from test_slicer_logic import add_volume

    from AMIFFusionLib import colortable, logic

    scene = slicer.vtkMRMLScene()
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLScene(scene)
    a = logic.image_from_node(add_volume(scene, blobs(SHAPE, 7), "mri"), "mri")
    pet = blobs(SHAPE, 8, 5.0, 40.0)[..., :SLAB] + 2.0
    for slab, color, (window, level), background in (
        (pet, HEAT, (30.0, 25.0), None),
        (signed_map(SHAPE)[..., :SLAB], "vtkMRMLColorTableNodefMRI", (10.0, 0.0), 0.0),
    ):
        node = shown(add_volume(scene, slab, "b"), color, window, level)
        mapping = colortable.color_mapping(node)
        out = sitk.GetArrayFromImage(logic.displayed_colour_image(logic.image_from_node(node, "b"), a, mapping))
        expected = mapping.palette[0] if background is None else mapping(np.array([background]))[0]
        assert (mapping(np.array([slab.max()]))[0] != expected).any()  # the check can tell
        if background is not None:  # nor is it the colour of the map's minimum (its deactivations)
            assert (mapping(np.array([slab.min()]))[0] != expected).any()
        outside = out[..., SLAB:, :].reshape(-1, 3)
        np.testing.assert_array_equal(outside, np.broadcast_to(expected, outside.shape))
        np.testing.assert_array_equal(out[..., :SLAB, :], mapping(slab))
