"""MRI | second image | max rule | GFF | AMIF keyed for one CT-like, one PET and one SPECT-like pair, whole and as a
3x crop, as one PNG.

    python research/tools/make_comparison_figure.py [-m MODEL] [-k KEY] [--out docs/figures/fusion-comparison.png]

The Harvard images may not be published, so every pair is made from the bundled MNI-based sample
(AMIFFusion/Resources/SampleData, MNI permission notice beside it): PET is the sample's PET-like volume
(amif.sample.sample_slices); CT-like and SPECT-like are simulated from the sample by
research/tools/make_legibility_figure.py's simulated_pairs. Each pair takes two panel rows: the whole slice, then
the same five images cropped to a third of each side and enlarged 3x (nearest neighbour). The crop is the window
where the second image is hot and the MRI has fine detail (the largest product of the share of its pixels in the
second image's brightest fifth within the head and the MRI's high-pass energy over it); a thin red rectangle on the
whole MRI shows it.

The panels are grey: the methods fuse brightness, so the second image is shown as its luminance (the Y of the
SPECT-like colour map, as the evaluation measures a colour image), and AMIF (`amif.fusion.fuse_images`, the owner's
key) is given that luminance. Max rule and GFF are amif_research.baselines' max_fusion and gff_fusion (GFF on the
0-255 scale it was set for). Panels are drawn pixel for pixel (matplotlib figimage, no resampling) at --scale, in
64 grey levels, and the PNG is saved as research/tools/make_doc_figures.py saves its figures (256 colours): the
figure stays near 120 KB (fewer levels or a larger scale cost bytes the repository's 10 MB budget does not have).
It records the SHA-256 of the sample and model files it was drawn from (a test checks that it is the committed
files' and that the figure is what this tool draws from them).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "AMIFFusion"), str(ROOT / "research"), str(Path(__file__).resolve().parent)]

from amif.color import luminance  # noqa: E402
from amif.fusion import fuse_images  # noqa: E402
from amif.package import bundled_key_path, bundled_model_path, load_package, package_paths  # noqa: E402
from amif.sample import sample_paths, sample_slices  # noqa: E402
from amif_research.baselines import box_mean, gff_fusion, max_fusion  # noqa: E402

OUT = ROOT / "docs" / "figures" / "fusion-comparison.png"
COLUMNS = ("MRI", "second image", "max rule", "GFF", "AMIF keyed")
CROP = 3  # the crop is a third of each side, enlarged 3x
SCALE = 1  # screen pixels per image pixel in the whole-slice panels
LEVELS = 64  # grey levels of the panels
HOT = 0.8  # the second image is hot above this quantile of its values in the head
GAP, LEFT, TOP = 4, 64, 18  # pixels between panels, for the row labels, for the column titles
DPI = 100
RED = (0.9, 0.1, 0.1)


def pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, MRI, second image's luminance) in [0, 1] for the CT-like, PET and SPECT-like pairs, one axial slice."""
    from make_legibility_figure import simulated_pairs

    mri, simulated = simulated_pairs()
    pet = sample_slices()[1]
    return [
        ("CT-like", mri, np.asarray(simulated["CT-like"], np.float64)),
        ("PET", mri, np.asarray(pet, np.float64)),
        ("SPECT-like", mri, np.asarray(luminance(simulated["SPECT-like"]), np.float64)),
    ]


def window_sums(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Sum of x over every h x w window that fits, indexed by its top-left corner."""
    c = np.pad(np.cumsum(np.cumsum(x, 0), 1), ((1, 0), (1, 0)))
    return c[h:, w:] - c[:-h, w:] - c[h:, :-w] + c[:-h, :-w]


def crop_window(mri: np.ndarray, second: np.ndarray, crop: int = CROP) -> tuple[int, int, int, int]:
    """(row, column, height, width) of the 1/crop x 1/crop window with the largest product of its share of hot
    pixels of `second` (above its HOT quantile in the head, where either image has signal) and the high-pass
    energy of `mri` in it (the MRI's difference from its 5x5 mean, squared)."""
    h, w = mri.shape[0] // crop, mri.shape[1] // crop
    head = (mri > 0.05) | (second > 0.05)
    hot = (second >= np.quantile(second[head], HOT)).astype(np.float64)
    energy = (mri - box_mean(mri, 2)) ** 2
    score = window_sums(hot, h, w) * window_sums(energy, h, w)
    y, x = np.unravel_index(int(np.argmax(score)), score.shape)
    return int(y), int(x), h, w


def fusions(mri: np.ndarray, second: np.ndarray, pkg, key, device: str = "cpu") -> list[np.ndarray]:
    """The five panels of COLUMNS, each in [0, 1]."""
    keyed = fuse_images(mri, second, pkg, key, device=device)
    if keyed.verdict.state != "clean":
        print(f"warning: the keyed output is {keyed.verdict} (is KEY the model's key?)", file=sys.stderr)
    gff = gff_fusion(mri * 255, second * 255) / 255
    return [mri, second, max_fusion(mri, second), gff, np.asarray(keyed.fused, np.float64)]


def rgb(img: np.ndarray, scale: int) -> np.ndarray:
    """A grey image in [0, 1] as RGB in LEVELS grey levels, each pixel a scale x scale block."""
    g = np.round(np.clip(img, 0, 1) * (LEVELS - 1)) / (LEVELS - 1)
    g = np.repeat(np.repeat(g, scale, 0), scale, 1)
    return np.repeat(g[..., None], 3, -1)


def outline(img: np.ndarray, box: tuple[int, int, int, int], scale: int) -> np.ndarray:
    """RGB img with a one-pixel red rectangle around box (row, column, height, width, in image pixels / scale)."""
    y, x, h, w = (v * scale for v in box)
    img = img.copy()
    img[y, x : x + w] = img[y + h - 1, x : x + w] = RED
    img[y : y + h, x] = img[y : y + h, x + w - 1] = RED
    return img


def panel_rows(pkg, key, device: str = "cpu", scale: int = SCALE) -> list[tuple[str, list[np.ndarray]]]:
    """(row label, five RGB panels) for each pair: the whole slices, then the 3x crops."""
    rows = []
    for name, mri, second in pairs():
        images = fusions(mri, second, pkg, key, device)
        box = crop_window(mri, second)
        y, x, h, w = box
        whole = [rgb(im, scale) for im in images]
        whole[0] = outline(whole[0], box, scale)
        rows.append((name, whole))
        rows.append((f"{name}\n{CROP}x crop", [rgb(im[y : y + h, x : x + w], scale * CROP) for im in images]))
    return rows


def draw(rows: list[tuple[str, list[np.ndarray]]]) -> bytes:
    """The panels laid out pixel for pixel (figimage: no resampling), column titles on top, row labels on the
    left, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = [max(r[1][j].shape[1] for r in rows) for j in range(len(COLUMNS))]
    heights = [max(p.shape[0] for p in r[1]) for r in rows]
    width = LEFT + sum(widths) + GAP * (len(widths) - 1)
    height = TOP + sum(heights) + GAP * (len(heights) - 1)
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    lefts = [LEFT + sum(widths[:j]) + GAP * j for j in range(len(widths))]
    for j, title in enumerate(COLUMNS):
        fig.text((lefts[j] + widths[j] / 2) / width, 1 - (TOP / 2) / height, title, ha="center", va="center", size=8)
    top = TOP
    for (label, panels), h in zip(rows, heights):
        fig.text(4 / width, 1 - (top + h / 2) / height, label, ha="left", va="center", size=7)
        for j, p in enumerate(panels):
            fig.figimage(p, xo=lefts[j], yo=height - top - p.shape[0], origin="upper")
        top += h + GAP
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=DPI, facecolor="white")
    plt.close(fig)
    return out.getvalue()


def inputs(model, key) -> list[Path]:
    """The files the figure is drawn from: the sample's two volumes, the model's manifest and weights, the key."""
    return [*sample_paths(), *package_paths(model), Path(key)]


def inputs_digest(files: list[Path]) -> str:
    """SHA-256 over each file's name and content's SHA-256."""
    h = hashlib.sha256()
    for f in files:
        h.update(f"{Path(f).name}\0{hashlib.sha256(Path(f).read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()


def source_text(files: list[Path]) -> str:
    """The inputs' paths, relative to the repository where they lie in it."""
    paths = []
    for f in files:
        f = Path(f).resolve()
        paths.append(str(f.relative_to(ROOT)) if f.is_relative_to(ROOT) else str(f))
    return ", ".join(paths)


def make_figure(out=OUT, model=None, key=None, device: str = "cpu", scale: int = SCALE) -> Path:
    """Draw the figure to OUT (256 colours, its inputs' paths and digest recorded; written to a temporary name in
    its folder, then renamed)."""
    from make_doc_figures import palette_png

    model, key = model or bundled_model_path(), key or bundled_key_path()
    files = inputs(model, key)
    png = palette_png(
        draw(panel_rows(load_package(model), key, device, scale)), source_text(files), inputs_digest(files)
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}.png")
    try:
        tmp.write_bytes(png)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default=str(bundled_model_path()))
    ap.add_argument("-k", "--key", default=str(bundled_key_path()))
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--scale", type=int, default=SCALE, help="screen pixels per image pixel (whole slices)")
    ap.add_argument("--device", default="cpu", help='"cpu" (default: the same bytes everywhere), "auto", "cuda"')
    args = ap.parse_args(argv)
    out = make_figure(args.out, args.model, args.key, args.device, args.scale)
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
