"""Publish the evaluation report of the bundled model under docs/reports/evaluation/.

    python research/tools/make_report.py [--data ../shared/data/harvard] [--twin PKG ...] [--skip-benchmark]

Writes docs/reports/evaluation/report.md (targets, the reader targets with pass/fail per modality,
per-modality metric and reader-measure tables on the Harvard test split, speed and memory),
harvard-test.json (the aggregates behind the tables, the reader measures under "reader"),
ratios.png (each method's metrics as a ratio to the max rule's) and sample.png (sources,
baselines, keyed and unkeyed AMIF and the twin on slices of the bundled MNI-based sample). Only aggregates of the
Harvard images are published: their images are research-use only, so the example figure uses the
bundled sample. Takes about 25 minutes on 2 cores: the Harvard evaluation (72 pairs, the model keyed and
unkeyed, two twins, four baselines) about 16, the benchmark (skipped with --skip-benchmark) the rest.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "AMIFFusion"), str(ROOT / "research")]

from amif.package import bundled_key_path, bundled_model_path, load_package, read_manifest, training_steps  # noqa: E402
from amif_research import reader as measures  # noqa: E402
from amif_research.data import default_data_dir  # noqa: E402
from amif_research.evaluate import KINDS, evaluate  # noqa: E402
from amif_research.losses import HINGES  # noqa: E402

OUT = ROOT / "docs" / "reports" / "evaluation"
TWINS = sorted((ROOT / "research" / "twins").glob("*.json"))
PLOT_ROWS = ("AMIF keyed", "AMIF unkeyed", "twins (mean)", "mean", "Laplacian", "GFF")
RIM_MARGIN = 0.005  # keyed AMIF's undershoot share may exceed the max rule's by at most this (of near-edge pixels)
SAT_MARGIN = 0.02  # ... its saturation error where the source is hot, the max rule's by at most this
HUE_MARGIN = 2.0  # ... its hue error there (degrees), the max rule's by at most this
NOT_MEASURED = (
    "IFCNN (Zhang et al., Inf. Fusion 2020)",
    "MATR (Tang et al., IEEE TIP 2022)",
    "GeSeNet (Li et al., IEEE TNNLS 2023)",
)
SAMPLE_SLICES = (0.45, 0.55)  # fractions of the sample's axial extent


def sample_pairs(folder: Path) -> Path:
    """Axial slices of the bundled sample as a PET-MRI/test pair folder (8-bit PNGs)."""
    from PIL import Image

    from amif.sample import sample_volumes, unit_slice

    for name, img in zip(("MRI", "PET"), sample_volumes()):
        d = folder / "PET-MRI" / "test" / name
        d.mkdir(parents=True)
        for i, f in enumerate(SAMPLE_SLICES):
            Image.fromarray(np.round(unit_slice(img, f) * 255).astype(np.uint8)).save(d / f"slice{i}.png")
    return folder


def with_twin_mean(agg: dict) -> dict:
    rows = agg["rows"]
    twins = [r for r in rows if r.startswith("twin (")]
    if twins:
        rows["twins (mean)"] = {
            k: {"mean": np.mean([rows[t][k]["mean"] for t in twins], 0).tolist()} for k in rows[twins[0]]
        }
    return agg


def plot_ratios(agg: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, rows = agg["win_metrics"], agg["rows"]
    idx = [agg["metrics"].index(m) for m in names]
    plotted = [r for r in PLOT_ROWS if r in rows]
    fig, axes = plt.subplots(1, len(KINDS), figsize=(13, 3.6), sharey=True)
    width = 0.8 / len(plotted)
    for ax, kind in zip(axes, KINDS):
        mx = np.asarray(rows["max"][kind]["mean"])[idx]
        for j, r in enumerate(plotted):
            ratio = np.asarray(rows[r][kind]["mean"])[idx] / mx
            ax.bar(np.arange(len(names)) + (j - (len(plotted) - 1) / 2) * width, ratio, width, label=r)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(range(len(names)), names, rotation=45)
        ax.set_title(f"{kind}-MRI")
        ax.set_ylim(0.5, 1.5)
    axes[0].set_ylabel("ratio to the max rule (mean over test images)")
    axes[-1].legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def targets(agg: dict, bench: dict | None) -> list[str]:
    rows, names = agg["rows"], agg["metrics"]
    win_idx = [names.index(m) for m in agg["win_metrics"]]
    twins = [r for r in rows if r.startswith("twin (")]
    lines = ["| target | CT | PET | SPECT | met |", "|---|---|---|---|---|"]
    cells, ok = [], True
    for kind in KINDS:
        k, mx = np.asarray(rows["AMIF keyed"][kind]["mean"]), np.asarray(rows["max"][kind]["mean"])
        wins = int(sum(k[i] >= mx[i] for i in win_idx))
        cells.append(f"{wins}/8")
        ok &= wins >= 5
    lines.append(
        f"| keyed AMIF ≥ max rule on ≥ 5 of EN/SD/SF/MI/SCD/VIF/Qabf/SSIM | {' | '.join(cells)} | "
        f"{'yes' if ok else '**no**'} |"
    )
    if twins:
        cells, spread, ok = [], [], True
        for kind in KINDS:
            k = np.asarray(rows["AMIF keyed"][kind]["mean"])
            per = np.asarray([rows[t][kind]["mean"] for t in twins])
            ratio = k / per.mean(0)
            worst = int(np.argmin(ratio))
            below = [names[i] for i in range(len(names)) if ratio[i] < 0.98]
            cells.append(f"{len(names) - len(below)}/{len(names)}; worst {names[worst]} {ratio[worst]:.3f}")
            ok &= not below
            if len(twins) > 1:
                rel = per.std(0, ddof=1) / np.abs(per.mean(0))
                spread.append(f"median {100 * np.median(rel):.1f}%, max {100 * rel.max():.1f}% ({names[rel.argmax()]})")
        lines.append(
            f"| keyed AMIF ≥ 0.98 × twin mean on every metric | {' | '.join(cells)} | {'yes' if ok else '**no**'} |"
        )
        if spread:
            lines.append(f"| (twin seed-to-seed sd, relative, {len(twins)} seeds) | {' | '.join(spread)} | |")
    else:
        lines.append("| keyed AMIF within 2% of the twin | no twin given | | | **not measured** |")
    if bench:
        ms = bench["ms_batch1"]
        lines.append(
            f"| ≤ 60 ms per 256x256 slice (batch 1, {bench['threads']} threads) | {ms:.1f} ms | | | "
            f"{'yes' if ms <= 60 else '**no**'} |"
        )
        for shape, limit, key, unit, fmt in (
            ("256x256x128", 10, "seconds", "s", "{:.1f}"),
            ("512x512x300", 2048, "peak_mib", "MiB", "{:.0f}"),
        ):
            v = bench["volumes"].get(shape, {}).get(key)
            if v is not None:
                what = "time" if key == "seconds" else "peak resident memory"
                lines.append(
                    f"| {shape}: {what} under {limit} {unit} | {fmt.format(v)} {unit} | | | "
                    f"{'yes' if v < limit else f'**no** (+{fmt.format(v - limit)} {unit})'} |"
                )
    return lines


def reader_targets(agg: dict) -> list[str]:
    """Pass/fail per pair type of the reader targets, from the JSON's "reader" and "rows" sections."""
    if "reader" not in agg or "GFF" not in agg["rows"]:
        return ["Reader targets: not measured (the JSON has no reader measures or no GFF row)."]
    rd, names = agg["reader"], agg["reader"]["measures"]

    def val(row, kind, name):
        v = rd["rows"][row][kind]["mean"][names.index(name)]
        return float("nan") if v is None else v

    def verdict(flags):
        return "yes" if all(flags) else "**no**"

    lines = ["| reader target | CT | PET | SPECT | met |", "|---|---|---|---|---|"]
    cells, flags = [], []
    for kind in KINDS:
        k, mx, g = (val(r, kind, "anatomy") for r in ("AMIF keyed", "max", "GFF"))
        flags.append(k >= 2 * mx and k >= g)
        cells.append(f"{k:.3f} (max {mx:.3f}, GFF {g:.3f}) {'yes' if flags[-1] else 'no'}")
    lines.append(
        f"| anatomy under function: keyed AMIF ≥ 2 × max rule and ≥ GFF | {' | '.join(cells)} | {verdict(flags)} |"
    )
    cells, flags = [], []
    for kind in KINDS:
        k, mx = (val(r, kind, "undershoot") for r in ("AMIF keyed", "max"))
        flags.append(k <= mx + RIM_MARGIN)
        cells.append(f"{100 * k:.2f}% (max {100 * mx:.2f}%) {'yes' if flags[-1] else 'no'}")
    lines.append(
        f"| rims: keyed AMIF's undershoot share ≤ max rule's + {100 * RIM_MARGIN:.1f}% of near-edge pixels | "
        f"{' | '.join(cells)} | {verdict(flags)} |"
    )
    cells, flags = ["n/a (grey)"], []
    for kind in KINDS[1:]:
        ks, ms, kh, mh = (val(r, kind, m) for m in ("sat_err", "hue_err") for r in ("AMIF keyed", "max"))
        flags.append(ks <= ms + SAT_MARGIN and kh <= mh + HUE_MARGIN)
        cells.append(f"sat {ks:.3f} (max {ms:.3f}), hue {kh:.1f}° (max {mh:.1f}°) {'yes' if flags[-1] else 'no'}")
    lines.append(
        f"| colour where the source is hot: keyed AMIF's saturation error ≤ max rule's + {SAT_MARGIN}, "
        f"hue error ≤ max rule's + {HUE_MARGIN:g}° | {' | '.join(cells)} | {verdict(flags)} |"
    )
    win_idx = [agg["metrics"].index(m) for m in agg["win_metrics"]]
    for ref, label in (("max", "max rule"), ("GFF", "GFF")):
        cells, flags = [], []
        for kind in KINDS:
            k, r = np.asarray(agg["rows"]["AMIF keyed"][kind]["mean"]), np.asarray(agg["rows"][ref][kind]["mean"])
            wins = int(sum(k[i] >= r[i] for i in win_idx))
            flags.append(wins >= 6)
            cells.append(f"{wins}/8")
        lines.append(
            f"| keyed AMIF ≥ {label} on ≥ 6 of EN/SD/SF/MI/SCD/VIF/Qabf/SSIM | {' | '.join(cells)} | {verdict(flags)} |"
        )
    return lines


def hinges(training: dict) -> str:
    """The fusion-loss hinge weights a package was last trained with, in amif_research.losses.HINGES order."""
    from amif_research.train import flat_record

    training = flat_record(training)
    return " / ".join(str(training.get(f"{k}_weight", 0)) for k in HINGES)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(default_data_dir()))
    ap.add_argument("--twin", action="append", help=f"twin package (default: {', '.join(t.name for t in TWINS)})")
    ap.add_argument("--skip-benchmark", action="store_true", help="keep the report's previous speed section")
    args = ap.parse_args()
    twins = args.twin or [str(t) for t in TWINS]
    OUT.mkdir(parents=True, exist_ok=True)
    model, key = bundled_model_path(), bundled_key_path()
    pkg = load_package(model)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        harvard = evaluate([model], args.data, "test", [key], twins, tmp / "harvard-test.md", figures=False)
        evaluate([model], sample_pairs(tmp / "sample"), "test", [key], twins[:1], tmp / "sample.md", progress=False)
        shutil.copy(tmp / "sample-figures" / "PET.png", OUT / "sample.png")
        doc = json.loads(harvard.with_suffix(".json").read_text())
        doc["data"] = "../shared/data/harvard"  # no paths of this machine in published files
        (OUT / "harvard-test.json").write_text(json.dumps(doc, indent=1), encoding="utf-8")
        tables = harvard.read_text(encoding="utf-8").replace(str(Path(args.data)), "../shared/data/harvard")
        bench = None
        if not args.skip_benchmark:
            subprocess.run(
                [
                    sys.executable,
                    str(ROOT / "tools" / "benchmark.py"),
                    "--out",
                    str(tmp / "bench.md"),
                    "--json",
                    str(OUT / "benchmark.json"),
                ],
                check=True,
            )
            (OUT / "benchmark.md").write_text((tmp / "bench.md").read_text())
        if (OUT / "benchmark.json").exists():
            bench = json.loads((OUT / "benchmark.json").read_text())
    agg = with_twin_mean(json.loads((OUT / "harvard-test.json").read_text()))
    doc_figures = ROOT / "research" / "tools" / "make_doc_figures.py"  # plot_ratios from the JSON, as published
    subprocess.run(
        [sys.executable, str(doc_figures), "--reports", str(OUT.parent), "--out", str(OUT.parent)], check=True
    )
    twin_steps = (
        ", ".join(f"{m['model_id']} ({training_steps(m)})" for m in (read_manifest(t)[0] for t in twins)) or "none"
    )
    lines = [
        "# AMIF evaluation: the bundled model",
        "",
        f"Model `{pkg.model_id}` ({training_steps(pkg.manifest)}, batch {pkg.manifest['training']['batch']}); "
        f"unprotected twins: {twin_steps}. Harvard Whole Brain Atlas **test** split; only aggregate figures "
        "are published (the images are research-use only). The twins see the same data, crops, batch size, "
        "learning rates and step count, with the zero code and the fusion loss only"
        f" (hinge weights of the last training run, {' / '.join(h.upper() for h in HINGES)}:"
        f" model {hinges(pkg.manifest['training'])},"
        f" twins {', '.join(hinges(v) for v in agg['twins'].values()) or '-'}).",
        "",
        "Regenerate (about 25 minutes on 2 cores, needs `../shared/data/harvard`): "
        "`python research/tools/make_report.py`",
        "",
        "## Targets",
        "",
        *targets(agg, bench),
        "",
        "### What a reader sees",
        "",
        "Measures of `research/amif_research/reader.py` (definitions and thresholds in its docstrings; the "
        "thresholds are also in the JSON under `reader.constants`): *anatomy under function*, the gain of the "
        "MRI's high-pass (image minus its 5-tap binomial blur) in the output's, where the second modality's grey "
        f"exceeds the MRI's by more than {measures.DOMINANCE_LEVELS} levels (1 = all MRI detail kept); "
        f"*undershoot/overshoot*, the share of pixels within {measures.RIM_RADIUS} px of a strong source edge (a "
        f"4-neighbour step of at least {measures.EDGE_LEVELS} levels) where the output is darker/brighter than both "
        f"sources by more than {measures.RIM_LEVELS} levels; *colour error*, where the PET/SPECT source's "
        f"luminance is at least {measures.HOT_LEVEL}, the mean HSV hue difference (degrees) and the mean absolute "
        "HSV saturation difference of the output's colour against the source's. Means over the test images.",
        "",
        *reader_targets(agg),
        "",
        "Baselines a reader would pick: GFF (guided-filter fusion, Li, Kang and Hu, IEEE TIP 2013) is "
        "implemented in `research/amif_research/baselines.py` and measured in every table below. "
        + "; ".join(NOT_MEASURED)
        + ": **not measured here** (their code and weights are not run in this "
        "project, and published figures use other metric code and test subsets, so they are not copied).",
        "",
        "![Ratio of each method's mean metric to the max rule's, per pair type](ratios.png)",
        "",
        "*Each method's mean over the test images divided by the element-wise max rule's (1 = max rule).*",
        "",
        "![Bundled sample: MRI, PET-like, baselines, keyed and unkeyed AMIF, the twin](sample.png)",
        "",
        "*Two axial slices of the bundled MNI-based sample (not Harvard): sources, the four baselines "
        "(mean, max, Laplacian, GFF), keyed AMIF, unkeyed AMIF (identifier written) and the first twin.*",
        "",
        "## Metric tables (Harvard test split)",
        "",
        *["#" + line if line.startswith("## ") else line for line in tables.splitlines()[1:]],
        "",
        "## Speed and memory (`python tools/benchmark.py`)",
        "",
        (OUT / "benchmark.md").read_text() if (OUT / "benchmark.md").exists() else "not measured",
        "",
    ]
    (OUT / "report.md").write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {OUT / 'report.md'}")


if __name__ == "__main__":
    main()
