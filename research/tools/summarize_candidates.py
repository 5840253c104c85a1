"""Summarize the candidate models and superseded forging tables that left the tracked tree.

    python research/tools/summarize_candidates.py [--rev HEAD] [-o docs/reports/candidates.json]

The candidate models that preceded the bundled one (Resources/Candidates/: weights, manifests, per-candidate
evaluation, trace-check, attack and forging reports, and its README, the lab notebook) and the pooled
forging tables of models bundled before the current one (docs/reports/attack/forging-pooled-*.json)
are no longer in the tree. This reads them from the repository's history and writes, for each, the
commit that holds it, the paths of its files there (`git show COMMIT:PATH` retrieves each; `git
checkout COMMIT -- FOLDER` restores a folder), its weights' SHA-256 and training record, and the
headline numbers of its own JSON reports. The same history gives the same file (sorted keys, fixed
rounding), written atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "reports" / "candidates.json"
FOLDER = "Resources/Candidates"
NOTEBOOK = f"{FOLDER}/README.md"
# (name, folder, manifest) of each candidate: amif-trace-005's files lie at the folder's top
CANDIDATES = (
    ("amif-trace-005", FOLDER, "amif-trace-005.json"),
    ("amif-trace-fm2", f"{FOLDER}/amif-trace-fm2", "amif-trace-fm2.json"),
    ("amif-trace-decoy", f"{FOLDER}/amif-trace-decoy", "amif-trace-decoy.json"),
    ("amif-trace-anchor", f"{FOLDER}/amif-trace-anchor", "amif-trace-anchor.json"),
    ("amif-trace-s08", f"{FOLDER}/amif-trace-s08", "amif-trace-s08.json"),
    ("amif-trace-s10", f"{FOLDER}/amif-trace-s10", "amif-trace-s10.json"),
)
TWINS = (f"{FOLDER}/twins-20200/amif-twin-s0.json", f"{FOLDER}/twins-20200/amif-twin-s1.json")
# the published reports of models bundled before the current one, which the candidates were compared against:
# (name, commit, path) at a commit that holds them (history does not change)
SUPERSEDED_REPORTS = (
    (
        "attack report of the 19,200-step model",
        "4fedcaf9a4eee7d3c2f041eb7a792e29a1703263",
        "Resources/attack/report.json",
    ),
    (
        "attack report of amif-trace-anchor, bundled in sessions 50-54",
        "9da7ddd7e59fe04cc7d8178afa1d115f7d46b64d",
        "Resources/attack/report.json",
    ),
    (
        "classical removal on the 72 test pairs, amif-trace-anchor",
        "9da7ddd7e59fe04cc7d8178afa1d115f7d46b64d",
        "Resources/attack/classical-72/test.json",
    ),
)
POOLS = (
    "docs/reports/attack/forging-pooled-18900.json",
    "docs/reports/attack/forging-pooled-19200.json",
    "docs/reports/attack/forging-pooled-anchor.json",
)
TWIN_BUDGET = 0.98  # keyed within 2% of the twins' mean (or above)
NDIGITS = 4


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout


def holding_commit(path: str, rev: str) -> str:
    """The last commit at or before REV whose tree holds PATH: REV itself, or the parent of the commit that
    removed it."""
    if subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{rev}:{path}"], capture_output=True).returncode == 0:
        return git("rev-parse", rev).strip()
    removed = git("log", "-1", "--format=%H", "--diff-filter=D", rev, "--", path).strip()
    if not removed:
        raise SystemExit(f"{path} is in no commit before {rev}")
    return git("rev-parse", f"{removed}^").strip()


def r(x):
    """Numbers rounded to NDIGITS decimals, recursively (ints and strings as they are)."""
    if isinstance(x, float):
        return round(x, NDIGITS)
    if isinstance(x, list):
        return [r(v) for v in x]
    if isinstance(x, dict):
        return {k: r(v) for k, v in x.items()}
    return x


class Tree:
    """Files of one commit, read with `git show`; remembers which were read."""

    def __init__(self, commit: str):
        self.commit, self.read = commit, []

    def has(self, path: str) -> bool:
        return (
            subprocess.run(
                ["git", "-C", str(ROOT), "cat-file", "-e", f"{self.commit}:{path}"], capture_output=True
            ).returncode
            == 0
        )

    def json(self, path: str) -> dict:
        self.read.append(path)
        return json.loads(git("show", f"{self.commit}:{path}"))

    def listing(self, folder: str) -> list[str]:
        return sorted(git("ls-tree", "-r", "--name-only", self.commit, "--", folder + "/").split())


def training_record(manifest: dict) -> dict:
    """The last training run's settings (without the data description and the chain of earlier runs), and the
    weights it started from."""
    t = manifest["training"]
    out = {k: v for k, v in t.items() if k not in ("init", "data", "averaged")}
    if "init" in t:
        out["init_weights_sha256"] = t["init"]["weights_sha256"]
        out["init_steps"] = t["init"]["training"]["steps"]
    return out


def evaluation_summary(doc: dict) -> dict:
    """Fusion against the twins: per pair type each metric's keyed/twins-mean ratio, how many are within the
    2% budget, the wins against the max rule; and the means of keyed, unkeyed and twin outputs (the baselines'
    are the published evaluation's: the same test split)."""
    rows, names, twins = doc["rows"], doc["metrics"], list(doc["twins"])
    win = [names.index(m) for m in doc["win_metrics"]]
    kinds, within = {}, 0
    for kind, row in rows["AMIF keyed"].items():
        keyed = row["mean"]
        mean = [sum(rows[t][kind]["mean"][i] for t in twins) / len(twins) for i in range(len(names))]
        ratio = [k / m for k, m in zip(keyed, mean)]
        n = sum(x >= TWIN_BUDGET for x in ratio)
        within += n
        worst = min(range(len(names)), key=ratio.__getitem__)
        kinds[kind] = {
            "within_budget": n,
            "ratio_to_twins": dict(zip(names, ratio)),
            "worst": [names[worst], ratio[worst]],
            "wins_vs_max": sum(keyed[i] >= rows["max"][kind]["mean"][i] for i in win),
            "pairs": row["n"],
        }
    return {
        "split": doc["split"],
        "metrics": names,
        "win_metrics": doc["win_metrics"],
        "within_budget": within,
        "of": len(names) * len(kinds),
        "budget": TWIN_BUDGET,
        "by_type": kinds,
        "model_weights_sha256": [m["weights_sha256"] for m in doc["models"]],
        "twins_weights_sha256": {t: v["weights_sha256"] for t, v in doc["twins"].items()},
        "means": {
            row: {kind: v["mean"] for kind, v in by_kind.items()}
            for row, by_kind in rows.items()
            if row.startswith(("AMIF", "twin"))
        },
    }


def calibration_summary(doc: dict) -> dict:
    """The trace check: for each group, the highest and lowest score and the share above the threshold."""
    th, spread = doc["threshold"], doc.get("null_spread", {})
    below = doc["groups"]["must stay below"]
    margins = [(th - x) / sd for g, sds in spread.items() if g in below for x, sd in zip(below[g], sds) if sd > 0]
    return {
        "threshold": th,
        "pairs": doc["pairs"],
        "split": doc["split"],
        "weights_sha256": doc["weights_sha256"],
        **({"null_margin_in_spreads_min": min(margins)} if margins else {}),
        "groups": {
            g: {
                name: {"min": min(s), "max": max(s), "above": sum(x > th for x in s) / len(s)}
                for name, s in scores.items()
            }
            for g, scores in doc["groups"].items()
        },
    }


def forging_rows(doc: dict) -> list[dict]:
    keep = ("variant", "detector_weight", "restarts", "successes", "steps_to_success", "rate_upper_95")
    out = []
    for v in doc["attacks"]["forging"]["rows"]:
        finals = [run["final"] for run in v["runs"]]
        everywhere = [run["all_pairs"] for run in v["runs"] if run.get("all_pairs")]
        cosines = [run["key_embedding_cosine"][-1] for run in v["runs"] if run.get("key_embedding_cosine")]
        out.append(
            {
                **{k: v[k] for k in keep},
                "final_flagged": [min(f["flagged"] for f in finals), max(f["flagged"] for f in finals)],
                "final_psnr": [min(f["psnr_mean"] for f in finals), max(f["psnr_mean"] for f in finals)],
                "final_psnr_max": max(f.get("psnr_max", f["psnr_mean"]) for f in finals),
                "best_psnr_unflagged": max(
                    (run["best_psnr_unflagged"] for run in v["runs"] if run.get("best_psnr_unflagged") is not None),
                    default=None,
                ),
                **(
                    {
                        "all_pairs_flagged": [
                            min(a["flagged"] for a in everywhere),
                            max(a["flagged"] for a in everywhere),
                        ],
                        "all_pairs_psnr": [
                            min(a["psnr_mean"] for a in everywhere),
                            max(a["psnr_mean"] for a in everywhere),
                        ],
                        "all_pairs_psnr_max": max(a["psnr_max"] for a in everywhere),
                        "all_pairs_score_min": min(a["score_min"] for a in everywhere),
                    }
                    if everywhere
                    else {}
                ),
                **({"final_key_embedding_cosine": [min(cosines), max(cosines)]} if cosines else {}),
            }
        )
    return out


def attack_summary(doc: dict) -> dict:
    """An `amif attack` report: its setting, each family's verdict and summary, and the rows the candidates were
    compared on (classical settings, students, learned removal, fine-tuning, forging)."""
    out = {
        "weights_sha256": doc["weights_sha256"],
        "split": doc["split"],
        "pairs": doc["pairs"],
        "seed": doc["options"]["seed"],
        "families": {},
    }
    for name, fam in doc["attacks"].items():
        entry = {"met": fam["met"], "undecided": fam.get("undecided", False), "summary": fam["summary"]}
        rows = fam["rows"]
        if name == "classical":
            entry["met_settings"] = [sum(x["met"] for x in rows), len(rows)]
            entry["rows"] = [
                {
                    "attack": x["attack"],
                    "setting": x["setting"],
                    "met": x["met"],
                    "flagged_after": x["flagged_after"],
                    "traced_after": x.get("traced_after"),
                    "psnr_before": x["psnr_before"],
                    "psnr_after": x["psnr_after"],
                }
                for x in rows
            ]
        elif name == "distillation":
            entry["rows"] = [
                {
                    "student": x["student"],
                    "flagged": x["flagged"],
                    "traced": x.get("traced"),
                    "psnr_mean": x["psnr_mean"],
                }
                for x in rows
            ]
        elif name == "learned-removal":
            entry["rows"] = [
                {
                    "images": x["images"],
                    "flagged": x["flagged"],
                    "broken": x["broken"],
                    "psnr_mean": x["psnr_mean"],
                    "psnr_max": x["psnr_max"],
                }
                for x in rows
            ]
        elif name == "fine-tuning":
            entry["rows"] = [
                {
                    "images": x["images"],
                    "success_step": x["fine_tuned"].get("success_step"),
                    "scratch_success_step": x["scratch"].get("success_step"),
                }
                for x in rows
            ]
        elif name == "forging":
            entry["rows"] = forging_rows(doc)
        elif name == "wrong-keys":
            entry["rows"] = [{"codes": x["codes"], "n": x["n"], "flagged": x["flagged"]} for x in rows]
        elif name == "surgery":
            entry["edits"] = len(rows)
            entry["broken_on_half"] = sum(x["broken"] >= doc["success_share"] for x in rows)
        out["families"][name] = entry
    return out


def pooled_summary(doc: dict) -> dict:
    keep = (
        "variant",
        "detector_weight",
        "restarts",
        "successes",
        "rate_upper_95",
        "seeds",
        "final_flagged_min",
        "final_psnr_range",
        "steps_to_success",
    )
    return {
        "setting": doc["setting"],
        "runs": [{k: run[k] for k in ("seed", "objectives", "successes")} for run in doc["runs"]],
        "pooled": [{k: row[k] for k in keep if k in row} for row in doc["pooled"]],
    }


def candidate(name: str, folder: str, manifest_name: str, rev: str) -> dict:
    manifest_path = f"{folder}/{manifest_name}"
    tree = Tree(holding_commit(manifest_path, rev))
    manifest = tree.json(manifest_path)
    files = tree.listing(folder)
    if folder == FOLDER:  # amif-trace-005: the folder's top files and its attack report
        files = [
            f for f in tree.listing(FOLDER) if f.count("/") == FOLDER.count("/") + 1 and not f.endswith("README.md")
        ] + tree.listing(f"{FOLDER}/attack")
    entry = {
        "name": name,
        "commit": tree.commit,
        "folder": folder,
        "manifest": manifest_path,
        "weights": f"{folder}/{manifest['weights']}",
        "weights_sha256": manifest["weights_sha256"],
        "model_id": manifest["model_id"],
        "key_id": manifest["key_id"],
        "verify": manifest["verify"],
        "training": training_record(manifest),
        "files": files,
    }
    evaluation = f"{folder}/evaluation.json"
    entry["evaluation"] = evaluation_summary(tree.json(evaluation))
    entry["calibration"] = calibration_summary(tree.json(f"{folder}/calibration.json"))
    if tree.has(f"{folder}/attack/report.json"):
        entry["attack"] = attack_summary(tree.json(f"{folder}/attack/report.json"))
    if tree.has(f"{folder}/forging-pooled.json"):
        entry["forging_pooled"] = pooled_summary(tree.json(f"{folder}/forging-pooled.json"))
    runs = sorted(f for f in files if f.rsplit("/", 1)[-1].startswith("forging-s") and f.endswith(".json"))
    if runs:
        entry["forging_runs"] = {f.rsplit("/", 1)[-1][:-5]: forging_rows(tree.json(f)) for f in runs}
    for split in ("test", "train"):
        path = f"{folder}/classical-72/{split}.json"
        if tree.has(path):
            doc = tree.json(path)
            entry.setdefault("classical_72", {})[split] = {
                "pairs": doc["pairs"],
                **attack_summary(doc)["families"]["classical"],
            }
    for path in tree.read:  # every number above is of these weights
        doc = json.loads(git("show", f"{tree.commit}:{path}"))
        sha = doc.get("weights_sha256") or doc.get("setting", {}).get("weights_sha256")
        if path != manifest_path and path != evaluation and sha != manifest["weights_sha256"]:
            raise SystemExit(f"{tree.commit}:{path} measured {sha}, not {name}'s weights")
    return entry


def twin(path: str, rev: str) -> dict:
    tree = Tree(holding_commit(path, rev))
    manifest = tree.json(path)
    folder = path.rsplit("/", 1)[0]
    return {
        "name": manifest["model_id"],
        "commit": tree.commit,
        "manifest": path,
        "weights": f"{folder}/{manifest['weights']}",
        "weights_sha256": manifest["weights_sha256"],
        "training": training_record(manifest),
    }


def pool(path: str, rev: str) -> dict:
    tree = Tree(holding_commit(path, rev))
    md = path[:-5] + ".md"
    return {
        "name": path.rsplit("/", 1)[-1][:-5],
        "commit": tree.commit,
        "path": path,
        "files": [path] + ([md] if tree.has(md) else []),
        **pooled_summary(tree.json(path)),
    }


def superseded_report(name: str, commit: str, path: str) -> dict:
    doc = Tree(commit).json(path)
    return {"name": name, "commit": commit, "path": path, "model_id": doc["model_id"], **attack_summary(doc)}


def summary(rev: str = "HEAD") -> dict:
    notebook = holding_commit(NOTEBOOK, rev)
    return r(
        {
            "about": "Candidate models and superseded pooled forging tables removed from the tracked tree: "
            "`git show COMMIT:PATH` retrieves each file listed. Written by "
            "research/tools/summarize_candidates.py from the repository's history.",
            "notebook": {"commit": notebook, "path": NOTEBOOK},
            "candidates": [candidate(*c, rev) for c in CANDIDATES],
            "twins": [twin(t, rev) for t in TWINS],
            "superseded_pools": [pool(p, rev) for p in POOLS],
            "superseded_reports": [superseded_report(*x) for x in SUPERSEDED_REPORTS],
        }
    )


def dumps(doc: dict) -> str:
    """Indented JSON with sorted keys; each list of plain values, then each object of plain values and such lists,
    on one line (less than half the size, still diffable)."""
    text = json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False)
    flat = re.sub(
        r"\[\n\s*((?:[^\[\]{}\n]+,\n\s*)*[^\[\]{}\n]+)\n\s*\]",
        lambda m: "[" + re.sub(r",\n\s*", ", ", m.group(1)) + "]",
        text,
    )
    flat = re.sub(
        r"\{\n\s*((?:[^{}\n]+,\n\s*)*[^{}\n]+)\n\s*\}", lambda m: "{" + re.sub(r",\n\s*", ", ", m.group(1)) + "}", flat
    )
    assert json.loads(flat) == json.loads(text)
    return flat + "\n"


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rev", default="HEAD", help="read the history from this commit back (default HEAD)")
    p.add_argument("-o", "--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    write_atomic(args.out, dumps(summary(args.rev)))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
