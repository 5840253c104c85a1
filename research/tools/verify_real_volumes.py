"""Verdicts and kept anatomy of the bundled model on real and awkward volumes, keyed and unkeyed.

    python research/tools/verify_real_volumes.py PAIRS [--json docs/reports/real-volumes.json] [--cases a,b]

PAIRS is a folder that make_real_pairs.py wrote (pairs whose files are missing are left out). Cases:
  sample       the bundled sample (MRI + PET)
  t1_bold      nibabel's T1 + mean BOLD (B covers about half of A's slices)
  mni_stat     nilearn's MNI T1 + a NeuroVault t map
  small64      the sample, axial slices resampled to 64 x 64
  small33x41   the sample, axial slices resampled to 33 x 41
  partial      the sample, B cut to the middle half of its slices (B's own grid)
  empty        the sample with an empty second volume
  edge_empty   the sample cropped in-plane to 75 x 65 (tissue touches every edge), empty second volume
Each case is fused with the owner's key (keyed) and without (unkeyed) by amif.fusion.fuse_volumes on the
CPU; the JSON (numbers only) gives per case and key state the verdict of `verify_volume` on the output
(what `amif verify` reports: state, score, erasure ratio), the verdict fuse_volumes itself stored
(fuse_state, fuse_score), and the tissue loss: the percentage of A's tissue voxels (A >= TISSUE in
[0, 1]) whose output is more than MARGIN below the max rule's max(A, B) (which loses none by
construction), overall and over the slices where B has no content.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "AMIFFusion"))

TISSUE = 0.1  # A's tissue: voxels at least this bright under A's window
MARGIN = 0.25  # a tissue voxel is lost when the output is more than this below max(A, B)
CASES = ("sample", "t1_bold", "mni_stat", "small64", "small33x41", "partial", "empty", "edge_empty")


def _resample_inplane(img, nx: int, ny: int):
    """img with its first two index axes resampled to nx x ny voxels (same extent), the third kept."""
    import SimpleITK as sitk

    size = img.GetSize()
    spacing = [img.GetSpacing()[0] * size[0] / nx, img.GetSpacing()[1] * size[1] / ny, img.GetSpacing()[2]]
    ref = sitk.Image([nx, ny, size[2]], sitk.sitkFloat32)
    ref.SetSpacing(spacing)
    ref.SetDirection(img.GetDirection())
    half = [(spacing[0] / img.GetSpacing()[0] - 1) / 2, (spacing[1] / img.GetSpacing()[1] - 1) / 2, 0]
    ref.SetOrigin(img.TransformContinuousIndexToPhysicalPoint(half))
    return sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def _empty_like(img):
    import SimpleITK as sitk

    out = sitk.Image(img.GetSize(), sitk.sitkFloat32)
    out.CopyInformation(img)
    return out


def case_pair(name: str, pairs=None):
    """(A, B) SimpleITK float images of a case, or None where its files are missing."""
    import SimpleITK as sitk

    from amif.sample import sample_volumes

    if name in ("t1_bold", "mni_stat"):
        if pairs is None:
            return None
        files = sorted(Path(pairs).glob(f"{name}-[AB].*"))
        return tuple(sitk.ReadImage(str(f), sitk.sitkFloat32) for f in files) if len(files) == 2 else None
    a, b = sample_volumes()
    if name == "sample":
        return a, b
    if name == "small64":
        return _resample_inplane(a, 64, 64), _resample_inplane(b, 64, 64)
    if name == "small33x41":
        return _resample_inplane(a, 33, 41), _resample_inplane(b, 33, 41)
    n = a.GetSize()[2]
    if name == "partial":
        return a, b[:, :, n // 4 : 3 * n // 4]
    if name == "empty":
        return a, _empty_like(a)
    if name == "edge_empty":
        nx, ny = a.GetSize()[:2]
        x0, y0 = (nx - 75) // 2, (ny - 65) // 2
        crop = a[x0 : x0 + 75, y0 : y0 + 65, :]
        return crop, _empty_like(crop)
    raise ValueError(f"unknown case {name!r}")


def unit_sources(a, b) -> tuple[np.ndarray, np.ndarray]:
    """A and B in [0, 1] in display layout as fuse_volumes feeds them to the network (B resampled onto
    A's grid, each under its robust window, B's only over its extent); B is 0 outside its extent."""
    import SimpleITK as sitk

    from amif.fusion import display_array, resample_with_coverage, same_geometry
    from amif.intensity import normalize, robust_window

    covered = None
    if not same_geometry(a, b):
        b, covered = resample_with_coverage(b, a)
    va, vb = sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b)
    ua = normalize(display_array(a), robust_window(va))
    ub = normalize(display_array(b), robust_window(vb if covered is None else vb[covered]))
    return ua, ub


def tissue_loss(out: np.ndarray, ua: np.ndarray, ub: np.ndarray) -> tuple[float, float]:
    """Percent of A's tissue voxels lost (output more than MARGIN below max(A, B)), overall and over the
    slices where B has no content (NaN where there are none)."""
    tissue = ua >= TISSUE
    lost = tissue & (out < np.maximum(ua, ub) - MARGIN)
    bare = ub.reshape(len(ub), -1).max(1) < TISSUE  # slices where B has no content
    pct = lambda m: float(100 * lost[m].sum() / max(1, tissue[m].sum())) if tissue[m].any() else float("nan")  # noqa: E731
    return pct(slice(None)), pct(bare)


def run_case(name: str, a, b, package, key) -> dict:
    """Fuse a case keyed and unkeyed: {"shape": (z, y, x), "keyed": {...}, "unkeyed": {...}}."""
    from amif.fusion import display_array, fuse_volumes
    from amif.verify import verify_volume

    ua, ub = unit_sources(a, b)
    row = {"shape": list(ua.shape), "b_empty_slices": int((ub.reshape(len(ub), -1).max(1) < TISSUE).sum())}
    for state, k in (("keyed", key), ("unkeyed", None)):
        t = time.perf_counter()
        r = fuse_volumes(a, b, package, k, device="cpu")
        out = display_array(r.image)
        loss, loss_bare = tissue_loss(out, ua, ub)
        v = verify_volume(out, package.identifier, package.threshold)
        row[state] = {
            "state": v.state,
            "flagged": v.flagged,
            "score": round(v.score, 4),
            "erasure": round(v.erasure, 4),
            "fuse_state": r.verdict.state,
            "fuse_score": round(r.verdict.score, 4),
            "tissue_loss_pct": round(loss, 2),
            "tissue_loss_bare_pct": None if np.isnan(loss_bare) else round(loss_bare, 2),
            "seconds": round(time.perf_counter() - t, 1),
        }
    return row


def summary(rows: dict) -> dict:
    """False positives (keyed flagged) and false negatives (unkeyed clean) over the cases."""
    fp = [n for n, r in rows.items() if r["keyed"]["flagged"]]
    fn = [n for n, r in rows.items() if not r["unkeyed"]["flagged"]]
    return {
        "cases": len(rows),
        "false_positives": fp,
        "false_negatives": fn,
        "false_positive_rate": round(len(fp) / max(1, len(rows)), 3),
        "false_negative_rate": round(len(fn) / max(1, len(rows)), 3),
    }


def main(argv=None) -> int:
    from amif.keys import load_key
    from amif.package import bundled_key_path, bundled_model_path, load_package

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pairs", help="folder written by make_real_pairs.py")
    p.add_argument("--json", help="write the report here (atomically)")
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated cases")
    args = p.parse_args(argv)
    package = load_package(bundled_model_path())
    key = load_key(bundled_key_path())
    rows = {}
    print(
        f"{'case':12} {'shape':>14} | {'keyed':>8} {'score':>6} {'eras':>5} {'loss%':>5} {'bare%':>5} | "
        f"{'unkeyed':>8} {'score':>6} {'eras':>5} {'loss%':>5}"
    )
    for name in args.cases.split(","):
        pair = case_pair(name, args.pairs)
        if pair is None:
            print(f"{name:12} (files missing: left out)")
            continue
        rows[name] = r = run_case(name, *pair, package, key)
        k, u = r["keyed"], r["unkeyed"]
        print(
            f"{name:12} {'x'.join(map(str, r['shape'])):>14} | {k['state']:>8} {k['score']:6.3f} {k['erasure']:5.2f} "
            f"{k['tissue_loss_pct']:5.1f} {k['tissue_loss_bare_pct'] or 0:5.1f} | {u['state']:>8} {u['score']:6.3f} "
            f"{u['erasure']:5.2f} {u['tissue_loss_pct']:5.1f}",
            flush=True,
        )
    s = summary(rows)
    print(
        f"false positives (keyed flagged): {s['false_positives']}; false negatives (unkeyed clean): "
        f"{s['false_negatives']}"
    )
    if args.json:
        from amif.files import write_text

        report = {"tissue": TISSUE, "margin": MARGIN, "model": package.model_id, "summary": s, "cases": rows}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_text(args.json, json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
