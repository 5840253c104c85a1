"""Render docs/figures/color-pet.png: the bundled sample's PET shown through a PET colour table, fused
in those colours by the Slicer module's logic (`AMIFFusionLib.logic.fuse`, use_color_table=True).

One axial slice each, in display orientation (anterior up, patient right on the left): the MRI on
its display window; the PET on the MRI's grid in the colours the slice views show it in
(`AMIFFusionLib.colortable`); the colour output with the bundled demo key (clean) and without a
key (marked, the identifier written). It runs on real MRML from the `slicer-core` wheel (the test
extra), with Slicer's default colour nodes, not in the Slicer application.

    python tools/make_color_pet_figure.py [--color PET-Heat] [--window 0 25000] [-o docs/figures/color-pet.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "AMIFFusion"))
SAMPLE = ROOT / "AMIFFusion" / "Resources" / "SampleData"
GREEN, ORANGE = (27, 127, 42), (192, 90, 0)


def font(size):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def read_volume(scene, path: Path):
    import slicer

    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", path.stem)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise SystemExit(f"could not read {path}")
    node.CreateDefaultDisplayNodes()
    return node


def axial(img, z_fraction: float) -> np.ndarray:
    """One axial slice of a SimpleITK image in display orientation: (h, w) or (h, w, 3)."""
    import SimpleITK as sitk

    from amif.fusion import display_view

    arr = display_view(img)(sitk.GetArrayViewFromImage(img))
    return np.array(arr[int(arr.shape[0] * z_fraction)])


def main() -> None:
    import slicer

    from amif.package import bundled_key_path
    from AMIFFusionLib import colortable, logic

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--color", default="PET-Heat", help="name of one of Slicer's default colour nodes")
    ap.add_argument(
        "--window",
        type=float,
        nargs=2,
        default=(0.0, 25000.0),
        metavar=("LOW", "HIGH"),
        help="the PET's display window (default: the brain spans PET-Heat's red to yellow)",
    )
    ap.add_argument("--slice", type=float, default=0.55, help="axial slice, as a fraction from inferior")
    ap.add_argument("--scale", type=int, default=2, help="pixel zoom of the tiles")
    ap.add_argument("-o", "--output", default=str(ROOT / "docs" / "figures" / "color-pet.png"))
    args = ap.parse_args()

    scene = slicer.vtkMRMLScene()
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLScene(scene)
    mri, pet = read_volume(scene, SAMPLE / "AMIFSample-MRI.nrrd"), read_volume(scene, SAMPLE / "AMIFSample-PET.nrrd")
    color_node = scene.GetFirstNodeByName(args.color)
    if color_node is None or not color_node.IsA("vtkMRMLColorNode"):
        raise SystemExit(f"no colour node named {args.color!r}")
    display = pet.GetDisplayNode()
    display.SetAndObserveColorNodeID(color_node.GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(*args.window)

    keyed = logic.fuse(mri, pet, key_path=bundled_key_path())
    unkeyed = logic.fuse(mri, pet)
    assert keyed.color_table == unkeyed.color_table == color_node.GetName()

    a = logic.image_from_node(mri, "MRI")
    low, high = keyed.windows[0]
    mri_slice = np.clip((axial(a, args.slice) - low) / (high - low), 0, 1)
    shown = logic.displayed_colour_image(logic.image_from_node(pet, "PET"), a, colortable.color_mapping(pet))
    w_low, w_high = keyed.windows[1]
    tiles = [
        (
            "MRI",
            f"display window {low:g} to {high:g}",
            np.repeat((mri_slice * 255).astype(np.uint8)[..., None], 3, -1),
            (0, 0, 0),
        ),
        (
            f"PET in {color_node.GetName()}",
            f"as shown, window {w_low:g} to {w_high:g}",
            axial(shown, args.slice),
            (0, 0, 0),
        ),
    ]
    for fused, name in ((keyed, "with the demo key"), (unkeyed, "without a key")):
        v = fused.verdict
        tiles.append(
            (
                f"Fused, {name}",
                f"{v.state} (score {v.score:.3f}, threshold {v.threshold:.2f})",
                axial(logic.image_from_node(fused.node, "fused"), args.slice),
                GREEN if v.state == "clean" else ORANGE,
            )
        )

    sx, sy = a.GetSpacing()[0], a.GetSpacing()[1]
    h, w = tiles[0][2].shape[:2]
    tw, th = round(w * args.scale * sx / min(sx, sy)), round(h * args.scale * sy / min(sx, sy))
    top, label, gap = 50, 40, 8
    canvas = Image.new("RGB", (len(tiles) * (tw + gap) + gap, top + label + th + gap), (255, 255, 255))
    d = ImageDraw.Draw(canvas)
    d.rectangle([0, 0, canvas.width, top - 8], fill=(50, 60, 80))
    d.text(
        (10, 8),
        f"Colour PET: the bundled sample's PET shown in {color_node.GetName()}, fused in those colours",
        font=font(16),
        fill=(255, 255, 255),
    )
    d.text(
        (10, 27),
        "Axial slice; luminance fused, chroma restored; tools/make_color_pet_figure.py",
        font=font(12),
        fill=(210, 210, 210),
    )
    for n, (title, note, rgb, colour) in enumerate(tiles):
        x = gap + n * (tw + gap)
        d.text((x, top), title, font=font(14), fill=(0, 0, 0))
        d.text((x, top + 18), note, font=font(12), fill=colour if colour != (0, 0, 0) else (85, 85, 85))
        canvas.paste(Image.fromarray(np.ascontiguousarray(rgb)).resize((tw, th), Image.BILINEAR), (x, top + label))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    canvas.quantize(256, dither=Image.Dither.NONE).save(args.output, optimize=True)  # 256 colours: a lean repository
    print(f"wrote {args.output} ({Path(args.output).stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
