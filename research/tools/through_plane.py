"""Through-plane consistency of volume fusion: is the sliced axis rougher than the in-plane ones?

    python research/tools/through_plane.py [-o docs/reports/through-plane.json] [--real] [--nilearn-wheel PATH]

Volumes are fused one axial slice at a time. Roughness along an axis: the mean |second difference| of the
output along it over the head (voxels where the sources' max rule is above 0.05), divided by the same for
the max rule (so 1 is the sources' own roughness). The sliced axis's *excess* is its ratio over the smaller
of the two in-plane ratios, minus 1; the target is at most 3%. Each case is fused with the owner's key and
without, with the through-plane filter off (weight 0, today's slice-by-slice result) and at the shipped
weight (amif.throughplane.THROUGH_PLANE_WEIGHT), in the same run. Cases: the bundled sample, and with
--real the two real pairs of research/tools/make_real_pairs.py (nibabel's T1 + mean BOLD; nilearn's MNI
T1 at 2 mm + a NeuroVault t map), built at run time in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "AMIFFusion"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from verify_real_volumes import unit_sources  # noqa: E402

HEAD = 0.05  # voxels where max(A, B) is above this are measured
TARGET = 0.03  # the sliced axis may be at most this much rougher than the smoother in-plane axis


def roughness(out: np.ndarray, ref: np.ndarray, where: np.ndarray) -> list[float]:
    """Per display axis (z, y, x): mean |second difference| of `out` over the voxels of `where` (those with a
    neighbour on each side along the axis), divided by the same for `ref`."""
    ratios = []
    for axis in range(3):
        inner = [slice(None)] * 3
        inner[axis] = slice(1, -1)
        m = where[tuple(inner)]
        d_out = np.abs(np.diff(out.astype(np.float64), 2, axis=axis))[m]
        d_ref = np.abs(np.diff(ref.astype(np.float64), 2, axis=axis))[m]
        ratios.append(float(d_out.mean() / d_ref.mean()) if m.any() and d_ref.mean() > 0 else float("nan"))
    return ratios


def excess(ratios: list[float]) -> float:
    """The sliced axis's roughness over the smoother in-plane axis's, minus 1."""
    return ratios[0] / min(ratios[1], ratios[2]) - 1.0


def measure_case(a, b, package, key, weights) -> dict:
    """{key state: {weight: {"ratios": [z, y, x], "excess": e, "seconds": s}}} for one volume pair."""
    import SimpleITK as sitk

    from amif.fusion import display_view, fuse_volumes

    sa, sb = unit_sources(a, b)  # A and B in [0, 1] in display layout, as the network sees them
    ref = np.maximum(sa, sb)
    where = ref > HEAD
    view = display_view(a)
    result = {}
    for state, k in (("keyed", key), ("unkeyed", None)):
        result[state] = {}
        for w in weights:
            t = time.perf_counter()
            r = fuse_volumes(a, b, package, k, device="cpu", through_plane=w)
            seconds = time.perf_counter() - t
            out = view(sitk.GetArrayViewFromImage(r.image))
            ratios = roughness(out, ref, where)
            result[state][f"{w:g}"] = {"ratios": ratios, "excess": excess(ratios), "seconds": seconds}
    return result


def cases(real: bool, wheel, tmp: Path) -> dict:
    """{name: (A, B)} SimpleITK images: the bundled sample, and with `real` the real pairs that can be built."""
    from amif.sample import sample_volumes

    out = {"sample": sample_volumes()}
    if real:
        import SimpleITK as sitk
        from make_real_pairs import build_pairs

        for name, (pa, pb) in build_pairs(tmp, wheel, mni_spacing=2.0).items():
            out[name] = (sitk.ReadImage(str(pa)), sitk.ReadImage(str(pb)))
    return out


def main(argv=None) -> int:
    from amif.files import atomic_output
    from amif.package import load_package
    from amif.throughplane import THROUGH_PLANE_WEIGHT

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output", type=Path, help="JSON report to write")
    p.add_argument("--real", action="store_true", help="also the real pairs of make_real_pairs.py")
    p.add_argument("--nilearn-wheel", help="nilearn's wheel, where nilearn is not installed")
    p.add_argument("-m", "--model", default=str(ROOT / "AMIFFusion/Resources/Models/amif-demo.json"))
    p.add_argument("-k", "--key", default=str(ROOT / "AMIFFusion/Resources/Models/amif-demo.amifkey"))
    args = p.parse_args(argv)
    package = load_package(args.model)
    weights = (0.0, THROUGH_PLANE_WEIGHT)
    report = {"measure": __doc__.split("\n\n")[2].replace("\n", " "), "target_excess": TARGET, "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (a, b) in cases(args.real, args.nilearn_wheel, Path(tmp)).items():
            report["cases"][name] = measure_case(a, b, package, args.key, weights)
    print(f"{'case':12} {'state':8} {'weight':>6}  {'z':>6} {'y':>6} {'x':>6}  excess  seconds")
    for name, states in report["cases"].items():
        for state, by_w in states.items():
            for w, m in by_w.items():
                z, y, x = m["ratios"]
                print(
                    f"{name:12} {state:8} {w:>6}  {z:6.3f} {y:6.3f} {x:6.3f}  {m['excess']:+6.1%}  {m['seconds']:6.1f}"
                )
    if args.output:
        with atomic_output(args.output) as tmp_path:
            Path(tmp_path).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
