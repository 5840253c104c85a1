"""Measure the engine issue's acceptance figures for a model package on the Harvard test split.

Prints, and writes as Markdown (+ a keyed/unkeyed figure) to --out:
  * verify flag rates: 1,000 random codes, 256 near-miss codes (1-16 flipped bits), no key,
    keyed outputs, and the source images;
  * per modality: Qabf, VIF, EN, SF of keyed outputs against the element-wise max rule on the
    same images (ratio keyed / max), computed by `amif evaluate` so they match the evaluation report;
  * single-module surgery (each module zeroed, no key).

    python research/tools/evaluate_engine.py [-m MODEL] [--data ../shared/data/harvard] [--out Resources/engine-eval]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "AMIFFusion"), str(ROOT / "research")]

from amif.keys import load_key  # noqa: E402
from amif.package import bundled_key_path, bundled_model_path, load_package, training_steps  # noqa: E402
from amif.verify import ERASED  # noqa: E402
from amif_research.attack import Measure, Target, code_trials, run_edit, surgery_edit, surgery_targets  # noqa: E402
from amif_research.data import default_data_dir, list_pairs, load_pairs  # noqa: E402
from amif_research.evaluate import evaluate  # noqa: E402


def surgery(target: Target):
    """Zero each module (to one dot deep) and the memory grid alone, and run without a key: the zero
    edits of amif_research.attack's white-box surgery (`amif attack --attacks surgery` runs them all)."""
    net = target.net
    state = {k: v.detach() for k, v in net.named_parameters()}
    targets = [("memory.spatial (grid only)", ["memory.spatial"])]
    targets += [(name, names) for name, _, names in surgery_targets(net, max_depth=1, tensors=False)]
    results = []
    for name, names in targets:
        _, edit = surgery_edit(net, names, "zero", state, None)
        m, _ = run_edit(target, edit)
        results.append((name, m.flagged, float(m.psnr.mean())))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default=str(bundled_model_path()))
    ap.add_argument("-k", "--key", default=str(bundled_key_path()))
    ap.add_argument("--data", default=str(default_data_dir()))
    ap.add_argument("--random", type=int, default=1000)
    ap.add_argument("--near", type=int, default=256)
    ap.add_argument("--report", default=str(ROOT / "Resources" / "engine-eval.md"))
    ap.add_argument(
        "--figure",
        default=str(ROOT / "out" / "engine-eval-keyed-vs-unkeyed.png"),
        help="local only: it shows Harvard images, which must never be committed",
    )
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    pkg = load_package(args.model)
    code = load_key(args.key).code()
    pairs = list_pairs(args.data, "test")
    a8, b8 = load_pairs(pairs)
    a, b = a8.astype(np.float32) / 255, b8.astype(np.float32) / 255
    thr = pkg.threshold
    rng = np.random.default_rng(1234)
    attacked = Target(pkg, code, a, b, [p.kind for p in pairs])
    keyed, nokey = attacked.keyed, attacked.unkeyed

    rand_codes = rng.choice([-1.0, 1.0], size=(args.random, 256)).astype(np.float32)
    near_codes = np.repeat(code[None], args.near, 0)
    for i in range(args.near):
        near_codes[i, rng.choice(256, 1 + i % 16, replace=False)] *= -1
    s_rand, s_near = code_trials(attacked, rand_codes), code_trials(attacked, near_codes)  # one image per code
    s_none, s_key = Measure.of(attacked, nokey), Measure.of(attacked, keyed)
    both = attacked.subset([*range(len(pairs))] * 2)  # each source image checked against its own pair
    s_src = Measure.of(both, np.concatenate([a, b]), np.concatenate([keyed, keyed]))

    lines = [
        "# Engine acceptance figures",
        "",
        f"Model `{pkg.model_id}` ({training_steps(pkg.manifest)}), "
        f"Harvard **test** split ({len(pairs)} pairs), verify threshold {thr:.3f}. Flagged: identifier score "
        f">= threshold, or erasure ratio < {ERASED} (the strokes wiped off"
        + (
            f"), or the content moved by at least half the mark shift ({pkg.shift} px) against the pair's sources ("
            if pkg.shift
            else "; "
        )
        + "`amif.verify`).",
        "",
        "| outputs | n | flagged | median score | target |",
        "|---|---|---|---|---|",
    ]
    for name, s, target in [
        ("random codes", s_rand, "100%"),
        ("near-miss codes (1-16 bits)", s_near, "100%"),
        ("no key (zero code)", s_none, "100%"),
        ("keyed (owner's key)", s_key, "<= 1%"),
        ("source images (MRI and other)", s_src, "<= 1%"),
    ]:
        lines.append(f"| {name} | {len(s.scores)} | {100 * s.flagged:.1f}% | {np.median(s.scores):.3f} | {target} |")
    lines += [
        "",
        "Keyed outputs against the element-wise max rule, as in the evaluation report (`amif evaluate`: "
        "the fused luminance, PET/SPECT chroma restored, scored on grey 0-255):",
        "",
        "| modality | metric | keyed AMIF | max rule | ratio | target |",
        "|---|---|---|---|---|---|",
    ]
    targets = {"EN": "> 1", "SF": "> 1", "Qabf": ">= 0.97", "VIF": ">= 0.97"}
    with tempfile.TemporaryDirectory() as tmp:
        report = evaluate([args.model], args.data, "test", [args.key], out=Path(tmp) / "eval.md", figures=False)
        doc = json.loads(report.with_suffix(".json").read_text())
    for kind in ("CT", "PET", "SPECT"):
        for m in targets:
            am, mx = (doc["rows"][row][kind]["mean"][doc["metrics"].index(m)] for row in ("AMIF keyed", "max"))
            lines.append(f"| {kind} | {m} | {am:.4f} | {mx:.4f} | {am / mx:.3f} | {targets[m]} |")
    lines += [
        "",
        "Single-module surgery (white-box): each module's parameters zeroed in turn, no key, "
        "first 24 test pairs (mean PSNR over images). A clean result would be: not flagged and PSNR to the "
        "keyed output above 30 dB. `amif attack` runs every module and tensor, zeroed, randomized and bypassed.",
        "",
        "| zeroed module | flagged | PSNR to keyed (dB) |",
        "|---|---|---|",
    ]
    for name, frac, psnr in surgery(attacked.subset(range(min(24, len(pairs))))):
        lines.append(f"| {name} | {100 * frac:.0f}% | {psnr:.1f} |")
    from PIL import Image

    rows = []
    kinds = [p.kind for p in pairs]
    for kind in ("CT", "PET", "SPECT"):
        i = kinds.index(kind)
        rows.append(np.concatenate([a[i], b[i], keyed[i], nokey[i]], axis=1))
    fig = Path(args.figure)
    fig.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(np.concatenate(rows) * 255).astype(np.uint8)).save(fig)
    lines += [
        "",
        "The script also writes a keyed-vs-unkeyed figure (one CT, one PET, one SPECT test pair: "
        "MRI, second modality, keyed, no key) to `out/`; it shows Harvard images, so it is never "
        "committed. The committed figure in the README uses the bundled MNI-based sample instead.",
        "",
        "Regenerate: `python research/tools/evaluate_engine.py`",
    ]
    text = "\n".join(lines) + "\n"
    Path(args.report).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
