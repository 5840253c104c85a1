"""A PET/SPECT shown through a colour table is fused in the colours the user sees (`colortable`,
`logic.fuse(use_color_table=...)`), on real MRML from the `slicer-core` wheel: Slicer's default
colour nodes (vtkMRMLColorLogic), and the display node's own VTK pipeline as the reference for
what Slicer shows. Synthetic volumes use the tiny model; the bundled sample uses the bundled model."""

from __future__ import annotations

import numpy as np
import pytest
import slicer  # slicer-core: a missing wheel must fail loudly, not skip
import vtk
from test_slicer_logic import MODELS, SAMPLE, add_volume, blobs, ijk_to_ras, matrix, read_volume, snapshot
from vtk.util import numpy_support

from amif.color import rgb_to_ycbcr
from amif.errors import AMIFError
from AMIFFusionLib import colortable, logic

SHAPE = (12, 32, 40)
HEAT = "vtkMRMLPETProceduralColorNodePET-Heat"
RAINBOW = "vtkMRMLColorTableNodeRainbow"


@pytest.fixture
def scene():
    """A scene with Slicer's default colour nodes (Grey, Rainbow, PET-Heat, ...)."""
    scene = slicer.vtkMRMLScene()
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLScene(scene)
    scene.colors = colors  # keep the logic alive with the scene
    return scene


@pytest.fixture
def tiny(tiny_package):
    pkg, key_path, folder = tiny_package
    return folder / "tiny.json", key_path


def shown(node, color_id, window=None, level=None, **display):
    """Give the node a display node showing it through `color_id` (and window/level, options)."""
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    d = node.GetDisplayNode()
    d.SetAndObserveColorNodeID(color_id)
    if window is not None:
        d.AutoWindowLevelOff()
        d.SetWindowLevel(window, level)
    for name, value in display.items():
        getattr(d, f"Set{name}")(value)
    return node


def slicer_rgb(node) -> np.ndarray:
    """What Slicer shows: the RGB of the display node's own pipeline (window/level, colour table)."""
    d = node.GetDisplayNode()
    d.SetInputImageDataConnection(None)  # reconnect, so that the pipeline follows the display settings
    d.SetInputImageDataConnection(node.GetImageDataConnection())
    port = d.GetOutputImageDataConnection()
    port.GetProducer().Update()
    image = port.GetProducer().GetOutputDataObject(port.GetIndex())
    rgba = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    return rgba.reshape(slicer.util.arrayFromVolume(node).shape + (-1,))[..., :3]


def table_colors(color_node) -> np.ndarray:
    """(N, 3) uint8: the colour node's own table entries (vtkLookupTable stores them as bytes)."""
    t = color_node.GetLookupTable()
    return np.array(
        [np.rint(np.array(t.GetTableValue(i)[:3]) * 255) for i in range(t.GetNumberOfTableValues())], np.uint8
    )


def user_table(scene, n=7):
    """A custom vtkMRMLColorTableNode of n colours (not 256: the byte -> entry rule matters)."""
    node = slicer.vtkMRMLColorTableNode()
    node.SetTypeToUser()
    node.SetNumberOfColors(n)
    for i in range(n):
        node.SetColor(i, f"c{i}", i / (n - 1), (i * 3 % n) / (n - 1), 1 - i / (n - 1), 1.0)
    node.SetName("custom7")
    scene.AddNode(node)
    return node


def user_procedural(scene):
    """A custom vtkMRMLProceduralColorNode whose transfer function spans -1..3 (not 0..255)."""
    node = slicer.vtkMRMLProceduralColorNode()
    ctf = node.GetColorTransferFunction()
    ctf.AddRGBPoint(-1.0, 0.0, 0.0, 0.3)
    ctf.AddRGBPoint(1.0, 0.9, 0.2, 0.0)
    ctf.AddRGBPoint(3.0, 1.0, 1.0, 0.6)
    node.SetName("custom-procedural")
    scene.AddNode(node)
    return node


def values(dtype, seed):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "u":
        return rng.integers(0, 256, SHAPE).astype(dtype)
    return rng.uniform(-60.0, 260.0, SHAPE).astype(dtype)


# ---------------------------------------------------------------- colortable against Slicer's display


@pytest.mark.parametrize(
    "color",
    [
        HEAT,
        RAINBOW,
        "vtkMRMLColorTableNodeIron",
        "vtkMRMLColorTableNodefMRI",
        "vtkMRMLPETProceduralColorNodePET-DICOM",
        "custom7",
        "custom-procedural",
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.uint8])
def test_displayed_rgb_is_what_slicer_shows(scene, color, dtype):
    custom = {"custom7": user_table, "custom-procedural": user_procedural}
    color_id = custom[color](scene).GetID() if color in custom else color
    node = add_volume(scene, values(dtype, 1), "pet")
    for window, level, invert, method in (
        (150.3, 70.7, 0, 0),
        (37.9, -10.3, 1, 0),
        (200.0, 100.0, 0, 1),
        (90.0, 120.0, 1, 2),
        (1.0, 3.0, 0, 0),
    ):
        options = {"InvertDisplayScalarRange": invert}
        if hasattr(slicer.vtkMRMLScalarVolumeDisplayNode, "SetWindowMappingMethod"):  # Slicer >= 5.12
            options["WindowMappingMethod"] = method
        shown(node, color_id, window, level, **options)
        rgb = colortable.displayed_rgb(node)
        assert rgb is not None and rgb.dtype == np.uint8 and rgb.shape == SHAPE + (3,)
        np.testing.assert_array_equal(rgb, slicer_rgb(node), err_msg=f"{color} {window}/{level} {options}")


@pytest.mark.parametrize("color", [RAINBOW, HEAT, "vtkMRMLColorTableNodefMRI"])
def test_direct_mapping_is_what_slicer_shows(scene, color):
    node = add_volume(scene, values(np.float32, 2), "pet")
    d = slicer.vtkMRMLScalarVolumeDisplayNode()
    d.SetScalarRangeFlag(colortable.DIRECT_MAPPING)
    scene.AddNode(d)
    d.SetAndObserveColorNodeID(color)
    node.SetAndObserveDisplayNodeID(d.GetID())
    mapping = colortable.color_mapping(node)
    assert mapping is not None and mapping.palette is None
    np.testing.assert_array_equal(colortable.displayed_rgb(node), slicer_rgb(node))


@pytest.mark.parametrize("color", [HEAT, RAINBOW, "vtkMRMLColorTableNodeIron", "custom7", "custom-procedural"])
@pytest.mark.parametrize("invert", [0, 1])
def test_table_made_from_the_colour_node_is_the_display_nodes_own(scene, color, invert):
    """The fallback for Slicer versions whose display node does not expose its lookup table."""
    custom = {"custom7": user_table, "custom-procedural": user_procedural}
    color_id = custom[color](scene).GetID() if color in custom else color
    node = shown(
        add_volume(scene, values(np.float32, 3), "pet"), color_id, 100.0, 50.0, InvertDisplayScalarRange=invert
    )
    d = node.GetDisplayNode()
    bytes_ = np.arange(256, dtype=np.uint8)
    made = colortable.through_table(colortable.lookup_table_for(d, d.GetColorNode()), bytes_)
    np.testing.assert_array_equal(made, colortable.through_table(d.GetLookupTable(), bytes_))
    np.testing.assert_array_equal(made, colortable.color_mapping(node).palette)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint8, np.uint16, np.int32])
def test_legacy_window_level_is_vtk_filter(dtype):
    """Slicer <= 5.10 windows with VTK's vtkImageMapToWindowLevelColors (type-clamped ends)."""
    rng = np.random.default_rng(4)
    for window, level in (
        (200.3, 100.7),
        (255.0, 127.5),
        (1.0, 3.0),
        (37.9, -10.3),
        (1000.0, 2000.0),
        (-50.0, 20.0),
        (0.0, 10.0),
    ):
        x = np.concatenate(
            [
                rng.uniform(-500, 2500, 3000),
                [
                    level - window / 2,
                    level + window / 2,
                    level,
                    np.floor(level - window / 2),
                    np.ceil(level + window / 2),
                ],
            ]
        )
        if np.dtype(dtype).kind in "iu":
            x = np.clip(x, np.iinfo(dtype).min, np.iinfo(dtype).max)
        x = x.astype(dtype)
        image = vtk.vtkImageData()
        image.SetDimensions(x.size, 1, 1)
        image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(x, deep=True))
        f = vtk.vtkImageMapToWindowLevelColors()
        f.SetOutputFormatToLuminance()
        f.SetWindow(window)
        f.SetLevel(level)
        f.SetInputData(image)
        f.Update()
        expected = numpy_support.vtk_to_numpy(f.GetOutput().GetPointData().GetScalars()).ravel()
        np.testing.assert_array_equal(
            colortable.window_level_bytes(x, window, level, None), expected, err_msg=f"{window}/{level}"
        )


@pytest.mark.parametrize("color", [RAINBOW, "custom7"])
def test_window_ends_and_centre_take_the_tables_ends_and_middle(scene, color):
    color_node = user_table(scene) if color == "custom7" else scene.GetNodeByID(color)
    entries = table_colors(color_node)
    n = len(entries)
    window, level = 100.0, 40.0
    below, above = level - window / 2 - np.array([0.0, 1.0, 500.0]), level + window / 2 + np.array([0.0, 1.0, 500.0])
    arr = np.full(SHAPE, level, np.float32)
    arr[0, 0, :3], arr[0, 1, :3] = below, above
    node = shown(add_volume(scene, arr, "pet"), color_node.GetID(), window, level)
    rgb = colortable.displayed_rgb(node)
    np.testing.assert_array_equal(rgb[0, 0, :3], np.repeat(entries[:1], 3, 0))  # at and below the window: first
    np.testing.assert_array_equal(rgb[0, 1, :3], np.repeat(entries[-1:], 3, 0))  # at and above: last
    middle = entries[int(127 * n / 255)]  # the centre's byte, int(255 * 0.5), picks entry int(byte * n / 255)
    assert int(127 * n / 255) in (n // 2 - 1, n // 2, (n - 1) // 2)  # ... one of the middle entries
    np.testing.assert_array_equal(rgb[5], np.broadcast_to(middle, SHAPE[1:] + (3,)))


def test_grey_displays_and_non_colour_volumes_give_none(scene):
    arr = values(np.float32, 5)
    bare = add_volume(scene, arr, "no-display")
    assert bare.GetDisplayNode() is None and colortable.color_mapping(bare) is None
    assert colortable.displayed_rgb(bare) is None
    node = add_volume(scene, arr, "pet")
    for color_id, invert in (
        ("vtkMRMLColorTableNodeGrey", 0),
        ("vtkMRMLColorTableNodeGrey", 1),
        ("vtkMRMLColorTableNodeInvertedGrey", 0),
    ):
        shown(node, color_id, 100.0, 50.0, InvertDisplayScalarRange=invert)
        assert colortable.color_mapping(node) is None and colortable.displayed_rgb(node) is None
        shown(node, RAINBOW)
        assert colortable.color_mapping(node) is not None  # the same node with a colour table is colour
    rgb_node = add_volume(scene, np.zeros(SHAPE + (3,), np.uint8), "rgb")
    rgb_node.CreateDefaultDisplayNodes()
    assert colortable.color_mapping(rgb_node) is None
    label = add_volume(scene, np.zeros(SHAPE, np.int16), "labels", cls="vtkMRMLLabelMapVolumeNode")
    label.CreateDefaultDisplayNodes()
    assert colortable.color_mapping(label) is None


# ---------------------------------------------------------------- fuse with a colour table


def pair(scene, seed=0, color=HEAT):
    a = add_volume(scene, blobs(SHAPE, seed), "mri")
    b = shown(add_volume(scene, blobs(SHAPE, seed + 1), "pet"), color, 180.0, 100.0)
    return a, b


def test_grey_table_keeps_grey_fusion(scene, tiny):
    model, _ = tiny
    a, b = pair(scene, 0, "vtkMRMLColorTableNodeGrey")
    grey = logic.fuse(a, b, model_path=model)
    assert grey.node.IsA("vtkMRMLScalarVolumeNode") and not grey.node.IsA("vtkMRMLVectorVolumeNode")
    assert grey.color_table == "" and grey.windows[1] == (10.0, 190.0)  # the display window, as before
    off = logic.fuse(a, b, model_path=model, use_color_table=False)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(grey.node), slicer.util.arrayFromVolume(off.node))


def test_colour_table_fused_on_its_luminance(scene, tiny):
    import SimpleITK as sitk

    from amif.fusion import fuse_volumes

    model, _ = tiny
    a, b = pair(scene, 2)
    fused = logic.fuse(a, b, model_path=model)
    assert fused.node.IsA("vtkMRMLVectorVolumeNode") and fused.color_table == "PET-Heat"
    assert fused.windows[1] == (10.0, 190.0)
    out = slicer.util.arrayFromVolume(fused.node)
    assert out.shape == SHAPE + (3,) and out.dtype == np.uint8
    np.testing.assert_allclose(ijk_to_ras(fused.node), ijk_to_ras(a))

    # The reference: the engine's grey fusion of the displayed colours' luminance.
    shown_rgb = colortable.displayed_rgb(b).astype(np.float64) / 255
    y_in = rgb_to_ycbcr(shown_rgb)
    grey_b = sitk.GetImageFromArray(y_in[..., 0].astype(np.float32))
    img_a = logic.image_from_node(a, "mri")
    grey_b.CopyInformation(img_a)
    ref = fuse_volumes(img_a, grey_b, logic.load_model(model), None, window_a=fused.windows[0], window_b=(0.0, 1.0))
    y_out = rgb_to_ycbcr(out.astype(np.float64) / 255)
    np.testing.assert_allclose(y_out[..., 0], sitk.GetArrayFromImage(ref.image), atol=1.5 / 255)
    # The chroma is the displayed colour's: same hue where the PET is coloured.
    c_in, c_out = y_in[..., 1:] - 0.5, y_out[..., 1:] - 0.5
    strong = (np.linalg.norm(c_in, axis=-1) > 0.1) & (np.linalg.norm(c_out, axis=-1) > 0.05)
    assert strong.sum() > 100
    c_in, c_out = c_in[strong], c_out[strong]
    cos = (c_in * c_out).sum(-1) / np.linalg.norm(c_in, axis=-1) / np.linalg.norm(c_out, axis=-1)
    assert cos.min() > 0.95


def test_colour_table_off_gives_grey(scene, tiny):
    model, _ = tiny
    a, b = pair(scene, 4)
    off = logic.fuse(a, b, model_path=model, use_color_table=False)
    assert not off.node.IsA("vtkMRMLVectorVolumeNode") and off.color_table == ""
    shown(b, "vtkMRMLColorTableNodeGrey")
    grey = logic.fuse(a, b, model_path=model)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(off.node), slicer.util.arrayFromVolume(grey.node))


def test_colour_table_mapped_after_resampling(scene, tiny):
    """The second volume is resampled as a scalar, then coloured (as Slicer reslices, then colours)."""
    model, _ = tiny
    mri, pet = blobs(SHAPE, 6), blobs(SHAPE, 7)
    pet[..., :3] = pet.min()  # the first grid's voxels outside the moved volume get its minimum
    shifted = np.full_like(pet, pet.min())
    shifted[..., :-3] = pet[..., 3:]
    m = matrix((1.5, 1.0, 2.0), (5.0, -7.0, 1.0))
    m_shift = m.copy()
    m_shift[:3, 3] += 3 * m[:3, 0]
    a = add_volume(scene, mri, "mri", m)
    same = shown(add_volume(scene, pet, "pet", m), RAINBOW, 150.0, 90.0)
    moved = shown(add_volume(scene, shifted, "pet-moved", m_shift), RAINBOW, 150.0, 90.0)
    ref, out = logic.fuse(a, same, model_path=model), logic.fuse(a, moved, model_path=model)
    assert out.color_table == "Rainbow"
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(out.node), slicer.util.arrayFromVolume(ref.node))


@pytest.mark.parametrize("case", ["scalar output", "label map output", "grey into a colour output", "NaN"])
def test_wrong_output_or_values_leave_the_scene_unchanged(scene, tiny, case):
    model, _ = tiny
    a, b = pair(scene, 8)
    kind = {"label map output": "vtkMRMLLabelMapVolumeNode", "grey into a colour output": None}.get(case)
    if case == "grey into a colour output":
        existing = add_volume(scene, np.zeros(SHAPE + (3,), np.uint8), "chosen-output")
        shown(b, "vtkMRMLColorTableNodeGrey")
    else:
        existing = add_volume(scene, np.zeros(SHAPE, np.float32), "chosen-output", cls=kind)
    if case == "NaN":
        arr = blobs(SHAPE, 9)
        arr[2, 3, 4] = np.nan
        b = shown(add_volume(scene, arr, "pet-nan"), HEAT, 180.0, 100.0)
        existing = None
    ids = snapshot(scene)
    before = None if existing is None else slicer.util.arrayFromVolume(existing).copy()
    with pytest.raises(AMIFError) as error:
        logic.fuse(a, b, existing, model_path=model)
    if case == "NaN":
        assert "NaN" in str(error.value)
    else:
        assert logic.NEW_OUTPUT_ENTRY in str(error.value) and "'chosen-output'" in str(error.value)
        assert ("colour (vector)" in str(error.value)) == (case != "grey into a colour output")
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(existing), before)
        assert existing.GetAttribute("AMIF.Watermark") is None
    assert snapshot(scene) == ids
    if case == "scalar output":  # the same inputs into a new output work
        assert logic.fuse(a, b, None, model_path=model).node.IsA("vtkMRMLVectorVolumeNode")


# ---------------------------------------------------------------- bundled model on the bundled sample


def test_sample_pet_heat_keyed_and_unkeyed(scene):
    """16 axial slices of the bundled MRI with the bundled PET shown in PET-Heat, bundled model."""
    from amif.fusion import display_array
    from amif.verify import verify_volume

    mri, pet = read_volume(scene, SAMPLE / "AMIFSample-MRI.nrrd"), read_volume(scene, SAMPLE / "AMIFSample-PET.nrrd")
    m = ijk_to_ras(mri)
    k0 = slicer.util.arrayFromVolume(mri).shape[0] // 2 - 8
    m[:3, 3] += k0 * m[:3, 2]
    crop = add_volume(scene, np.array(slicer.util.arrayFromVolume(mri)[k0 : k0 + 16]), "mri-16", m)
    pet.CreateDefaultDisplayNodes()
    shown(pet, HEAT)
    package = logic.load_model()
    for key, key_state, watermark in ((MODELS / "amif-demo.amifkey", "match", "clean"), (None, "none", "marked")):
        fused = logic.fuse(crop, pet, key_path=key)
        assert fused.node.IsA("vtkMRMLVectorVolumeNode") and fused.color_table == "PET-Heat"
        assert fused.key.state == key_state and fused.verdict.state == watermark
        y = display_array(logic.image_from_node(fused.node, "output")) / 255  # luminance, in display orientation
        assert verify_volume(y, package.identifier, package.threshold).state == watermark
