"""Publish the attack report of the bundled model under docs/reports/attack/ (or of another model, to --out).

    python research/tools/make_attack_report.py [--data ../shared/data/harvard] [--limit 6] [--forge-steps 1000]
                                       [-m MODEL -k KEY --out FOLDER]

Runs every `amif attack` family on the Harvard test split (the learned attacks train on its train
split; the Harvard images are research-use only, only aggregates of them are published), with
--figures also figures that show the bundled MNI-based sample put through each attack (about 1 MB:
left out of the published tree, which keeps the repository lean), then adds the threat model
and success curves (curves.png: learned removal against leaked pairs N; fine-tuning and training
from scratch against steps) to docs/reports/attack/report.md. The defaults take about 55 minutes on
2 CPU cores (two processes; forging, 6 restarts x 2 objectives, is one of them); the exact
`amif attack` command is written into the report. Key forging's verdict in the threat model comes
from the pooled table beside the report (forging-pooled.json, `research/tools/pool_forging.py`: more restarts
from runs with other seeds) when it pools this model and setting; after pooling more runs,

    python research/tools/make_attack_report.py --threat-model-only

rewrites the threat model from report.json and that table without running any attack.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "AMIFFusion"), str(ROOT / "research")]

from amif_research.attack import AttackOptions, forging_verdict, pool_setting  # noqa: E402
from amif_research.attack_suite import attack  # noqa: E402
from amif_research.data import default_data_dir  # noqa: E402

OUT = ROOT / "docs" / "reports" / "attack"
POOLED = "forging-pooled"  # research/tools/pool_forging.py's table beside the report: forging over more seeds

WHAT = {  # what each attack family stands for in the threat model
    "wrong-keys": "runs the package with any code they can guess or derive, or with no key",
    "classical": "post-processes unkeyed outputs with image processing (blur, JPEG, noise, rescaling, "
    "cropping, equalization, inpainting over the exact identifier mask)",
    "surgery": "edits one module or tensor of the released weights (zero, randomize, bypass)",
    "forging": "optimizes a continuous code against the released weights",
    "learned-removal": "trains a remover on leaked (unkeyed, keyed) output pairs",
    "distillation": "distils a student network from unkeyed outputs",
    "fine-tuning": "fine-tunes the released weights with the fusion loss and no key",
}


def with_pooled_forging(doc: dict, pooled: dict | None) -> dict:
    """`doc` with its forging verdict taken from a table pooled over more seeds (the JSON of
    research/tools/pool_forging.py) when that table is of this report's model and setting: met when every objective's
    pooled 95% bound is below the goal, not shown when no pooled restart succeeded but some bound is not."""
    att = doc["attacks"]
    if not pooled or "forging" not in att or pooled.get("setting") != pool_setting(doc):
        return doc
    rows = pooled["pooled"]
    met, undecided = forging_verdict(rows)
    counts = "; ".join(
        f"{r['variant']}: {r['successes']}/{r['restarts']} (rate at most {100 * r['rate_upper_95']:.2f}%)" for r in rows
    )
    where = f"pooled with the runs of other seeds in [{POOLED}.md]({POOLED}.md)"
    forging = {
        **att["forging"],
        "met": met,
        "undecided": undecided,
        "summary": f"{att['forging']['summary']}; {where}: {counts}",
    }
    return {**doc, "attacks": {**att, "forging": forging}}


def threat_model(doc: dict, pooled: dict | None = None) -> str:
    """Which attackers the measured numbers stop, which they do not, and where too few trials tell neither,
    from the report's own 'met' and 'undecided' (forging's from `pooled`, when it pools this setting)."""
    doc = with_pooled_forging(doc, pooled)
    att, shift = doc["attacks"], doc.get("shift", 0)
    what = dict(WHAT)
    if shift:  # a model whose unkeyed outputs also move: classical removal includes moving them back
        what["classical"] = what["classical"][:-1] + f", and moving the image back by the manifest's {shift} px shift)"
    lines = {k: f"* {what[k]} ({att[k]['title']}: {att[k]['summary']})" for k in what if k in att}
    held = [line for k, line in lines.items() if att[k]["met"]]
    open_ = [line for k, line in lines.items() if not att[k]["met"] and att[k].get("undecided")]
    broke = [line for k, line in lines.items() if not att[k]["met"] and not att[k].get("undecided")]
    undo = " an attacker who moves unkeyed outputs back before distilling or training a remover;" if shift else ""
    return "\n".join(
        [
            "## Threat model: what these numbers support",
            "",
            "Attacker: anyone holding the released package (weights and manifest) but not the owner's key file. "
            "The protection is a visible provenance mark and a deterrent, not access control.",
            "",
            "**Measured to stop** (target met at the scale measured) an attacker who:",
            "",
            *(held or ["* (none)"]),
            "",
            *(
                [
                    "**Not shown either way** (no attempt succeeded, but too few attempts to bound the success rate below "
                    "the target) for an attacker who:",
                    "",
                    *open_,
                    "",
                ]
                if open_
                else []
            ),
            "**Measured not to stop** an attacker who:",
            "",
            *(broke or ["* (none)"]),
            "",
            "**Not covered by these numbers:** attackers with the owner's key or its secret; combinations of "
            f"attacks;{undo} other architectures for the remover and the students; budgets above the counts in the "
            "command (the issue's full scale is 10,000 random codes, 1,000-step forging, and training runs longer "
            "than the CPU allowed here where the tables say so). A rate from a few trials is bounded, not "
            "known: the forging rows give the 95% upper bound their restarts support.",
            "",
        ]
    )


def curves(doc: dict, path: Path) -> bool:
    """Learned removal (flagged, PSNR vs N) and fine-tuning vs scratch (flagged, PSNR vs steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    att = doc["attacks"]
    panels = [k for k in ("learned-removal", "fine-tuning") if k in att]
    if not panels:
        return False
    fig, axes = plt.subplots(1, 2 * len(panels), figsize=(4.2 * 2 * len(panels), 3.4))
    q = doc["options"]["quality_db"]
    i = 0
    if "learned-removal" in att:
        rows = att["learned-removal"]["rows"]
        n = [r["images"] for r in rows]
        axes[i].plot(n, [100 * r["flagged"] for r in rows], "o-", label="flagged")
        axes[i].plot(n, [100 * r["broken"] for r in rows], "s--", label="unflagged at keyed quality")
        axes[i].set(
            xscale="log",
            xlabel="leaked (unkeyed, keyed) pairs N",
            ylabel="% of outputs",
            ylim=(-5, 105),
            title="Learned removal",
        )
        axes[i].legend(fontsize=8)
        axes[i + 1].plot(n, [r["psnr_mean"] for r in rows], "o-", label="remover output")
        axes[i + 1].axhline(rows[0]["psnr_before"], color="grey", ls=":", label="unkeyed output (before)")
        axes[i + 1].axhline(q, color="red", ls="--", lw=0.8, label=f"keyed quality ({q:g} dB)")
        axes[i + 1].set(xscale="log", xlabel="leaked pairs N", ylabel="PSNR to keyed (dB)", title="Learned removal")
        axes[i + 1].legend(fontsize=8)
        i += 2
    if "fine-tuning" in att:
        for r in att["fine-tuning"]["rows"]:
            for start, style in (("fine_tuned", "-"), ("scratch", ":")):
                ev = r[start]["evals"]
                steps = [max(e["step"], 1) for e in ev]
                label = f"{'released' if start == 'fine_tuned' else 'scratch'}, N={r['images']}"
                if start == "fine_tuned":
                    axes[i].plot(steps, [100 * e["flagged"] for e in ev], style, marker="o", ms=3, label=label)
                axes[i + 1].plot(steps, [e["psnr_mean"] for e in ev], style, marker="o", ms=3, label=label)
        axes[i].set(
            xscale="log",
            xlabel="fine-tuning steps (0 shown at 1)",
            ylabel="% flagged",
            ylim=(-5, 105),
            title="Fine-tuning the released weights",
        )
        axes[i + 1].axhline(q, color="red", ls="--", lw=0.8)
        axes[i + 1].set(
            xscale="log", xlabel="steps (0 shown at 1)", ylabel="PSNR to keyed (dB)", title="Fine-tuned vs from scratch"
        )
        for ax in axes[i : i + 2]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# The published report's families, in two processes of one core each; forging, the longest at the defaults,
# runs alone (run times: docs/security.md). Input transforms and reslicing have a report of their own.
GROUPS = (("wrong-keys", "classical", "surgery", "fine-tuning", "learned-removal", "distillation"), ("forging",))


def doc_figures():
    """research/tools/make_doc_figures.py, which draws the published figures from the reports' JSON."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_doc_figures", Path(__file__).with_name("make_doc_figures.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_pooled(out: Path) -> dict | None:
    f = out / f"{POOLED}.json"
    return json.loads(f.read_text(encoding="utf-8")) if f.exists() else None


def put_threat_model(text: str, model: str) -> str:
    """The report's Markdown with its threat model section replaced by `model`."""
    start = text.index("## Threat model")
    ends = [text.find(s, start) for s in ("\n![Success curves", "\nRegenerate: `python tools/make_attack_report")]
    return text[:start] + model + text[min(i for i in ends if i >= 0) :]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-m", "--model", help="model package (default: the bundled model)")
    p.add_argument("-k", "--key", help="its owner's key file (default: the bundled model's)")
    p.add_argument("--data", type=Path, default=default_data_dir())
    p.add_argument("--limit", type=int, default=6, help="attacked test pairs per pair type")
    p.add_argument("--forge-steps", type=int, default=1000)
    p.add_argument("--forge-restarts", type=int, default=6)
    p.add_argument("--forge-images", type=int, default=2)
    p.add_argument("--learn-steps", type=int, default=300)
    p.add_argument("--learn-batch", type=int, default=4)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument(
        "--figures",
        action="store_true",
        help="also write each attack's figure of the bundled sample (report-figures/, not published)",
    )
    p.add_argument(
        "--threat-model-only",
        action="store_true",
        help="run no attack: rewrite the threat model of the report in --out from its JSON and the "
        f"pooled forging table beside it ({POOLED}.json), after more forging runs were pooled",
    )
    args = p.parse_args(argv)
    report = args.out / "report.md"
    if args.threat_model_only:
        doc = json.loads(report.with_suffix(".json").read_text(encoding="utf-8"))
        model = threat_model(doc, read_pooled(args.out))
        report.write_text(put_threat_model(report.read_text(encoding="utf-8"), model), encoding="utf-8")
        print(f"rewrote the threat model of {report}")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    opts = AttackOptions(
        forge_steps=args.forge_steps,
        forge_restarts=args.forge_restarts,
        forge_images=args.forge_images,
        learn_steps=args.learn_steps,
        learn_batch=args.learn_batch,
    ).check()
    attack(
        args.model,
        args.key,
        data=args.data,
        limit=args.limit,
        attacks=[n for g in GROUPS for n in g],
        out=report,
        opts=opts,
        figures=args.figures,
        show_sample=True,
        groups=GROUPS,
    )

    def portable(t: str) -> str:  # no paths of this machine in published files
        return t.replace(str(args.data), "../shared/data/harvard").replace(str(ROOT) + "/", "")

    js = report.with_suffix(".json")
    js.write_text(portable(js.read_text(encoding="utf-8")), encoding="utf-8")
    doc = json.loads(js.read_text(encoding="utf-8"))
    text = portable(report.read_text(encoding="utf-8"))
    extra = threat_model(doc, read_pooled(args.out))
    if doc_figures().draw("attack/curves.png", js.read_bytes(), args.out / "curves.png"):  # curves() from the JSON
        extra += "\n![Success curves: learned removal against N, fine-tuning against steps](curves.png)\n"
    named = "".join(
        f"--{k} {portable(str(Path(v).resolve()))} "
        for k, v in (("model", args.model), ("key", args.key), ("out", args.out))
        if v and v != OUT
    )
    extra += (
        f"\nRegenerate: `python research/tools/make_attack_report.py {named}--limit {args.limit} --forge-steps "
        f"{args.forge_steps} --forge-restarts {args.forge_restarts} --forge-images {args.forge_images} "
        f"--learn-steps {args.learn_steps} --learn-batch {args.learn_batch}` (two processes, one CPU core "
        "each; the `amif attack` command above gives the same tables in one process).\n\n"
    )
    head, rest = text.split("## Summary", 1)
    report.write_text(head + extra + "## Summary" + rest, encoding="utf-8")
    print(f"wrote {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
