"""AMIF Fusion logic: two MRML volume nodes in, one fused volume node out (no qt here).

Explicit arguments, in the style of SlicerElastix's logic, so it runs in Slicer, in tests on the
`slicer-core` wheel, and from the Python console:

    fused = fuse(mri_node, pet_node, key_path="lab.amifkey")
    fused.node, fused.key.state, fused.verdict.state

Geometry: each volume is read with its world IJK-to-RAS matrix (a linear parent transform is
hardened into the sampling, never into the user's nodes; a non-linear one is refused), converted
to a SimpleITK image (RAS -> LPS) and handed to the engine's `fuse_volumes`, which resamples the
second volume onto the first's grid. The output takes the first volume's geometry (its IJK-to-RAS
matrix and parent transform). What the user sees is what gets fused: a volume's display window
is its intensity window, and a scalar second volume shown through a colour table (PET-Heat,
Rainbow, ...) is fused in the colours it is shown in (`colortable`), giving a colour output. The
scene is touched only after the engine succeeded and no cancel was asked for, and an exception after
that undoes what was changed (`SceneUndo`), so an error or a cancel leaves it exactly as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import slicer
import vtk

from amif.errors import AMIFError, Cancelled
from AMIFFusionLib import colortable
from AMIFFusionLib.undo import SceneUndo

# MRML node attribute -> the engine's output metadata key. Never the key's secret.
ATTRIBUTES = {
    "AMIF.ModelId": "AMIF_model_id",
    "AMIF.KeyId": "AMIF_key_id",
    "AMIF.KeyState": "AMIF_key_state",
    "AMIF.Watermark": "AMIF_watermark",
    "AMIF.Score": "AMIF_score",
    "AMIF.Threshold": "AMIF_threshold",
}
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
NEW_OUTPUT_ENTRY = "Create new volume on Apply"  # the output selector's empty entry: fuse makes the right node


@dataclass
class Fused:
    node: object  # the output vtkMRMLScalarVolumeNode (grey) or vtkMRMLVectorVolumeNode (colour)
    key: object  # amif.fusion.KeyStatus
    verdict: object  # amif.verify.Verdict: the output's measured watermark state
    windows: tuple  # intensity windows used for the first and second volume
    color_table: str = ""  # the colour node the second volume was fused through, "" when fused as it is


def model_path_or_bundled(model_path=None) -> Path:
    from amif.package import bundled_model_path

    return Path(model_path) if model_path else bundled_model_path()


def key_state(key_path=None, model_path=None):
    """What the key means for the model package, before anything runs (amif.fusion.KeyStatus).
    Reads the package's manifest only, so it needs no torch."""
    from amif.fusion import key_status
    from amif.package import read_manifest

    manifest, _ = read_manifest(model_path_or_bundled(model_path))
    package = SimpleNamespace(model_id=manifest["model_id"], key_id=manifest["key_id"])
    return key_status(package, str(key_path) if key_path else None)


_loaded = {}


def load_model(model_path=None):
    """The model package (checked by the engine), kept while its files are unchanged."""
    from amif.package import load_package, package_paths

    manifest, weights = package_paths(model_path_or_bundled(model_path))
    try:
        stamp = tuple((str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size) for p in (manifest, weights))
    except OSError:
        stamp = None
    if stamp is None or stamp not in _loaded:
        package = load_package(manifest)
        _loaded.clear()
        if stamp is not None:
            _loaded[stamp] = package
        return package
    return _loaded[stamp]


def world_ijk_to_ras(node) -> np.ndarray:
    """The node's IJK-to-RAS matrix in world coordinates (its linear parent transforms applied)."""
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    ijk_to_ras = slicer.util.arrayFromVTKMatrix(m)
    transform = node.GetParentTransformNode()
    if transform is None:
        return ijk_to_ras
    if not transform.IsTransformToWorldLinear():
        raise AMIFError(
            f"Volume '{node.GetName()}' is under the non-linear transform '{transform.GetName()}'. "
            "Harden or remove that transform first (Data module), then fuse."
        )
    to_world = vtk.vtkMatrix4x4()
    transform.GetMatrixTransformToWorld(to_world)
    return slicer.util.arrayFromVTKMatrix(to_world) @ ijk_to_ras


def image_from_node(node, name: str):
    """A volume node as a SimpleITK image in world (LPS) coordinates; the node is not changed."""
    import SimpleITK as sitk

    if node is None or node.GetImageData() is None or node.GetImageData().GetPointData().GetScalars() is None:
        raise AMIFError(f"{name} has no voxels: choose a loaded volume.")
    arr = np.array(slicer.util.arrayFromVolume(node))  # (k, j, i) or (k, j, i, components), a copy
    if arr.ndim == 4 and arr.shape[-1] == 4:
        arr = arr[..., :3]  # RGBA: the alpha channel is not fused
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    lps = RAS_TO_LPS @ world_ijk_to_ras(node)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    if not np.isfinite(lps).all() or not (spacing > 0).all() or abs(np.linalg.det(lps[:3, :3])) < 1e-12:
        raise AMIFError(f"{name} has a degenerate geometry (zero spacing, or NaN or infinite position or axes).")
    img = sitk.GetImageFromArray(arr, isVector=arr.ndim == 4)
    img.SetSpacing(spacing.tolist())
    img.SetOrigin(lps[:3, 3].tolist())
    img.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    return img


def display_window(node):
    """The node's display window as (low, high), or None (no display node, colour volume, or empty)."""
    d = node.GetDisplayNode()
    if d is None or not d.IsA("vtkMRMLScalarVolumeDisplayNode") or node.IsA("vtkMRMLVectorVolumeNode"):
        return None
    window, level = d.GetWindow(), d.GetLevel()
    if not (np.isfinite(window) and np.isfinite(level) and window > 0):
        return None
    return (level - window / 2, level + window / 2)


def _check_output_kind(output_node, colour: bool) -> None:
    """An AMIFError when the output node chosen by the user cannot hold the fused volume."""
    if output_node is None:
        return
    label = bool(output_node.IsA("vtkMRMLLabelMapVolumeNode"))
    if not label and bool(output_node.IsA("vtkMRMLVectorVolumeNode")) == colour:
        return
    fused = "a colour (vector)" if colour else "a grey (scalar)"
    chosen = "a label map" if label else "a grey one" if colour else "a colour one"
    raise AMIFError(
        f"The fused output is {fused} volume, and '{output_node.GetName()}' is {chosen}: "
        f"choose '{NEW_OUTPUT_ENTRY}' as the output volume."
    )


def displayed_colour_image(b, a, mapping):
    """The scalar SimpleITK image `b` as the colours it is displayed in (a uint8 RGB vector image)
    on `a`'s grid: resampled as the engine resamples a grey second volume (linear; outside its extent,
    its amif.fusion.zero_signal_value), then mapped through `mapping` (a colortable.ColorMapping). So
    outside its extent it has the colour of its own background: for an ordinary PET or SPECT its
    minimum, the table's first entry wherever the display window starts at or above it ("no signal");
    for a signed map with a zero background the colour of 0, as inside its extent (no box). NaN or
    infinite values are an AMIFError, as they are for a grey second volume."""
    import SimpleITK as sitk

    from amif.fusion import resample_onto, same_geometry

    values = sitk.GetArrayViewFromImage(b)
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise AMIFError("The second volume contains NaN or infinite values.")
    grid = b if same_geometry(a, b) else resample_onto(b, a)
    rgb = sitk.GetImageFromArray(mapping(sitk.GetArrayViewFromImage(grid)), isVector=True)
    rgb.CopyInformation(grid)
    return rgb


def fuse(
    first_node,
    second_node,
    output_node=None,
    key_path=None,
    model_path=None,
    progress=None,
    cancel=None,
    log=None,
    show=True,
    device="auto",
    use_color_table: bool = True,
) -> Fused:
    """Fuse two registered volume nodes into `output_node` (a new node when None).

    first_node: the grey volume (MRI); second_node: CT, PET or SPECT, grey or colour (RGB vector
    volume). key_path: an .amifkey file, or None (the output then carries the identifier).
    model_path: a model package (NAME.json), default the bundled demo model. progress(done, total)
    is called per batch of slices; cancel() returning True stops the run (amif.Cancelled is
    raised): it is asked before every batch and once more before the output node is written.
    log(text) receives progress messages. Errors are amif.AMIFError; on any error or
    cancel the scene is left as it was. device: the torch device to fuse on, "auto" (a GPU when torch
    sees one, else the CPU), "cpu", "cuda", "cuda:N" or "mps" (amif.fusion.fuse_volumes).
    use_color_table: when the second volume is scalar and displayed through a colour (not grey)
    table, fuse the colours it is displayed in (colortable.color_mapping: resampled onto the first
    volume's grid as a scalar, then mapped through its display node's window/level and table), on
    their luminance with the chroma restored, into a vtkMRMLVectorVolumeNode; the returned
    Fused.color_table names the colour node. False: fuse it as grey on its display window.
    """
    import SimpleITK as sitk

    from amif.fusion import fuse_volumes, output_metadata

    log = log or (lambda text: None)
    if first_node is None or second_node is None:
        raise AMIFError("Choose the first volume (MRI) and the second volume (CT, PET or SPECT).")
    scene = first_node.GetScene()
    if scene is None:
        raise AMIFError("The first volume is not in a scene.")
    if output_node is not None and output_node in (first_node, second_node):
        raise AMIFError("The output volume must not be one of the two inputs: choose or create another volume.")
    a = image_from_node(first_node, "The first volume")
    b = image_from_node(second_node, "The second volume")
    mapping = colortable.color_mapping(second_node) if use_color_table else None
    colour = mapping is not None or b.GetNumberOfComponentsPerPixel() == 3
    node_class = "vtkMRMLVectorVolumeNode" if colour else "vtkMRMLScalarVolumeNode"
    _check_output_kind(output_node, colour)
    window_a, window_b = display_window(first_node), None if colour else display_window(second_node)
    if mapping is not None:
        log(f"The second volume is fused in the colours of its colour table '{mapping.name}'.")
        b = displayed_colour_image(b, a, mapping)

    package = load_model(model_path)
    log(f"Model package {package.model_id}; fusing {a.GetSize()[2]} slices.")
    r = fuse_volumes(
        a,
        b,
        package,
        str(key_path) if key_path else None,
        window_a=window_a,
        window_b=window_b,
        progress=progress,
        cancel=cancel,
        device=device,
    )
    arr = sitk.GetArrayFromImage(r.image)
    if colour:
        arr = np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8)
    meta = output_metadata(package, r.key, r.verdict)

    if cancel and cancel():  # a cancel pressed during the last batch still counts: nothing is written
        raise Cancelled("Fusion cancelled.")

    # The engine succeeded: only now is the scene changed, and any exception from here on (writing, a
    # callback, showing the output) undoes every change before it propagates.
    undo = SceneUndo(scene, output_node)
    try:
        node = output_node or scene.AddNewNodeByClass(node_class, scene.GenerateUniqueName("AMIF fused"))
        _write(node, arr, first_node, meta, colour)
        log(f"Output '{node.GetName()}': watermark {r.verdict.state} (score {r.verdict.score:.3f}).")
        if show and getattr(slicer, "app", None) is not None:
            slicer.util.setSliceViewerLayers(background=node, fit=True)
    except BaseException:
        undo.restore()
        raise
    if mapping is None:
        return Fused(node, r.key, r.verdict, r.windows)
    return Fused(node, r.key, r.verdict, (r.windows[0], mapping.window_range), mapping.name)


def _write(node, arr, first_node, meta: dict, colour: bool) -> None:
    m = vtk.vtkMatrix4x4()
    first_node.GetIJKToRASMatrix(m)
    node.SetIJKToRASMatrix(m)
    slicer.util.updateVolumeFromArray(node, arr)
    node.SetAndObserveTransformNodeID(first_node.GetTransformNodeID())
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is not None and not colour:
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(0.0, 1.0)
    for attribute, key in ATTRIBUTES.items():
        node.SetAttribute(attribute, meta[key])
