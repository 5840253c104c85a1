"""Render Resources/slicer-preview.png: a RENDERED PREVIEW of the AMIF Fusion module, not a
screenshot of 3D Slicer (no Slicer GUI runs here). The three slice views are the real fused sample
volume (no key: the identifier shows) from `amif demo`; the panel beside them is a drawn mock of
AMIFFusion/Resources/UI/AMIFFusion.ui with the states that run produced.

    python tools/make_screenshot.py [--demo FOLDER]   # runs `amif demo -o FOLDER` when needed
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
GREEN, ORANGE, GREY = (27, 127, 42), (192, 90, 0), (85, 85, 85)


def font(size):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def views(path: Path, size=300):
    """Axial, sagittal and coronal slices through the centre, each fitted into size x size."""
    import SimpleITK as sitk

    from amif.fusion import display_array

    img = sitk.ReadImage(str(path))
    arr = display_array(img)  # DICOMOrient "RAI": z towards inferior, y towards anterior, x towards right
    sx, sy, sz = sitk.DICOMOrient(img, "RAI").GetSpacing()
    _, y, x = (n // 2 for n in arr.shape)
    z = int(arr.shape[0] * 0.55)
    slices = [
        ("Red (axial)", arr[z], (sx, sy)),
        ("Yellow (sagittal)", arr[:, ::-1, x], (sy, sz)),
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


def panel(draw: ImageDraw.ImageDraw, x0, y0, w, meta: dict):
    f, fb = font(13), font(15)
    draw.rectangle([x0, y0, x0 + w, y0 + 440], fill=(240, 240, 240))
    draw.text((x0 + 12, y0 + 10), "AMIF Fusion", font=font(18), fill=(0, 0, 0))
    y = y0 + 44
    draw.text((x0 + 12, y), "Inputs", font=fb, fill=(0, 0, 0))
    y += 26
    rows = [("First volume (MRI):", "AMIFSample-MRI"), ("Second volume:", "AMIFSample-PET"),
            ("Key file:", "(none)"), ("Model package:", "amif-demo.json")]
    for label, value in rows:
        draw.text((x0 + 12, y + 4), label, font=f, fill=(0, 0, 0))
        draw.rectangle([x0 + 150, y, x0 + w - 12, y + 22], fill=(255, 255, 255), outline=(160, 160, 160))
        draw.text((x0 + 156, y + 4), value, font=f, fill=(0, 0, 0))
        y += 32
    lines = ["No key: the output will carry the identifier.", "Expected output: marked."]
    for line in lines:
        draw.text((x0 + 12, y), line, font=f, fill=ORANGE)
        y += 18
    y += 14
    draw.text((x0 + 12, y), "Output", font=fb, fill=(0, 0, 0))
    y += 26
    draw.text((x0 + 12, y + 4), "Output volume:", font=f, fill=(0, 0, 0))
    draw.rectangle([x0 + 150, y, x0 + w - 12, y + 22], fill=(255, 255, 255), outline=(160, 160, 160))
    draw.text((x0 + 156, y + 4), "AMIF fused", font=f, fill=(0, 0, 0))
    y += 40
    draw.rectangle([x0 + 12, y, x0 + w - 12, y + 28], fill=(225, 225, 225), outline=(140, 140, 140))
    draw.text((x0 + w // 2 - 20, y + 7), "Apply", font=f, fill=(0, 0, 0))
    y += 44
    marked = meta["AMIF_watermark"] == "marked"
    state = (f"Output {meta['AMIF_watermark']}: " + ("it carries the identifier" if marked else "no identifier found"))
    for line in (state, f"(score {float(meta['AMIF_score']):.3f}, threshold {float(meta['AMIF_threshold']):.3f}).",
                 "Written to 'AMIF fused'."):
        draw.text((x0 + 12, y), line, font=f, fill=ORANGE if marked else GREEN)
        y += 18


def main():
    import SimpleITK as sitk

    from amif.cli import main as amif_main

    p = argparse.ArgumentParser()
    p.add_argument("--demo", default="/tmp/amif-demo")
    p.add_argument("-o", "--output", default=str(ROOT / "Resources" / "slicer-preview.png"))
    args = p.parse_args()
    fused = Path(args.demo) / "fused-unkeyed.nrrd"
    if not fused.exists():
        amif_main(["demo", "-q", "-o", args.demo])
    img = sitk.ReadImage(str(fused))
    meta = {k: img.GetMetaData(k) for k in ("AMIF_watermark", "AMIF_score", "AMIF_threshold")}

    tile, pw, top = 300, 380, 56
    canvas = Image.new("RGB", (pw + 3 * tile + 40, top + tile + 330), (255, 255, 255))
    d = ImageDraw.Draw(canvas)
    d.rectangle([0, 0, canvas.width, top - 8], fill=(50, 60, 80))
    d.text((12, 10), "Rendered preview, not a 3D Slicer screenshot: AMIF Fusion panel (mock) and the fused "
           "bundled sample", font=font(16), fill=(255, 255, 255))
    d.text((12, 30), "Views: real output of `amif demo` (no key, so the identifier is written), rendered by "
           "tools/make_screenshot.py", font=font(13), fill=(210, 210, 210))
    panel(d, 10, top, pw - 20, meta)
    colours = [(200, 60, 60), (220, 200, 60), (60, 160, 60)]
    for n, ((name, t), c) in enumerate(zip(views(fused, tile), colours)):
        x = pw + n * (tile + 10)
        d.rectangle([x, top, x + tile, top + 20], fill=c)
        d.text((x + 6, top + 3), name, font=font(13), fill=(0, 0, 0))
        canvas.paste(t, (x, top + 22))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    canvas = canvas.crop((0, 0, canvas.width, top + 450))
    canvas.save(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
