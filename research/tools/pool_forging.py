"""Pool the key-forging restarts of several `amif attack` runs into one table with its bound.

    python research/tools/pool_forging.py RUN.json [RUN.json ...] [-o docs/reports/attack/forging-pooled.md]
    python research/tools/pool_forging.py --add-to docs/reports/attack/forging-pooled.json NEW.json [...]

One run of the attack report has a few forging restarts, which bound the success rate only loosely
(with no success, 59 restarts are needed to show a rate below 5% at 95%). More restarts come from
runs with other seeds (`amif attack --attacks forging --seed N`, each seed draws other starting
codes); this pools them (`amif_research.attack.pool_forging`: same model, pairs and budget; each restart
counted once) and writes a Markdown table, with the command of every run, and a JSON beside it.
With --add-to, the new runs are added to a table pooled before (its JSON), whose runs need not be at hand.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "AMIFFusion"), str(ROOT / "research")]

from amif_research.attack import FORGING_GOAL, pct, pool_forging, pool_setting  # noqa: E402

OUT = ROOT / "docs" / "reports" / "attack" / "forging-pooled.md"


def bound(x: float) -> str:
    """The upper bound with two decimals: 0/59 gives 4.95%, which one decimal would round up to 5.0%."""
    return f"{100 * x:.2f}%"


def run_command(doc: dict) -> str:
    """The run's recorded `amif attack` command without its data folder and output (machine paths)."""
    words, keep, skip = shlex.split(doc["command"]), [], False
    for w in words:
        if skip or w in ("--data", "-o", "--output"):
            skip = not skip
            continue
        keep.append(w)
    return shlex.join(keep)


def run_summary(doc: dict) -> dict:
    """One run's line of the table: its command, seed and successes per objective."""
    v = doc["attacks"]["forging"]["rows"]
    return {
        "command": run_command(doc),
        "seed": doc["options"]["seed"],
        "objectives": [x["variant"] for x in v],
        "successes": [f"{x['successes']}/{x['restarts']}" for x in v],
    }


def markdown(setting: dict, runs: list[dict], rows: list[dict]) -> str:
    lines = [
        "# Key forging, pooled over runs",
        "",
        f"Model `{setting['model_id']}` (weights SHA-256 `{str(setting.get('weights_sha256'))[:12]}…`); "
        f"{setting['pairs']} attacked pairs of the {setting['split']} split, Adam on a continuous "
        f"256-value code for {setting['forge_steps']:,} steps per restart on {setting['forge_images']} of them. "
        f"A restart succeeds when at least {setting['success_share']:.0%} of its images are unflagged with PSNR >= "
        f"{setting['quality_db']:g} dB to the keyed output. Each restart is counted once (its run's seed and index fix "
        "its starting code). 'At most' is the one-sided 95% Clopper-Pearson upper bound on the rate; a rate below 5% "
        "is shown when the bound is.",
        "",
        "| objective | learning rate | restarts | successes (rate; 95% upper bound) | steps to success "
        "| rate < 5% shown | seeds | final outputs flagged (lowest) | final PSNR to keyed (dB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = r["final_psnr_range"]
        lines.append(
            f"| {r['variant']} | {r['forge_lr']:g} | {r['restarts']} | {r['successes']}/{r['restarts']} "
            f"({pct(r['success_rate'])}; at most {bound(r['rate_upper_95'])}) | "
            f"{', '.join(map(str, r['steps_to_success'])) or '—'} | "
            f"{'yes' if r['rate_upper_95'] < FORGING_GOAL else 'no'} | {seed_ranges(r['seeds'])} | "
            f"{pct(r['final_flagged_min'])} | {lo:.1f}–{hi:.1f} |"
        )
    lines += ["", "## Runs", "", "| run | objectives | successes | command |", "|---|---|---|---|"]
    for i, d in enumerate(runs, 1):
        lines.append(f"| {i} | {'; '.join(d['objectives'])} | {'; '.join(d['successes'])} | `{d['command']}` |")
    lines += [
        "",
        "Regenerate: run the commands above (`--data` as for the attack report), then "
        "`python research/tools/pool_forging.py RUN.json ...` over their JSON files; or add new runs to this "
        "table with `python research/tools/pool_forging.py --add-to TABLE.json NEW.json ...`, TABLE.json being "
        "the JSON beside this file.",
        "",
    ]
    return "\n".join(lines)


def seed_ranges(seeds: list[int]) -> str:
    """0, 1, 2, 3, 5 -> '0–3, 5'."""
    out, start = [], None
    for i, s in enumerate(seeds):
        start = s if start is None else start
        if i + 1 == len(seeds) or seeds[i + 1] != s + 1:
            out.append(str(s) if s == start else f"{start}–{s}")
            start = None
    return ", ".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="*", type=Path, help="JSON files written by `amif attack` (forging among them)")
    p.add_argument("--add-to", type=Path, help="the JSON of a table pooled before, to add these runs to")
    p.add_argument("-o", "--output", type=Path, default=OUT, help="Markdown (+ .json beside it)")
    args = p.parse_args(argv)
    try:
        docs = [json.loads(f.read_text()) for f in args.runs]
        docs = [d for d in docs if "forging" in d.get("attacks", {})]
        earlier = json.loads(args.add_to.read_text()) if args.add_to else None
        rows = pool_forging(docs, earlier)
        setting = earlier["setting"] if earlier else pool_setting(docs[0])
        runs = list(earlier["runs"]) if earlier else []
        for d in map(run_summary, docs):
            if d not in runs:
                runs.append(d)
    except (OSError, ValueError, KeyError, TypeError) as e:  # AMIFError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(markdown(setting, runs, rows))
    args.output.with_suffix(".json").write_text(
        json.dumps({"setting": setting, "runs": runs, "pooled": rows}, indent=1)
    )
    for r in rows:
        print(
            f"{r['variant']} (lr {r['forge_lr']:g}): {r['successes']}/{r['restarts']}, "
            f"rate at most {bound(r['rate_upper_95'])}"
        )
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
