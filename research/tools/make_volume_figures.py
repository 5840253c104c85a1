"""Two documentation figures of whole-volume fusion, keyed (owner's key) and unkeyed (no key).

    python research/tools/make_volume_figures.py [--only reformats|real-pairs] [-m MODEL] [-k KEY]
        [--out-dir docs/figures] [--mni-spacing MM] [--nilearn-wheel PATH] [--device auto]

  reformats.png   the bundled sample fused with and without the key, as Slicer shows the result: axial,
                  coronal and sagittal reformats (pixel spacing respected): the centre axial slice;
                  the coronal row and sagittal column near the centre that cross the identifier. The
                  network fuses axial slices, so the identifier written in each axial slice shows as
                  bars in the coronal and sagittal reformats.
  real-pairs.png  the real pairs that research/tools/make_real_pairs.py builds (nibabel's T1 + mean
                  BOLD; nilearn's MNI ICBM152 2009a T1 + NeuroVault t map image_10426): one axial slice
                  of the first volume, the second volume (on the first's grid), the keyed and the
                  unkeyed fusion, each fusion labelled with the verdict fuse_volumes gives the volume.

Data licences: the sample is derived from the MNI ICBM152 2009a template (permission notice in
AMIFFusion/Resources/SampleData/LICENSE-MNI-ICBM152.txt); nibabel's anatomical.nii and functional.nii
are part of nibabel, MIT licence (its COPYING lists no other licence for them); nilearn's MNI template
is under the same MNI permission notice; the NeuroVault map is CC0 (nilearn's
datasets/description/neurovault.rst: "All data are distributed under the CC0 license"). Each PNG is
written to a temporary name in its folder and renamed into place.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "AMIFFusion"), str(Path(__file__).resolve().parent)]

from amif.fusion import (  # noqa: E402
    DISPLAY_ORIENTATION,
    display_array,
    display_view,
    fuse_volumes,
    resample_with_coverage,
)
from amif.intensity import robust_window  # noqa: E402
from amif.package import bundled_key_path, bundled_model_path, load_package  # noqa: E402

LABEL = 28  # pixels above each tile for two lines of text
TILE = 256  # each reformat is fitted into TILE x TILE pixels
PAIR_TILE = 232  # each real-pair slice into PAIR_TILE x PAIR_TILE (four columns: the PNG stays under 200 KB)


def spacing_lpi(img) -> tuple[float, float, float]:
    """(x, y, z) spacing of `img` in display orientation (x: right to left, y: anterior to posterior,
    z: superior to inferior), matching display_array's (z, y, x) axes."""
    import SimpleITK as sitk

    return sitk.DICOMOrient(img, DISPLAY_ORIENTATION).GetSpacing()


def tile(s: np.ndarray, cw: float, rh: float, size: int = TILE):
    """A 2D array in [0, 1] (rows of height rh mm, columns of width cw mm) fitted into size x size, RGB."""
    from PIL import Image

    im = Image.fromarray(np.round(np.clip(s, 0, 1) * 255).astype(np.uint8))
    w, h = s.shape[1] * cw, s.shape[0] * rh
    scale = size / max(w, h)
    im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    out = Image.new("RGB", (size, size), (0, 0, 0))
    out.paste(im.convert("RGB"), ((size - im.width) // 2, (size - im.height) // 2))
    return out


def stroke_planes(keyed: np.ndarray, unkeyed: np.ndarray) -> tuple[int, int, int]:
    """(z, y, x) of the reformats: the centre axial slice; the coronal row and the sagittal column, within
    the middle half of the volume, where the unkeyed output differs most from the keyed one (they cross
    the identifier's strokes; a plane through the exact centre can fall between two letters)."""
    diff = np.abs(unkeyed - keyed)

    def pick(profile: np.ndarray) -> int:
        lo, hi = len(profile) // 4, len(profile) - len(profile) // 4
        return lo + int(np.argmax(profile[lo:hi]))

    return keyed.shape[0] // 2, pick(diff.mean(axis=(0, 2))), pick(diff.mean(axis=(0, 1)))


def reformats(arr: np.ndarray, spacing, at) -> list[tuple[str, np.ndarray, float, float]]:
    """Axial, coronal and sagittal slices of a display-layout array through the voxel `at` (z, y, x), as
    Slicer shows them: (name, slice, column width mm, row height mm)."""
    sx, sy, sz = spacing
    z, y, x = at
    return [
        (f"axial (slice {z} of {arr.shape[0]})", arr[z], sx, sy),
        (f"coronal (row {y} of {arr.shape[1]})", arr[:, y, :], sx, sz),
        (f"sagittal (column {x} of {arr.shape[2]})", arr[:, :, x], sy, sz),  # anterior on the left, as in Slicer
    ]


def grid(rows: list[list[tuple[str, object]]], size: int = TILE):
    """Tiles with their labels (one or two lines, split at '\\n') above them, row by row, on white."""
    from PIL import Image, ImageDraw, ImageFont

    cols = max(len(r) for r in rows)
    fig = Image.new("RGB", (cols * size, len(rows) * (size + LABEL)), (255, 255, 255))
    draw, font = ImageDraw.Draw(fig), ImageFont.load_default()
    for i, row in enumerate(rows):
        for j, (text, im) in enumerate(row):
            y0 = i * (size + LABEL)
            fig.paste(im, (j * size, y0 + LABEL))
            draw.multiline_text((j * size + 3, y0 + 2), text, fill=(0, 0, 0), font=font, spacing=2)
    return fig


def save_png(fig, path: Path) -> Path:
    """256 colours, no dithering, optimized; written to a temporary name in the folder, then renamed."""
    from PIL import Image

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    try:
        fig.quantize(256, dither=Image.Dither.NONE).save(tmp, optimize=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    return path


def fuse_both(a, b, pkg, key, device):
    return fuse_volumes(a, b, pkg, key, device=device), fuse_volumes(a, b, pkg, None, device=device)


def reformats_figure(pkg, key, out: Path, device="auto") -> Path:
    import SimpleITK as sitk

    from amif.sample import sample_paths

    a, b = (sitk.ReadImage(str(p)) for p in sample_paths())
    keyed, unkeyed = fuse_both(a, b, pkg, key, device)
    arrays = [display_array(res.image) for res in (keyed, unkeyed)]
    at, sp = stroke_planes(*arrays), spacing_lpi(keyed.image)
    rows = []
    for name, res, arr in zip(("keyed", "unkeyed"), (keyed, unkeyed), arrays):
        v = res.verdict
        rows.append(
            [
                (f"{name}: {view}\n{v.state} (score {v.score:.3f})", tile(s, cw, rh))
                for view, s, cw, rh in reformats(arr, sp, at)
            ]
        )
    return save_png(grid(rows), out)


def unit(arr: np.ndarray, window=None) -> np.ndarray:
    lo, hi = window or robust_window(arr)
    return (arr - lo) / (hi - lo)


def pair_row(names: tuple[str, str], a, b, pkg, key, device) -> list[tuple[str, object]]:
    """First volume, second volume on the first's grid, keyed and unkeyed fusion at one axial slice: the
    middle of the slices that the second volume covers (most of)."""
    keyed, unkeyed = fuse_both(a, b, pkg, key, device)
    b_on_a, covered = resample_with_coverage(b, a)
    view = display_view(a)
    cover = view(covered).mean(axis=(1, 2))
    inside = np.flatnonzero(cover >= 0.5)
    z = int(inside[len(inside) // 2]) if inside.size else cover.shape[0] // 2
    sx, sy, _ = spacing_lpi(a)
    size = PAIR_TILE
    va, vb = display_array(a), display_array(b_on_a)
    tiles = [
        (f"{names[0]}\naxial slice {z} of {va.shape[0]}", tile(unit(va[z]), sx, sy, size)),
        (f"{names[1]}\non the first volume's grid", tile(unit(vb[z], keyed.windows[1]), sx, sy, size)),
    ]
    for name, res in (("keyed", keyed), ("unkeyed", unkeyed)):
        v = res.verdict
        text = f"{name}: {v.state}\nscore {v.score:.3f}, threshold {v.threshold:.3f}"
        tiles.append((text, tile(display_array(res.image)[z], sx, sy, size)))
        print(f"{names[0]} + {names[1]}, {name}: {v}")
    return tiles


def real_pairs_figure(pkg, key, out: Path, device="auto", wheel=None, mni_spacing=None) -> Path | None:
    import make_real_pairs as rp

    rows = []
    data = rp.nibabel_data()
    if data is not None:
        rows.append(
            pair_row(("nibabel T1 (anatomical.nii)", "mean BOLD (functional.nii)"), *rp.t1_bold(data), pkg, key, device)
        )
    else:
        print("left out: nibabel's anatomical.nii / functional.nii not found", file=sys.stderr)
    files = rp.nilearn_files(wheel)
    if files is not None:
        rows.append(
            pair_row(
                ("MNI ICBM152 2009a T1", "NeuroVault t map 10426"), *rp.mni_stat(files, mni_spacing), pkg, key, device
            )
        )
    else:
        print("left out: nilearn's MNI T1 / image_10426 not found", file=sys.stderr)
    return save_png(grid(rows, PAIR_TILE), out) if rows else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("reformats", "real-pairs"), help="write only this figure")
    ap.add_argument("-m", "--model", default=str(bundled_model_path()))
    ap.add_argument("-k", "--key", default=str(bundled_key_path()))
    ap.add_argument("--out-dir", default=str(ROOT / "docs" / "figures"))
    ap.add_argument("--mni-spacing", type=float, help="resample the MNI T1 to this spacing, mm (default: 1 mm)")
    ap.add_argument("--nilearn-wheel", help="nilearn wheel to read its files from (default: an installed nilearn)")
    ap.add_argument("--device", default="auto", help='"auto", "cpu", "cuda", "cuda:N" or "mps"')
    args = ap.parse_args(argv)
    pkg, out = load_package(args.model), Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "reformats"):
        reformats_figure(pkg, args.key, out / "reformats.png", args.device)
    if args.only in (None, "real-pairs"):
        if (
            real_pairs_figure(pkg, args.key, out / "real-pairs.png", args.device, args.nilearn_wheel, args.mni_spacing)
            is None
        ):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
