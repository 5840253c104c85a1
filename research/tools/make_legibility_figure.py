"""Keyed vs unkeyed outputs for one CT-like, one PET-like and one SPECT-like pair, as one PNG.

The Harvard images may not be published, so the pairs are simulated from the bundled MNI-based
sample: the MRI slice itself; CT-like: a bright skull shell around the brain mask, soft tissue
grey, CSF darker, noise; PET-like: the bundled PET volume in a colour map; SPECT-like: that
uptake blurred further (SPECT resolves less) in another colour map. Each second image is RGB, so
the colour path of `fuse_images` (Y fused, chroma restored) is shown too. Labels give the
verify score against the model's threshold.

    python research/tools/make_legibility_figure.py [-m MODEL] [--out docs/figures/legibility.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "AMIFFusion"), str(ROOT / "research")]

from amif.fusion import fuse_images  # noqa: E402
from amif.package import bundled_key_path, bundled_model_path, load_package  # noqa: E402
from amif.sample import sample_volumes, unit_slice  # noqa: E402


def colour_map(x: np.ndarray, stops) -> np.ndarray:
    """x in [0, 1] -> RGB in [0, 1] through piecewise-linear colour stops."""
    pos = np.linspace(0, 1, len(stops))
    return np.stack([np.interp(x, pos, [s[c] for s in stops]) for c in range(3)], -1).astype(np.float32)


HOT = [(0, 0, 0), (0.6, 0, 0), (1, 0.5, 0), (1, 1, 0.3), (1, 1, 1)]
RAINBOW = [(0, 0, 0), (0, 0, 0.8), (0, 0.8, 0.8), (0.2, 0.9, 0), (1, 0.9, 0), (1, 0, 0)]


def simulated_pairs(seed: int = 3) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    mri_img, pet_img = sample_volumes()
    spect_img = sitk.SmoothingRecursiveGaussian(pet_img, 4.0)
    mri = unit_slice(mri_img)
    brain = mri > 0.05
    dilate = sitk.BinaryDilateImageFilter()
    dilate.SetKernelRadius(5)
    outer = sitk.GetArrayFromImage(dilate.Execute(sitk.GetImageFromArray(brain.astype(np.uint8)))) > 0
    dilate.SetKernelRadius(1)
    inner = sitk.GetArrayFromImage(dilate.Execute(sitk.GetImageFromArray(brain.astype(np.uint8)))) > 0
    ct = np.where(brain, np.where(mri < 0.35, 0.18, 0.3 + 0.04 * mri), 0.0)
    ct = np.where(outer & ~inner, 0.95, ct) + 0.02 * rng.standard_normal(mri.shape) * (outer | brain)
    ct_img = sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(np.clip(ct, 0, 1).astype(np.float32)), 0.7)
    return mri, {
        "CT-like": np.clip(sitk.GetArrayFromImage(ct_img), 0, 1),
        "PET-like": colour_map(unit_slice(pet_img), HOT),
        "SPECT-like": colour_map(unit_slice(spect_img), RAINBOW),
    }


def main() -> None:
    from PIL import Image, ImageDraw, ImageFont

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default=str(bundled_model_path()))
    ap.add_argument("-k", "--key", default=str(bundled_key_path()))
    ap.add_argument("--out", default=str(ROOT / "docs" / "figures" / "legibility.png"))
    ap.add_argument("--scale", type=int, default=2, help="pixel zoom of the figure")
    args = ap.parse_args()
    pkg = load_package(args.model)
    mri, others = simulated_pairs()
    rows = []
    for name, other in others.items():
        keyed, unkeyed = fuse_images(mri, other, pkg, args.key), fuse_images(mri, other, pkg, None)
        rows.append(
            [
                ("MRI", mri),
                (name, other),
                (f"with key: {keyed.verdict}", keyed.fused),
                (f"no key: {unkeyed.verdict}", unkeyed.fused),
            ]
        )
    h, w = mri.shape
    s, label = args.scale, 16
    fig = Image.new("RGB", (4 * w * s, len(rows) * (h * s + label)), (255, 255, 255))
    draw, font = ImageDraw.Draw(fig), ImageFont.load_default()
    for i, row in enumerate(rows):
        for j, (text, img) in enumerate(row):
            rgb = np.repeat(img[..., None], 3, -1) if img.ndim == 2 else img
            tile = Image.fromarray(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)).resize((w * s, h * s))
            fig.paste(tile, (j * w * s, i * (h * s + label) + label))
            draw.text((j * w * s + 3, i * (h * s + label) + 2), text, fill=(0, 0, 0), font=font)
    fig.quantize(256, dither=Image.Dither.NONE).save(args.out, optimize=True)  # 256 colours: a third of the bytes
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
