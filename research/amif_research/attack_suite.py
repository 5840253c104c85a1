"""The attack suite behind `amif attack`: the attack families by name, the target they run on, and the
Markdown and JSON reports."""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from amif.errors import AMIFError
from amif.files import atomic_output, write_text

from .attack import (
    KINDS,
    PSNR_CAP,
    SUCCESS_SHARE,
    AttackOptions,
    AttackResult,
    Measure,
    Target,
    classical_removal,
    db,
    key_forging,
    pct,
    surgery,
    u8,
    wrong_keys,
    yes_no,
)
from .attack_inputs import input_transforms, reslice


def _learned(name: str) -> Callable:
    """An attack of amif.attack_learned, imported when it runs."""

    def run(target: Target, opts: AttackOptions, progress: bool = True) -> AttackResult:
        from . import attack_learned

        return getattr(attack_learned, name)(target, opts, progress)

    run.__name__ = name
    return run


@dataclass(frozen=True)
class Attack:
    name: str
    title: str
    run: Callable  # (Target, AttackOptions, progress) -> AttackResult


ATTACKS = {
    a.name: a
    for a in (
        Attack("wrong-keys", "Wrong keys at scale", wrong_keys),
        Attack("classical", "Classical removal on unkeyed outputs", classical_removal),
        Attack("surgery", "White-box surgery", surgery),
        Attack("forging", "White-box key forging", key_forging),
        Attack(
            "learned-removal", "Learned removal (U-Net remover on N leaked output pairs)", _learned("learned_removal")
        ),
        Attack("distillation", "Distillation (students trained on the unkeyed outputs)", _learned("distillation")),
        Attack("fine-tuning", "White-box fine-tuning (released weights, fusion loss, no key)", _learned("fine_tuning")),
        Attack(
            "input-transforms", "Input transforms (queries on transformed inputs, undone and merged)", input_transforms
        ),
        Attack("reslice", "Reslicing volumes (axes permuted, fused, mapped back, median of 3 orientations)", reslice),
    )
}
LEARNED = ("learned-removal", "distillation", "fine-tuning")  # need the attacker's own pairs (Target.pool)


def parse_attacks(spec) -> list[str]:
    """'a,b' or a list of names -> the selected attacks in canonical order (all when empty)."""
    if spec is None or spec == "" or spec == []:
        return list(ATTACKS)
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    names = [s for s in names if s]
    if not names:
        raise AMIFError("No attack named; choose from: " + ", ".join(ATTACKS) + ".")
    for s in names:
        if s not in ATTACKS:
            raise AMIFError(f"Unknown attack {s!r}; choose from: {', '.join(ATTACKS)}.")
    return [n for n in ATTACKS if n in names]


def sample_show_pair(shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    """The bundled sample's MRI and PET at the demo's axial slice (amif.sample.sample_slices), resized
    to `shape`: a pair that figures may show whatever data was attacked."""
    import torch
    import torch.nn.functional as F

    from amif.sample import sample_slices

    out = []
    for sl in sample_slices():
        x = torch.from_numpy(sl.astype(np.float32))
        out.append(F.interpolate(x[None, None], size=tuple(shape), mode="bilinear", align_corners=False)[0, 0].numpy())
    return out[0], out[1]


def load_target(
    model=None,
    key=None,
    data=None,
    split: str = "test",
    limit: int | None = None,
    device: str = "cpu",
    pool: bool = False,
    show_sample: bool = False,
) -> tuple[Target, dict]:
    """The attacked package (default: the bundled one, with its public key), its owner's key and the pairs;
    with `pool`, the attacker's pairs (the train split); with `show_sample`, figures show the bundled sample."""
    from amif.keys import load_key
    from amif.package import bundled_key_path, bundled_model_path, load_package

    from .data import default_data_dir, list_pairs, load_pairs

    model_path = Path(model) if model else bundled_model_path()
    pkg = load_package(model_path)
    if pkg.manifest.get("twin"):
        raise AMIFError(f"Model '{pkg.model_id}' is an unprotected twin: there is no protection to attack.")
    if key is None:
        if model_path.resolve() != bundled_model_path().resolve():
            raise AMIFError("amif attack needs the model owner's key (-k KEY.amifkey) for the keyed reference outputs.")
        key = bundled_key_path()
    k = load_key(key)
    if (k.model_id, k.key_id) != (pkg.model_id, pkg.key_id):
        raise AMIFError(
            f"The key {Path(key).name} (model '{k.model_id}', key {k.key_id}) is not the owner's key of "
            f"model '{pkg.model_id}' (key {pkg.key_id})."
        )
    data = Path(data) if data else default_data_dir()
    pairs = list_pairs(data, split)
    if limit:
        pairs = [p for kind in KINDS for p in [q for q in pairs if q.kind == kind][:limit]]
    try:
        a8, b8 = load_pairs(pairs)
    except ValueError:
        raise AMIFError(f"The pairs under {data} differ in size; attacks need pairs of one size.") from None
    pool_ab = None
    if pool:
        try:
            own = list_pairs(data, "train")
        except AMIFError as e:
            raise AMIFError(f"The learned attacks train on the attacker's own pairs, the train split: {e}") from None
        try:
            pa8, pb8 = load_pairs(own)
        except ValueError:
            raise AMIFError(f"The train pairs under {data} differ in size; learned attacks need one size.") from None
        if pa8.shape[1:] != a8.shape[1:]:
            raise AMIFError(
                f"The train pairs ({pa8.shape[2]}x{pa8.shape[1]}) and the attacked pairs "
                f"({a8.shape[2]}x{a8.shape[1]}) differ in size."
            )
        pool_ab = (pa8.astype(np.float32) / 255, pb8.astype(np.float32) / 255)
    show = sample_show_pair(a8.shape[1:]) if show_sample else None
    t = Target(
        pkg,
        k.code(),
        a8.astype(np.float32) / 255,
        b8.astype(np.float32) / 255,
        [p.kind for p in pairs],
        [p.name for p in pairs],
        device,
        pool_ab,
        show,
    )
    t.owner_secret = k.secret  # for the owner's-secret-under-other-ids codes only; never written anywhere
    if pkg.trace_strength:  # the owner's check counts, as `verify --key` does
        from amif.trace import trace_weights

        t.trace = trace_weights(k.secret, k.model_id, pkg.dihedral)
    info = {
        "model_path": str(model_path),
        "key_path": str(key),
        "key_id": k.key_id,
        "data": str(data),
        "split": split,
        "pairs": len(pairs),
        "limit": limit,
        "attacker_pairs": len(pool_ab[0]) if pool else 0,
        "show_sample": show_sample,
    }
    return t, info


def command_line(info: dict, attacks: list, out, opts: AttackOptions, figures: bool) -> str:
    """The `amif attack` command that reproduces a run (options at their defaults left out)."""
    args = [
        "amif",
        "attack",
        "-m",
        info["model_path"],
        "-k",
        info["key_path"],
        "--data",
        info["data"],
        "--split",
        info["split"],
    ]
    if info.get("limit"):
        args += ["--limit", str(info["limit"])]
    if list(attacks) != list(ATTACKS):
        args += ["--attacks", ",".join(attacks)]
    defaults = AttackOptions()
    for f, v in asdict(opts).items():
        if v != getattr(defaults, f):
            args += [f"--{f.replace('_', '-')}"] + ([] if isinstance(v, bool) else [str(v)])  # a bool is a switch
    args += ["-o", str(out)]
    if figures:
        args.append("--figures")
    if info.get("show_sample"):
        args.append("--figures-on-sample")
    return shlex.join(args)


def run_attacks(
    target: Target, attacks=None, opts: AttackOptions | None = None, progress: bool = True
) -> list[AttackResult]:
    opts = (opts or AttackOptions()).check()
    return [ATTACKS[name].run(target, opts, progress) for name in parse_attacks(attacks)]


def _run_group(names, target_args, show_sample, opts, progress) -> list[AttackResult]:
    """One worker process's attacks, on its own copy of the target, one CPU thread."""
    import torch

    torch.set_num_threads(1)
    target, _ = load_target(*target_args, pool=any(n in LEARNED for n in names), show_sample=show_sample)
    return run_attacks(target, names, opts, progress)


def attack(
    model=None,
    key=None,
    data=None,
    split: str = "test",
    limit: int | None = None,
    attacks=None,
    out="amif-attack.md",
    opts: AttackOptions | None = None,
    figures: bool = False,
    progress: bool = True,
    show_sample: bool = False,
    groups=None,
) -> Path:
    """Run the selected attacks and write the Markdown report (+ `<report>.json`, + figures with
    `figures`, showing the bundled sample instead of the attacked pairs with `show_sample`); returns
    the report's path. `groups` (lists of attack names covering the selection) run in parallel
    processes, one CPU thread each; the report is the same as from one process."""
    opts = (opts or AttackOptions()).check()
    names = parse_attacks(attacks)  # a bad name or option fails before anything loads
    groups = [parse_attacks(g) for g in groups or ()]
    if groups and sorted(n for g in groups for n in g) != sorted(names):
        raise AMIFError("The attack groups must cover the selected attacks, each once.")
    out = Path(out)
    if not out.parent.exists():
        raise AMIFError(f"The report's folder {out.parent} does not exist.")
    target, info = load_target(
        model,
        key,
        data,
        split,
        limit,
        opts.device,
        pool=not groups and any(n in LEARNED for n in names),
        show_sample=show_sample,
    )
    t0 = time.perf_counter()
    if groups:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        target_args = (model, key, data, split, limit, opts.device)
        with ProcessPoolExecutor(len(groups), mp_context=multiprocessing.get_context("spawn")) as pool:
            jobs = [
                pool.submit(_run_group, g, target_args, show_sample, opts, progress and i == 0)
                for i, g in enumerate(groups)
            ]
            results = sorted((r for j in jobs for r in j.result()), key=lambda r: names.index(r.name))
    else:
        results = run_attacks(target, names, opts, progress)
    info["seconds"] = time.perf_counter() - t0
    info["command"] = command_line(info, names, out, opts, figures)
    write_json(out.with_suffix(".json"), target, info, opts, results)
    return write_report(out, target, info, opts, results, figures)


def _header(target: Target, info: dict, opts: AttackOptions) -> list[str]:
    from amif.package import training_steps

    pkg = target.package
    counts = ", ".join(f"{k} {target.kinds.count(k)}" for k in dict.fromkeys(target.kinds))
    ref = Measure.of(target, target.unkeyed, quality_db=opts.quality_db)
    keyed_flagged = Measure.of(target, target.keyed).flagged
    return [
        "# AMIF attack report",
        "",
        f"* Model `{pkg.model_id}` (`{Path(info['model_path']).name}`, {training_steps(pkg.manifest)}), identifier "
        f"`{pkg.identifier}`, verify threshold {target.threshold:.3f}.",
        f"* Owner's key {info['key_id']}: used for the keyed reference outputs only, never by an attack.",
        f"* Data: `{info['data']}`, split **{info['split']}**, {target.n} pairs ({counts}), "
        f"{target.shape[1]}x{target.shape[0]}; MRI and the luminance of CT/PET/SPECT, as the network sees them.",
        f"* Command: `{info['command']}`",
        f"* Reference: keyed outputs flagged {pct(keyed_flagged)}; unkeyed (zero-code) outputs flagged "
        f"{pct(ref.flagged)}, PSNR to keyed {db(ref.psnr.mean())} dB, SSIM {ref.ssim.mean():.3f}.",
        f"* Keyed quality: PSNR >= {opts.quality_db:g} dB to the keyed output. An attacker's code or edit "
        f"*succeeds* when at least {SUCCESS_SHARE:.0%} of its images are unflagged at keyed quality. PSNR on [0, 1] "
        f"images (capped at {PSNR_CAP:g} dB, shown as inf); SSIM: Gaussian window, sigma 1.5.",
        f"* Run time {info.get('seconds', 0):.0f} s on {opts.device}.",
        "",
    ]


def write_report(
    out: Path, target: Target, info: dict, opts: AttackOptions, results: list[AttackResult], figures: bool = False
) -> Path:
    out = Path(out)
    lines = _header(target, info, opts)
    lines += ["## Summary", "", "| attack | target | result | met |", "|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.title} | {r.target} | {r.summary} | {yes_no(r.met, r.undecided)} |")
    lines.append("")
    fig_dir = out.with_name(out.stem + "-figures")
    for r in results:
        met = yes_no(r.met, r.undecided)
        lines += [
            f"## {r.title}",
            "",
            f"Target: {r.target}. Met: {met}. ({r.seconds:.1f} s)",
            "",
            "| " + " | ".join(r.columns) + " |",
            "|---" * len(r.columns) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in r.rows]
        lines.append("")
        lines += [*r.notes, ""]
        if figures and r.figure:
            from .evaluate import tile

            fig_dir.mkdir(parents=True, exist_ok=True)
            grid = [[(label, u8(img)) for label, img in row] for row in r.figure]
            with atomic_output(fig_dir / f"{r.name}.png") as tmp:
                tile(grid).save(tmp)
            lines += [f"![{r.title}: first attacked pair]({fig_dir.name}/{r.name}.png)", ""]
    ran = {r.name for r in results}
    lines += ["## Not run", ""]
    for name, a in ATTACKS.items():
        if name not in ran:
            lines.append(f"* {a.title}: not selected.")
    lines.append("")
    if figures and target.show is not None:
        lines += [
            "Figures show the bundled MNI-based sample (MRI and PET at the demo slice) put through each "
            "attack's transform, edit, code or trained network; the attacked pairs appear only as numbers.",
            "",
        ]
    elif figures:
        lines += [
            "Figures show attacked outputs of the evaluated pairs: figures of Harvard-derived images are "
            "research-use only and must not be committed.",
            "",
        ]
    write_text(out, "\n".join(lines))
    return out


def write_json(path: Path, target: Target, info: dict, opts: AttackOptions, results: list[AttackResult]) -> None:
    doc = {
        "model_id": target.package.model_id,
        "weights_sha256": target.package.manifest.get("weights_sha256"),
        "key_id": info["key_id"],
        "identifier": target.identifier,
        "threshold": target.threshold,
        "shift": target.shift,
        "data": info["data"],
        "split": info["split"],
        "pairs": target.n,
        "command": info["command"],
        "options": asdict(opts),
        "success_share": SUCCESS_SHARE,
        "attacks": {
            r.name: {
                "title": r.title,
                "target": r.target,
                "met": r.met,
                "undecided": r.undecided,
                "summary": r.summary,
                "seconds": r.seconds,
                "rows": r.data,
            }
            for r in results
        },
        "not_run": [n for n in ATTACKS if n not in {r.name for r in results}],
    }
    write_text(path, json.dumps(doc, indent=1, default=_json_value))


def _json_value(v):
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, (np.floating, np.ndarray)):
        return v.tolist()
    raise TypeError(f"not JSON serializable: {type(v).__name__}")
