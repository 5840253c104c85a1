"""`amif evaluate`: fusion metrics of model packages, their unprotected twins and classical
baselines on a folder of registered pairs, written as a Markdown report with example figures.

For each pair type (CT, PET, SPECT) the report has one table: rows are keyed AMIF, unkeyed AMIF
(zero code), each twin (the same architecture trained without keys, run with the zero code), the
twins' mean ± sd over seeds when several are given, and the baselines (mean, max, Laplacian, GFF);
columns are the ten metrics of `amif.metrics` as mean ± sd over the images (population sd), and
"wins vs max": on how many of EN, SD, SF, MI, SCD, VIF, Qabf, SSIM the row is >= the max rule.
A second table per pair type has the reader measures of `amif_research.reader` (anatomy under
function, rims and halos near strong edges, and for PET/SPECT the colour error where the source is
hot) as mean ± sd over the images where each is defined.
PET and SPECT are fused on their luminance (colour restored by `fuse_images`); every metric is
computed on grey 0-255 integers: the sources' luminance and the outputs' luminance, rounded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from amif.color import luminance, rgb_to_ycbcr, ycbcr_to_rgb
from amif.errors import AMIFError
from amif.files import atomic_output, write_text

from .baselines import BASELINES
from .data import PAIR_TYPES, list_pairs, load_pairs, read_image
from .metrics import NAMES, all_metrics
from .reader import READER_NAMES, reader_measures

WIN_METRICS = ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM")
KINDS = tuple(PAIR_TYPES.values())
FIGURE_PAIRS = 2


def _grey255(img: np.ndarray) -> np.ndarray:
    """Float output in [0, 1] (grey or RGB) -> its luminance as integers 0..255 (float64)."""
    return np.clip(np.round(luminance(np.asarray(img, np.float64)) * 255), 0, 255)


def _colour(grey255: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """A grey fused output (0-255) coloured as `fuse_images` does (its Y, the chroma of colour source
    B, RGB in [0, 1]); None for a grey B."""
    if b.ndim != 3:
        return None
    ycc = rgb_to_ycbcr(b[..., :3])
    ycc[..., 0] = grey255 / 255
    return ycbcr_to_rgb(ycc)


def _run_twin(twin, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """An unprotected twin on the zero code, with fuse_images' colour handling (Y fused, chroma
    restored) but no key and no verification."""
    from amif.inference import run_network

    ycc = rgb_to_ycbcr(b[..., :3]) if b.ndim == 3 else None
    by = ycc[..., 0] if ycc is not None else b
    y = run_network(twin, luminance(a)[None], by[None], np.zeros(twin.net.cfg.key_bits, np.float32))[0]
    if ycc is None:
        return y
    ycc[..., 0] = y
    return ycbcr_to_rgb(ycc)


def load_twin(path):
    from amif.package import load_package

    pkg = load_package(path)
    if pkg.manifest.get("twin") is not True:
        raise AMIFError(f'{Path(path).name} is not an unprotected twin (its manifest lacks "twin": true).')
    return pkg


def _keys_for(models: list, model_paths: list, keys: list) -> list:
    """The owner's key for each model (None when none was given); a given key fitting no model is an error."""
    from amif.keys import load_key
    from amif.package import bundled_key_path, bundled_model_path

    loaded = [load_key(k) for k in keys]
    used, out = set(), []
    for pkg, path in zip(models, model_paths):
        match = next((i for i, k in enumerate(loaded) if (k.model_id, k.key_id) == (pkg.model_id, pkg.key_id)), None)
        if match is not None:
            used.add(match)
            out.append(loaded[match])
        elif Path(path).resolve() == bundled_model_path().resolve():
            out.append(load_key(bundled_key_path()))  # the demo key is public and ships beside the model
        else:
            out.append(None)
    for i, k in enumerate(loaded):
        if i not in used:
            raise AMIFError(
                f"The key {Path(keys[i]).name} (model '{k.model_id}', key {k.key_id}) fits none of the models."
            )
    return out


def tile(rows: list[list[tuple[str, np.ndarray]]], label_height: int = 14):
    """A grid of grey uint8 images (all the same size), each with a text label above it."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = rows[0][0][1].shape[:2]
    ncols = max(len(r) for r in rows)
    cell_h = h + label_height
    grid = Image.new("L", (ncols * w, len(rows) * cell_h), 0)
    draw, font = ImageDraw.Draw(grid), ImageFont.load_default()
    for i, row in enumerate(rows):
        for j, (label, img) in enumerate(row):
            grid.paste(Image.fromarray(np.asarray(img, np.uint8)), (j * w, i * cell_h + label_height))
            draw.text((j * w + 2, i * cell_h + 1), label, fill=255, font=font)
    return grid


def _wins(m: np.ndarray, mx: np.ndarray) -> str:
    """On how many of WIN_METRICS the means m are >= the max rule's means mx."""
    return f"{sum(m[NAMES.index(k)] >= mx[NAMES.index(k)] for k in WIN_METRICS)}/{len(WIN_METRICS)}"


def _cell(v: np.ndarray) -> str:
    return f"{v.mean():.3f} ± {v.std():.3f}"


def evaluate(
    models=(None,),
    data=None,
    split: str = "test",
    keys=(),
    twins=(),
    out="amif-eval.md",
    limit: int | None = None,
    progress: bool = True,
    figures: bool = True,
) -> Path:
    """Evaluate and write the report, its aggregate figures as JSON beside it (`<report>.json`) and,
    with `figures`, a folder of example images; returns the report's path."""
    from tqdm import tqdm

    from amif.fusion import fuse_images
    from amif.package import bundled_model_path, load_package

    from .data import default_data_dir

    model_paths = [m or bundled_model_path() for m in (models or [None])]
    pkgs = [load_package(p) for p in model_paths]
    owner_keys = _keys_for(pkgs, model_paths, list(keys))
    twin_pkgs = [load_twin(t) for t in twins]
    data = Path(data or default_data_dir())
    pairs = list_pairs(data, split)
    if limit:
        pairs = [p for k in KINDS for p in [q for q in pairs if q.kind == k][:limit]]

    def name(stem: str, path) -> str:
        return stem if len(pkgs) == 1 else f"{stem} ({Path(path).stem})"

    amif_rows = []
    for pkg, path, key in zip(pkgs, model_paths, owner_keys):
        if key is not None:
            amif_rows.append((name("AMIF keyed", path), pkg, key))
        amif_rows.append((name("AMIF unkeyed", path), pkg, None))
    twin_names = [f"twin ({Path(t).stem})" for t in twins]
    rows = [r[0] for r in amif_rows] + twin_names + list(BASELINES)
    scores = {r: {k: [] for k in KINDS} for r in rows}
    reader = {r: {k: [] for k in KINDS} for r in rows}
    examples = {k: [] for k in KINDS}

    for pair in tqdm(pairs, desc="evaluate", unit="pair", disable=not progress):
        a8, b8 = (x[0].astype(np.float64) for x in load_pairs([pair]))
        a, b = read_image(pair.mri), read_image(pair.other)
        outputs, colour = {}, {}
        for label, pkg, key in amif_rows:
            colour[label] = fuse_images(a, b, pkg, key, device="cpu").fused
        for label, twin in zip(twin_names, twin_pkgs):
            colour[label] = _run_twin(twin, a, b)
        for label, rgb in colour.items():
            outputs[label] = _grey255(rgb)
        for label, fn in BASELINES.items():
            outputs[label] = np.clip(np.round(fn(a8, b8)), 0, 255)
            colour[label] = _colour(outputs[label], b)
        src = b[..., :3] if b.ndim == 3 else None
        for label, f in outputs.items():
            m = all_metrics(a8, b8, f)
            scores[label][pair.kind].append([m[k] for k in NAMES])
            rgb = colour[label] if src is not None else None
            reader[label][pair.kind].append(reader_measures(f, a8, b8, rgb, src))
        if len(examples[pair.kind]) < FIGURE_PAIRS:
            examples[pair.kind].append((pair.name, a8, b8, outputs))

    out = Path(out)
    _write_json(out.with_suffix(".json"), pkgs, twin_pkgs, twin_names, rows, scores, data, split, reader)
    return _write_report(
        out,
        pkgs,
        model_paths,
        owner_keys,
        twin_pkgs,
        twin_names,
        rows,
        scores,
        examples if figures else None,
        data,
        split,
        pairs,
        reader,
    )


def _training(pkg) -> dict:
    from .losses import HINGES  # torch: imported where a package is at hand anyway
    from .train import flat_record

    t = flat_record(pkg.manifest.get("training", {}))
    return {
        "weights_sha256": pkg.manifest.get("weights_sha256"),
        "steps": t.get("steps"),
        "averaged_steps": [a.get("steps") for a in t.get("averaged", [])],
        **{f"{k}_weight": t.get(f"{k}_weight", 0.0) for k in HINGES},
    }


def _nan_aggregate(v) -> dict:
    """Per column of the (images, measures) list v: how many images define it, its mean and population
    sd over those (None where no image does)."""
    v = np.asarray(v, np.float64)
    ok = ~np.isnan(v)
    n = ok.sum(0)

    def col(f):
        return [float(f(v[ok[:, i], i])) if n[i] else None for i in range(v.shape[1])]

    return {"n": n.tolist(), "mean": col(np.mean), "sd": col(np.std)}


def _write_json(path: Path, pkgs, twin_pkgs, twin_names, rows, scores, data, split, reader=None) -> None:
    """Aggregates only (means and sds over images per pair type), for plots and target checks; the
    reader measures under "reader" (per row and pair type: images defining each measure, means, sds)."""
    import json

    from .reader import DOMINANCE_LEVELS, EDGE_LEVELS, HOT_LEVEL, HUE_MIN_SATURATION, RIM_LEVELS, RIM_RADIUS

    table = {
        r: {
            k: {"n": len(v), "mean": np.asarray(v).mean(0).tolist(), "sd": np.asarray(v).std(0).tolist()}
            for k, v in scores[r].items()
            if v
        }
        for r in rows
    }
    extra = {}
    if reader is not None:
        extra["reader"] = {
            "measures": list(READER_NAMES),
            "constants": {
                "DOMINANCE_LEVELS": DOMINANCE_LEVELS,
                "EDGE_LEVELS": EDGE_LEVELS,
                "RIM_RADIUS": RIM_RADIUS,
                "RIM_LEVELS": RIM_LEVELS,
                "HOT_LEVEL": HOT_LEVEL,
                "HUE_MIN_SATURATION": HUE_MIN_SATURATION,
            },
            "rows": {r: {k: _nan_aggregate(v) for k, v in reader[r].items() if v} for r in rows},
        }
    write_text(
        path,
        json.dumps(
            {
                "data": str(data),
                "split": split,
                "metrics": list(NAMES),
                "win_metrics": list(WIN_METRICS),
                "models": [{"model_id": p.model_id, **_training(p)} for p in pkgs],
                "twins": {n: {"model_id": t.model_id, **_training(t)} for n, t in zip(twin_names, twin_pkgs)},
                "rows": table,
                **extra,
            },
            indent=1,
        ),
    )


def _reader_cell(v: np.ndarray, scale: float = 1.0, digits: int = 3) -> str:
    v = v[~np.isnan(v)] * scale
    return f"{v.mean():.{digits}f} ± {v.std():.{digits}f}" if v.size else "-"


def _reader_table(reader: dict, rows: list, kind: str) -> list[str]:
    """The reader measures of one pair type: anatomy gain, under/overshoot as % of near-edge pixels,
    hue error in degrees and saturation error (PET/SPECT)."""
    lines = [
        "| method | anatomy under function | undershoot % | overshoot % | hue err ° (hot) | sat err (hot) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        v = np.asarray(reader[r][kind], np.float64)
        lines.append(
            f"| {r} | {_reader_cell(v[:, 0])} | {_reader_cell(v[:, 1], 100, 2)} | "
            f"{_reader_cell(v[:, 2], 100, 2)} | {_reader_cell(v[:, 3], 1, 1)} | {_reader_cell(v[:, 4])} |"
        )
    return lines + [""]


def _write_report(
    out, pkgs, model_paths, owner_keys, twin_pkgs, twin_names, rows, scores, examples, data, split, pairs, reader=None
) -> Path:
    from amif.package import training_steps

    fig_dir = out.with_name(out.stem + "-figures")
    if examples is not None:
        fig_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "# AMIF evaluation",
        "",
        f"Data: `{data}`, split **{split}** ({len(pairs)} pairs). Metrics on grey 0-255 "
        "(luminance of PET/SPECT and of colour outputs), CDDFuse conventions (see `amif.metrics`): "
        "MI in nats, MI/SCD/VIF/Qabf/SSIM summed over both sources, SSIM with data range 2, "
        "PSNR peak max(F). Cells: mean ± sd over images; the twins' seed row: mean ± sd (ddof 1) of the "
        "per-twin means. Wins vs max: on how many of " + ", ".join(WIN_METRICS) + " the row's mean is >= the "
        "max rule's.",
        "",
    ]
    for pkg, path, key in zip(pkgs, model_paths, owner_keys):
        state = f"key {key.key_id}" if key is not None else "no key given: keyed row omitted"
        lines.append(f"* Model `{pkg.model_id}` (`{Path(path).name}`, {training_steps(pkg.manifest)}), {state}.")
    for label, twin in zip(twin_names, twin_pkgs):
        lines.append(f"* {label}: `{twin.model_id}`, unprotected twin, run with the zero code.")
    lines.append("")
    seed_row = f"twin mean ± sd ({len(twin_names)} seeds)"
    for kind in KINDS:
        n = len(scores[rows[0]][kind])
        if not n:
            continue
        means = {r: np.asarray(scores[r][kind]).mean(0) for r in rows}
        lines += [
            f"## {kind}-MRI ({n} pairs)",
            "",
            "| method | " + " | ".join(NAMES) + " | wins vs max |",
            "|---" * (len(NAMES) + 2) + "|",
        ]
        for r in rows:
            v = np.asarray(scores[r][kind])
            cells = [_cell(v[:, i]) for i in range(len(NAMES))]
            lines.append(f"| {r} | " + " | ".join(cells) + f" | {_wins(means[r], means['max'])} |")
            if len(twin_names) > 1 and r == twin_names[-1]:
                per_seed = np.stack([means[t] for t in twin_names])
                cells = [f"{per_seed[:, i].mean():.3f} ± {per_seed[:, i].std(ddof=1):.3f}" for i in range(len(NAMES))]
                lines.append(f"| {seed_row} | " + " | ".join(cells) + f" | {_wins(per_seed.mean(0), means['max'])} |")
        lines.append("")
        if twin_names:
            twin_mean = np.mean([means[t] for t in twin_names], axis=0)
            for r in [r for r in rows if r.startswith("AMIF keyed")]:
                ratio = means[r] / twin_mean
                short = [f"{k} {ratio[i]:.3f}" for i, k in enumerate(NAMES) if not ratio[i] >= 0.98]
                verdict = "met" if not short else "not met; below: " + ", ".join(short)
                lines.append(
                    f"Within 2% of twin ({r} ≥ 0.98 × twin mean on every metric): "
                    f"{len(NAMES) - len(short)}/{len(NAMES)} metrics, {verdict}."
                )
        else:
            lines.append("Within 2% of twin: no twin given.")
        if reader is not None:
            lines += [
                "",
                "Reader measures (`amif_research.reader`): MRI detail gain where the second modality "
                "dominates (1 = all kept); pixels near strong edges darker (undershoot) or brighter "
                "(overshoot) than both sources; hue and saturation error where the source is hot.",
                "",
                *_reader_table(reader, rows, kind),
            ]
        if examples is None:
            continue
        fig = fig_dir / f"{kind}.png"
        grid = []
        for pname, a8, b8, outputs in examples[kind]:
            order = [r for r in rows if r in BASELINES] + [r for r in rows if r not in BASELINES]
            cells = [(f"MRI {pname}", a8), (kind, b8)] + [(label, outputs[label]) for label in order]
            grid.append(cells)
        with atomic_output(fig) as tmp:
            tile(grid).save(tmp)
        lines += ["", f"![{kind} examples: sources, then each method]({fig_dir.name}/{fig.name})", ""]
    if examples is not None:
        lines += [
            "Figures show the evaluated images: Harvard-derived figures are research-use only and must "
            "not be committed.",
            "",
        ]
    write_text(out, "\n".join(lines))
    return out
