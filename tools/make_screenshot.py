"""Render docs/figures/slicer-preview.png: a PREVIEW of the AMIF Fusion module, not a screenshot of
3D Slicer (no Slicer GUI runs here). The panel is AMIFFusion/Resources/UI/AMIFFusion.ui drawn by Qt
in the state the module left it when driven with Slicer's own code (no key, grey, Apply done:
`tools/check_slicer_panel.py --render DIR` writes DIR/panel-no-key.png); the three slice views are
the real fused sample volume (no key: the identifier shows) from `amif demo`.

    python tools/check_slicer_panel.py --slicer SLICER --tag v5.10.0 --ctk CTK --render /tmp/panel
    python tools/make_screenshot.py --panel /tmp/panel/panel-no-key.png [--demo FOLDER]
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]


def font(size):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def views(path: Path, size=300):
    """Axial, sagittal and coronal slices through the centre, each fitted into size x size."""
    import SimpleITK as sitk

    from amif.fusion import DISPLAY_ORIENTATION, display_array

    img = sitk.ReadImage(str(path))
    arr = display_array(img)  # z towards inferior, y towards posterior, x towards the patient's left
    sx, sy, sz = sitk.DICOMOrient(img, DISPLAY_ORIENTATION).GetSpacing()
    _, y, x = (n // 2 for n in arr.shape)
    z = int(arr.shape[0] * 0.55)
    slices = [
        ("Red (axial)", arr[z], (sx, sy)),
        ("Yellow (sagittal)", arr[:, :, x], (sy, sz)),  # anterior on the left, as Slicer shows it
        ("Green (coronal)", arr[:, y, :], (sx, sz)),
    ]
    out = []
    for name, s, (cw, rh) in slices:
        im = Image.fromarray((np.clip(s, 0, 1) * 255).astype(np.uint8))
        w, h = s.shape[1] * cw, s.shape[0] * rh
        scale = size / max(w, h)
        im = im.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
        tile = Image.new("RGB", (size, size), (0, 0, 0))
        tile.paste(im.convert("RGB"), ((size - im.width) // 2, (size - im.height) // 2))
        out.append((name, tile))
    return out


def main():

    from amif.cli import main as amif_main

    p = argparse.ArgumentParser()
    p.add_argument("--panel", required=True, help="the panel drawn by check_slicer_panel.py --render")
    p.add_argument("--demo", default="/tmp/amif-demo")
    p.add_argument("-o", "--output", default=str(ROOT / "docs" / "figures" / "slicer-preview.png"))
    args = p.parse_args()
    fused = Path(args.demo) / "fused-unkeyed.nrrd"
    if not fused.exists():
        amif_main(["demo", "-q", "-o", args.demo])
    drawn = Image.open(args.panel).convert("RGB")
    tile, pw, top = 300, drawn.width + 20, 56
    canvas = Image.new("RGB", (pw + 3 * tile + 40, top + max(tile + 22, drawn.height) + 10), (255, 255, 255))
    d = ImageDraw.Draw(canvas)
    d.rectangle([0, 0, canvas.width, top - 8], fill=(50, 60, 80))
    d.text(
        (12, 10),
        "Preview, not a 3D Slicer screenshot: the AMIF Fusion panel's .ui drawn by Qt in the state "
        "Slicer's own module code left it, and the fused bundled sample",
        font=font(16),
        fill=(255, 255, 255),
    )
    d.text(
        (12, 30),
        "Panel: tools/check_slicer_panel.py --render (no key, Apply done); views: `amif demo` without "
        "a key, so the identifier is written; tools/make_screenshot.py",
        font=font(13),
        fill=(210, 210, 210),
    )
    canvas.paste(drawn, (10, top))
    colours = [(200, 60, 60), (220, 200, 60), (60, 160, 60)]
    for n, ((name, t), c) in enumerate(zip(views(fused, tile), colours)):
        x = pw + n * (tile + 10)
        d.rectangle([x, top, x + tile, top + 20], fill=c)
        d.text((x + 6, top + 3), name, font=font(13), fill=(0, 0, 0))
        canvas.paste(t, (x, top + 22))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    canvas.quantize(256, dither=Image.Dither.NONE).save(args.output, optimize=True)  # 256 colours: a lean repository
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
