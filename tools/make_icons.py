"""Draw the extension icon (AMIF.png, 128x128; copied to the module's Icons) and the Sample Data
thumbnail (AMIFSample.png: an axial slice of the sample MRI beside the PET-like volume).

    python tools/make_icons.py
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
ICONS = ROOT / "AMIFFusion" / "Resources" / "Icons"


def icon(size=128) -> Image.Image:
    s = 4  # draw large, then downsample for smooth edges
    img = Image.new("RGBA", (size * s, size * s), (0, 0, 0, 0))
    d = ImageDraw.Draw(img, "RGBA")
    r = 38 * s
    d.ellipse([14 * s, 26 * s, 14 * s + 2 * r, 26 * s + 2 * r], fill=(70, 130, 200, 200))  # MRI: blue
    d.ellipse([38 * s, 26 * s, 38 * s + 2 * r, 26 * s + 2 * r], fill=(235, 120, 40, 190))  # PET: orange
    # The fused overlap reads as one shape; a small padlock sits on it (the key-gated part).
    cx, cy = 64 * s, 78 * s
    d.rounded_rectangle([cx - 13 * s, cy - 6 * s, cx + 13 * s, cy + 16 * s], radius=3 * s, fill=(30, 30, 30, 255))
    d.arc([cx - 9 * s, cy - 22 * s, cx + 9 * s, cy - 2 * s], 180, 360, fill=(30, 30, 30, 255), width=4 * s)
    d.line([cx - 9 * s, cy - 12 * s, cx - 9 * s, cy - 5 * s], fill=(30, 30, 30, 255), width=4 * s)
    d.line([cx + 9 * s, cy - 12 * s, cx + 9 * s, cy - 5 * s], fill=(30, 30, 30, 255), width=4 * s)
    d.ellipse([cx - 3 * s, cy + 1 * s, cx + 3 * s, cy + 7 * s], fill=(245, 245, 245, 255))
    return img.resize((size, size), Image.LANCZOS)


def thumbnail() -> Image.Image:
    from amif.sample import sample_slices

    arr = (np.concatenate(sample_slices(), axis=1) * 255).astype(np.uint8)
    img = Image.fromarray(arr).convert("RGB")
    return img.resize((256, round(256 * img.height / img.width)), Image.LANCZOS)


def main():
    ICONS.mkdir(parents=True, exist_ok=True)
    img = icon()
    img.save(ROOT / "AMIF.png")
    img.save(ICONS / "AMIFFusion.png")
    thumbnail().save(ICONS / "AMIFSample.png")
    print("wrote AMIF.png, AMIFFusion/Resources/Icons/AMIFFusion.png and AMIFSample.png")


if __name__ == "__main__":
    main()
