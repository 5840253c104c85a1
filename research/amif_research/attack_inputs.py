"""Input-transform attacks: query the network on transformed copies of the inputs, undo each transform on
the output and merge the aligned outputs per pixel.

The identifier is laid out in coordinates of the slice frame, not of the anatomy. A copy of the inputs
that is flipped, rotated, shifted or rescaled puts the strokes of its output, once the transform is
undone, over other anatomy; a per-pixel merge of several such outputs keeps, at each pixel, the copies
without a stroke there. Two families (names for `--attacks`):

* ``input-transforms``: on the target's pairs. Transform sets (each starts with the identity, the plain
  query): ``dihedral`` (flips and rotations by 90 degrees), ``shift`` (the inputs padded with background on
  two sides and cropped back: moved by some pixels), ``rescale`` (zoomed about the centre, bilinear) and
  ``mixed`` (taken in turn from the three). For K queries per image (AttackOptions.input_queries), the first
  K transforms of a set are merged by each rule of MERGES. Pixels a transform moved out of the frame are
  unknown in its candidate (NaN) and left out of that pixel's merge.
* ``reslice``: on the bundled sample volume (and a slab of it stored in another array layout). The volume
  path fuses axial slices; presenting the volume with its array axes permuted makes it fuse coronal or
  sagittal ones. Two presentations: geometry kept (SimpleITK PermuteAxes: array and header permuted together,
  the world geometry unchanged) and header relabelled (array permuted, direction set to the identity: the
  attacker claims the permuted axes are the patient's). Each output is mapped back to the original array
  layout and the three orientations are merged by a voxel-wise median.

Target (both): for every merge rule and K <= 8, the public check (`verify`) flags >= 95% of merged outputs and
the owner's trace check >= 95%. Reported beside the plain unkeyed output and the sources' max rule.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from amif.errors import AMIFError

from .attack import AttackOptions, AttackResult, Measure, Target, db, pct, progress_bar, psnr, ssim, yes_no
from .baselines import max_fusion

GOAL = 0.95  # share of merged outputs each check must flag


# ----------------------------------------------------------------- transforms


@dataclass(frozen=True)
class Transform:
    """A transform of (n, h, w) image stacks and its inverse. `forward` fills pixels that come from outside
    the frame with `fill`; `inverse` with NaN (unknown there), so that merges can leave them out."""

    name: str
    forward: Callable[[np.ndarray, float], np.ndarray]  # (stack, fill) -> stack
    inverse: Callable[[np.ndarray, float], np.ndarray]


def dihedral(k: int, flip: bool) -> Transform:
    """Left-right flip (if `flip`), then rotation by k x 90 degrees (counter-clockwise); exact inverse."""

    def fwd(x, fill=0.0):
        return np.rot90(x[..., ::-1] if flip else x, k, axes=(-2, -1))

    def inv(y, fill=np.nan):
        y = np.rot90(y, -k, axes=(-2, -1))
        return y[..., ::-1] if flip else y

    names = {
        (0, False): "identity",
        (1, False): "rot90",
        (2, False): "rot180",
        (3, False): "rot270",
        (0, True): "flip-lr",
        (1, True): "transpose",
        (2, True): "flip-ud",
        (3, True): "anti-transpose",
    }
    return Transform(names[k % 4, flip], fwd, inv)


DIHEDRAL = [
    dihedral(k, f)
    for k, f in ((0, False), (2, False), (0, True), (2, True), (1, False), (3, False), (1, True), (3, True))
]


def _move(x: np.ndarray, dy: int, dx: int, fill: float) -> np.ndarray:
    """Content moved dy px down and dx px right, the uncovered band set to `fill` (the same size)."""
    h, w = x.shape[-2:]
    out = np.full(x.shape, fill, np.float32)
    if abs(dy) < h and abs(dx) < w:
        out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
            ..., max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
        ]
    return out


def shift(fy: float, fx: float) -> Transform:
    """Pad with `fill` (background) by fy x h rows on top (bottom when negative) and fx x w columns on the
    left (right when negative), crop back to the frame: the content moves. The inverse moves it back; the
    band the forward cropped away is unknown (NaN)."""

    def offsets(x):
        h, w = x.shape[-2:]
        return round(fy * h), round(fx * w)

    def fwd(x, fill=0.0):
        dy, dx = offsets(x)
        return _move(x, dy, dx, fill)

    def inv(y, fill=np.nan):
        dy, dx = offsets(y)
        return _move(y, -dy, -dx, fill)

    return Transform(f"shift {fy:+g},{fx:+g}", fwd, inv)


def _zoom(x: np.ndarray, s: float, fill: float) -> np.ndarray:
    """Zoom about the frame's centre by `s` (bilinear, the same size); pixels sampled from outside the frame
    get `fill`."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(x, np.float32)).reshape(-1, 1, *x.shape[-2:])
    theta = torch.tensor([[1 / s, 0, 0], [0, 1 / s, 0]], dtype=torch.float32).expand(len(t), 2, 3)
    grid = F.affine_grid(theta, list(t.shape), align_corners=False)
    y = F.grid_sample(torch.nan_to_num(t), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    inside = F.grid_sample(torch.ones_like(t), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    y = torch.where(inside > 0.999, y / inside.clamp_min(1e-6), torch.full_like(y, fill))
    return y.reshape(x.shape).numpy()


def rescale(s: float) -> Transform:
    """Zoom about the centre by `s` (> 1: enlarged, the border cropped; < 1: reduced, background around);
    the inverse zooms by 1 / s: within interpolation error, but for s < 1 the outermost pixel ring, which the
    forward mixed with the fill (the background); what s > 1 cropped is unknown (NaN)."""
    return Transform(
        f"rescale {s:g}", lambda x, fill=0.0: _zoom(x, s, fill), lambda y, fill=np.nan: _zoom(y, 1 / s, fill)
    )


SHIFT = [dihedral(0, False)] + [
    shift(fy, fx)
    for fy, fx in (
        (1 / 16, 1 / 16),
        (-1 / 16, -1 / 16),
        (1 / 16, -1 / 16),
        (-1 / 16, 1 / 16),
        (1 / 8, 0),
        (0, 1 / 8),
        (-1 / 8, 0),
    )
]
RESCALE = [dihedral(0, False)] + [rescale(s) for s in (0.8, 1.25, 0.9, 1.12, 0.7, 1.4, 0.95)]
SETS = {"dihedral": DIHEDRAL, "shift": SHIFT, "rescale": RESCALE}
MIXED_ORDER = (
    ("dihedral", 0),
    ("dihedral", 1),
    ("shift", 1),
    ("rescale", 1),
    ("dihedral", 2),
    ("shift", 2),
    ("rescale", 2),
    ("dihedral", 3),
)  # the mixed set: (set, index), no query beyond the three sets'
MAX_QUERIES = 8


# ----------------------------------------------------------------- merge rules


def merge_median(c: np.ndarray) -> np.ndarray:
    """Per pixel, the median of the candidates (K, ...) that are known (not NaN)."""
    return np.nanmedian(c, axis=0)


def _trim(m: np.ndarray) -> np.ndarray:
    """Candidates cut from each end of a pixel's sorted m known ones: a quarter (at least one from 3 on)."""
    return np.where(m >= 3, np.maximum(1, m // 4), 0)


def merge_trimmed(c: np.ndarray) -> np.ndarray:
    """Per pixel, the mean of the known candidates after the lowest and highest quarter are cut (at least one
    each from three candidates on: the median of three; nothing cut from two)."""
    s = np.sort(c, axis=0)  # NaN sorts last
    m = np.isfinite(c).sum(0)
    t = _trim(m)
    rank = np.arange(len(c)).reshape(-1, *[1] * (c.ndim - 1))
    keep = (rank >= t) & (rank < m - t)
    return np.where(keep, s, 0).sum(0) / np.maximum(keep.sum(0), 1)


REJECT_SIGMAS = 2.0  # outlier rejection: candidates farther than this many robust sigmas from the median go
REJECT_FLOOR = 0.02  # ... but never closer than this (image units): agreeing candidates all stay


def merge_reject(c: np.ndarray) -> np.ndarray:
    """Per pixel: the median and the median absolute deviation (MAD) of the known candidates; candidates
    farther from the median than max(REJECT_SIGMAS x 1.4826 x MAD, REJECT_FLOOR) are dropped, the rest
    averaged. With two candidates both are as far from their median: the mean."""
    med = np.nanmedian(c, axis=0)
    dev = np.abs(c - med)
    tol = np.maximum(REJECT_SIGMAS * 1.4826 * np.nanmedian(dev, axis=0), REJECT_FLOOR)
    keep = dev <= tol  # False where NaN
    return np.where(keep, c, 0).sum(0) / np.maximum(keep.sum(0), 1)


STROKE_TOL = 0.03  # stroke-aware: candidates within this of a pixel's least stroke-like one agree with it


def stroke_sign(c: np.ndarray, ref: np.ndarray | None = None) -> np.ndarray:
    """Per image of candidates (K, n, h, w): +1 where the strokes are brighter than the anatomy, -1 where darker,
    read from where the candidates disagree (spread > STROKE_TOL): the side of the per-pixel median on which the
    outlying candidates lie, summed over those pixels. Two candidates lie on both sides of their median alike;
    for K = 2 the side of `ref` (n, h, w), a stroke-free stand-in such as the sources' max rule, is read
    instead (without one: +1). Returns (n,)."""
    mid = np.nanmedian(c, axis=0) if len(c) > 2 or ref is None else np.asarray(ref, np.float32)
    hi, lo = np.nanmax(c, axis=0) - mid, mid - np.nanmin(c, axis=0)
    dis = (np.nanmax(c, axis=0) - np.nanmin(c, axis=0)) > STROKE_TOL
    up = np.where(dis, np.maximum(hi, 0), 0).reshape(len(mid), -1).sum(1)
    down = np.where(dis, np.maximum(lo, 0), 0).reshape(len(mid), -1).sum(1)
    return np.where(up >= down, 1.0, -1.0)


def merge_stroke(c: np.ndarray, ref: np.ndarray | None = None) -> np.ndarray:
    """Stroke-aware choice (K, n, h, w) -> (n, h, w). The strokes' colour is read per image (stroke_sign: the
    direction in which candidates deviate where they disagree; `ref` for two candidates). Per pixel, the known
    candidate least towards that colour is the reference; candidates within STROKE_TOL of it agree with it and
    are averaged, those deviating further towards the stroke colour are dropped. Where the candidates agree
    this is their mean; with two that disagree, the one without the stroke."""
    s = stroke_sign(c, ref).reshape(1, -1, *[1] * (c.ndim - 2))
    d = s * c  # strokes deviate upwards in d
    ref = np.nanmin(d, axis=0)
    keep = (d - ref) <= STROKE_TOL  # False where NaN
    return np.where(keep, c, 0).sum(0) / np.maximum(keep.sum(0), 1)


MERGES = {
    "median": merge_median,
    "trimmed mean": merge_trimmed,
    "outlier rejection": merge_reject,
    "stroke-aware": merge_stroke,
}


def merged(candidates: np.ndarray, rule: str, ref: np.ndarray | None = None) -> np.ndarray:
    """Candidates (K, n, h, w), NaN where unknown -> (n, h, w) merged by MERGES[rule], unknown left 0. `ref`:
    the stroke-free stand-in of the stroke-aware rule (merge_stroke)."""
    c = np.asarray(candidates, np.float32)
    out = merge_stroke(c, ref) if rule == "stroke-aware" else MERGES[rule](c)
    return np.nan_to_num(out, nan=0.0).astype(np.float32)


def query_counts(spec: str) -> list[int]:
    """'2,3,5,8' -> [2, 3, 5, 8]: queries per image, each from 2 to MAX_QUERIES."""
    try:
        ks = sorted({int(s) for s in str(spec).split(",") if s.strip()})
    except ValueError:
        ks = []
    if not ks or ks[0] < 2 or ks[-1] > MAX_QUERIES:
        raise AMIFError(f"--input-queries takes counts from 2 to {MAX_QUERIES}, comma-separated; got {spec!r}.")
    return ks


# ----------------------------------------------------------------- the 2D family


def candidates(
    target: Target,
    a: np.ndarray,
    b: np.ndarray,
    transforms: list,
    plain: np.ndarray | None = None,
    on_query: Callable[[], None] | None = None,
) -> list[np.ndarray]:
    """Unkeyed outputs of the pairs (a, b) (n, h, w) queried through each transform, the transform undone:
    one (n, h, w) candidate per transform, NaN where unknown. `plain`: the identity's output, if known."""
    out = []
    for t in transforms:
        if t.name == "identity" and plain is not None:
            out.append(np.asarray(plain, np.float32))
            continue
        y = target.outputs(np.ascontiguousarray(t.forward(a, 0.0)), np.ascontiguousarray(t.forward(b, 0.0)))
        out.append(np.ascontiguousarray(t.inverse(y, np.nan), dtype=np.float32))
        if on_query:
            on_query()
    return out


def set_candidates(pools: dict, name: str, k: int) -> list[np.ndarray]:
    """The first k candidates of a transform set (pools: set name -> candidates of SETS[name])."""
    if name == "mixed":
        return [pools[s][i] for s, i in MIXED_ORDER[:k]]
    return pools[name][:k]


def set_names(name: str, k: int) -> list[str]:
    if name == "mixed":
        return [SETS[s][i].name for s, i in MIXED_ORDER[:k]]
    return [t.name for t in SETS[name][:k]]


def checks(target: Target, images: np.ndarray, quality_db: float) -> dict:
    """Public verify flags (identifier, erasure and, for a model with a mark shift, the shift against the
    sources), the owner's trace flags on every image (None without a trace channel), PSNR and SSIM to keyed."""
    from amif.trace import TRACE_THRESHOLD, trace_score

    public = object.__new__(Target)
    public.__dict__.update(target.__dict__)
    public.trace = None
    m = Measure.of(public, images, quality_db=quality_db)
    traced = None
    if target.trace is not None:
        traced = trace_score(np.clip(images, 0, 1), target.a, target.b, target.keyed, target.trace) > TRACE_THRESHOLD
    either = m.flags | (traced if traced is not None else False)
    return {
        "public": float(m.flags.mean()),
        "trace": None if traced is None else float(traced.mean()),
        "either": float(either.mean()),
        "psnr": float(m.psnr.mean()),
        "ssim": float(m.ssim.mean()),
        "broken": float(np.mean(~either & (m.psnr >= quality_db))),
    }


def _met(c: dict) -> bool:
    return c["public"] >= GOAL and c["trace"] is not None and c["trace"] >= GOAL


def _trace_cell(c: dict) -> str:
    return "n/a (no trace channel)" if c["trace"] is None else pct(c["trace"])


def input_transforms(target: Target, opts: AttackOptions, progress: bool = True) -> AttackResult:
    """The `input-transforms` family: for every transform set, K of AttackOptions.input_queries and merge rule,
    the merged outputs of the target's pairs, checked by the public verify and the owner's trace check."""
    t0 = time.perf_counter()
    ks = query_counts(opts.input_queries)
    kmax = max(ks)
    sets = list(SETS) + ["mixed"]
    bar = progress_bar(len(SETS) * (kmax - 1) + len(sets) * len(ks) * len(MERGES), "input-transforms", progress)
    with bar:  # the queries, then the checks of every merged output (the owner's trace check is the slower part)
        pools = {
            name: candidates(target, target.a, target.b, ts[:kmax], target.unkeyed, lambda: bar.update(1))
            for name, ts in SETS.items()
        }
        unkeyed = checks(target, target.unkeyed, opts.quality_db)
        max_rule = max_fusion(target.a, target.b)
        max_psnr, max_ssim = float(psnr(max_rule, target.keyed).mean()), float(ssim(max_rule, target.keyed).mean())
        rows, data, met = [], [], True
        for name in sets:
            for k in ks:
                cands = np.stack(set_candidates(pools, name, k))
                for rule in MERGES:
                    c = checks(target, merged(cands, rule, max_rule), opts.quality_db)
                    bar.update(1)
                    ok = _met(c)
                    met &= ok
                    rows.append(
                        [
                            name,
                            str(k),
                            rule,
                            pct(c["public"]),
                            _trace_cell(c),
                            pct(c["either"]),
                            db(c["psnr"]),
                            f"{c['ssim']:.3f}",
                            pct(c["broken"]),
                            yes_no(ok),
                            f"{k} / image",
                        ]
                    )
                    data.append(
                        {"set": name, "queries": k, "transforms": set_names(name, k), "rule": rule, **c, "met": ok}
                    )
    failed = [d for d in data if not d["met"]]
    worst = min(data, key=lambda d: (d["public"], d["trace"] or 0))
    summary = (
        f"{len(data) - len(failed)}/{len(data)} settings meet the target; lowest: {worst['set']} "
        f"K={worst['queries']} {worst['rule']}: verify {pct(worst['public'])}, trace "
        f"{'n/a' if worst['trace'] is None else pct(worst['trace'])}, PSNR to keyed {db(worst['psnr'])} dB "
        f"(unkeyed {db(unkeyed['psnr'])} dB, max rule {db(max_psnr)} dB)"
    )
    fig = target.figure_target()
    figure = [("keyed", fig.keyed[0]), ("unkeyed", fig.unkeyed[0])]
    for name in SETS:
        figure.append(
            (
                f"{name} K={kmax} median",
                merged(np.stack(candidates(fig, fig.a, fig.b, SETS[name][:kmax], fig.unkeyed)), "median")[0],
            )
        )
    notes = [
        f"Each merged output costs K unkeyed queries per image (the plain query is one of them). Reference: the plain "
        f"unkeyed output is flagged {pct(unkeyed['public'])} by verify and {_trace_cell(unkeyed)} by the owner's trace "
        f"check, {db(unkeyed['psnr'])} dB and SSIM {unkeyed['ssim']:.3f} to the keyed output; the sources' max rule "
        f"(no model, no query) is {db(max_psnr)} dB, SSIM {max_ssim:.3f}.",
        "Transform sets, in query order: " + "; ".join(f"{n}: {', '.join(set_names(n, kmax))}" for n in sets) + ". "
        "Shifts are fractions of the frame (1/16 is 16 px of 256), filled with background (0); rescaling is bilinear "
        "about the centre. A candidate is unknown (left out of the merge) where its transform moved the pixel out "
        "of the frame.",
        "Merge rules: median; trimmed mean (a quarter cut from each end, at least one from 3 candidates on); "
        f"outlier rejection (candidates farther than max({REJECT_SIGMAS:g} robust sigmas, {REJECT_FLOOR:g}) from the "
        "per-pixel median dropped, the rest averaged); stroke-aware (the strokes' colour read per image from the "
        "side of the median on which disagreeing candidates deviate, for K = 2 the side of the max rule; per pixel, "
        f"the candidates within {STROKE_TOL:g} of the one least towards that colour averaged, the others dropped).",
        "'verify' is the public check (`amif verify`: identifier score, erasure check"
        + (", and the mark shift against the sources" if target.shift else "")
        + "); 'trace' the owner's check "
        "(`verify --key`) run on every merged output; 'either' flags an output flagged by one of them; 'unflagged at "
        f"keyed quality': flagged by neither and >= {opts.quality_db:g} dB to the keyed output. Target: every row "
        f">= {GOAL:.0%} by verify and >= {GOAL:.0%} by the trace check.",
    ]
    return AttackResult(
        "input-transforms",
        "Input transforms (queries on transformed inputs, undone and merged)",
        f"for every merge rule and K <= {MAX_QUERIES}: verify flags >= {GOAL:.0%} and the owner's trace >= "
        f"{GOAL:.0%} of merged outputs",
        met,
        summary,
        [
            "transforms",
            "K",
            "merge",
            "verify flagged",
            "trace flagged",
            "either flagged",
            "PSNR to keyed (dB)",
            "SSIM to keyed",
            "unflagged at keyed quality",
            "met",
            "queries",
        ],
        rows,
        data,
        notes,
        time.perf_counter() - t0,
        [figure],
    )


# ----------------------------------------------------------------- volumes: reslicing


def relabel(img, perm):
    """The image's array with its (z, y, x) axes permuted by `perm`, in an image whose header is relabelled
    to match the array: spacing permuted, the origin kept, the direction set to the identity (the attacker
    claims the permuted axes are the patient's). The world geometry changes."""
    import SimpleITK as sitk

    arr = np.transpose(sitk.GetArrayFromImage(img), perm)
    out = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    sp = img.GetSpacing()  # (x, y, z): array axis j is SimpleITK axis 2 - j
    out.SetSpacing([sp[int(2 - perm[2 - i])] for i in range(3)])
    out.SetOrigin(img.GetOrigin())
    return out


def permute_kept(img, perm):
    """The image with its (z, y, x) array axes permuted by `perm` and its header with them
    (SimpleITK PermuteAxes): the world geometry is kept."""
    import SimpleITK as sitk

    return sitk.PermuteAxes(img, [int(2 - perm[2 - i]) for i in range(3)])


def _array(img) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(img).astype(np.float32)


RESLICE_PERMS = ((0, 1, 2), (1, 0, 2), (2, 1, 0))  # array (z, y, x) orders: as stored, y first, x first


def reslice_volume(
    package, code, mri, pet, trace=None, quality_db: float = 30.0, on_fusion: Callable[[], None] | None = None
) -> list[dict]:
    """For one registered volume pair (SimpleITK, same grid): the attacker's reslice merge under both
    presentations (relabelled header, geometry kept), each orientation and their voxel-wise median, checked
    per axial slice (display orientation, slices with content) by the public verify (with the sources, for a
    model with a public texture) and, with `trace`, the owner's trace check; PSNR to the keyed output over
    those slices. One dict per row."""
    from amif.fusion import display_view, fuse_volumes
    from amif.inference import run_network
    from amif.intensity import normalize, robust_window
    from amif.trace import PUBLIC_THRESHOLD, TRACE_THRESHOLD, public_basis, public_score, trace_score
    from amif.verify import ERASED, scores_and_erasure

    view = display_view(mri)
    va, vb = _array(mri), _array(pet)
    sa = normalize(view(va), robust_window(va)).astype(np.float32)
    sb = normalize(view(vb), robust_window(vb)).astype(np.float32)
    keep = np.flatnonzero(sa.std(axis=(1, 2)) > 0.02)
    sa, sb = sa[keep], sb[keep]
    keyed = np.concatenate([run_network(package, sa[i : i + 4], sb[i : i + 4], code) for i in range(0, len(sa), 4)])
    basis = public_basis(sa, sb, package.model_id) if package.public_strength else None

    def check(label, presentation, vol) -> dict:
        img = np.clip(view(vol)[keep], 0, 1)
        s, e = scores_and_erasure(img, package.identifier)
        public = (s >= package.threshold) | (e < ERASED)
        if package.public_strength:  # verify --sources: the public texture against the slices' sources
            public |= public_score(img, sa, sb, package.model_id, basis=basis) > PUBLIC_THRESHOLD
        traced = None if trace is None else trace_score(img, sa, sb, keyed, trace) > TRACE_THRESHOLD
        either = public | (traced if traced is not None else False)
        p = psnr(img, keyed)
        return {
            "output": label,
            "presentation": presentation,
            "slices": int(len(keep)),
            "public": float(public.mean()),
            "volume_score": float(np.median(s)),
            "volume_flagged": bool(np.median(s) >= package.threshold or np.median(e) < ERASED),
            "trace": None if traced is None else float(traced.mean()),
            "either": float(either.mean()),
            "psnr": float(p.mean()),
            "broken": float(np.mean(~either & (p >= quality_db))),
        }

    def fused(a, b):
        out = _array(fuse_volumes(a, b, package, None, device="cpu").image)
        if on_fusion:
            on_fusion()
        return out

    plain = fused(mri, pet)
    rows = [check("unkeyed, as stored", "-", plain)]
    mr = np.clip(view(np.maximum(normalize(va, robust_window(va)), normalize(vb, robust_window(vb))))[keep], 0, 1)
    rows.append(
        {
            "output": "sources' max rule",
            "presentation": "-",
            "slices": int(len(keep)),
            "psnr": float(psnr(mr, keyed).mean()),
        }
    )
    for presentation, present in (("header relabelled", relabel), ("geometry kept", permute_kept)):
        outs = [plain]
        for perm in RESLICE_PERMS[1:]:
            inv = list(np.argsort(perm))
            outs.append(np.transpose(fused(present(mri, perm), present(pet, perm)), inv))
            rows.append(check(f"axes {perm}, mapped back", presentation, outs[-1]))
        rows.append(check("median of 3 orientations", presentation, np.median(np.stack(outs), axis=0)))
    return rows


def reslice_pairs():
    """(label, MRI, PET): the bundled sample, and an axial slab of it stored in another array layout
    (DICOMOrient 'PIR': a second array order and direction for the same anatomy)."""
    import SimpleITK as sitk

    from amif.sample import sample_volumes

    mri, pet = sample_volumes()
    size = list(mri.GetSize())
    lo = int(0.4 * size[2])
    slab = [sitk.DICOMOrient(sitk.RegionOfInterest(v, size[:2] + [48], [0, 0, lo]), "PIR") for v in (mri, pet)]
    return [("bundled sample", mri, pet), ("sample slab, stored PIR", *slab)]


def reslice(target: Target, opts: AttackOptions, progress: bool = True) -> AttackResult:
    """The `reslice` family on the bundled sample volume and a slab of it in another layout (the target's
    package, code and trace; not its pairs)."""
    t0 = time.perf_counter()
    rows, data, met = [], [], True
    vols = reslice_pairs()
    with progress_bar(len(vols) * 5, "reslice", progress) as bar:
        for label, mri, pet in vols:
            for r in reslice_volume(
                target.package, target.code, mri, pet, target.trace, opts.quality_db, lambda: bar.update(1)
            ):
                r = {"volume": label, **r}
                data.append(r)
                if "public" not in r:
                    rows.append([label, r["output"], "-", "-", "-", "-", db(r["psnr"]), "-", "-"])
                    continue
                ok = None
                if r["output"].startswith("median"):
                    ok = _met(r)
                    met &= ok
                    r["met"] = ok
                rows.append(
                    [
                        label,
                        r["output"],
                        r["presentation"],
                        pct(r["public"]),
                        f"{r['volume_score']:.3f} ({'flagged' if r['volume_flagged'] else 'not flagged'})",
                        _trace_cell(r),
                        db(r["psnr"]),
                        pct(r["broken"]),
                        "-" if ok is None else yes_no(ok),
                    ]
                )
    medians = [d for d in data if d["output"].startswith("median")]
    summary = "; ".join(
        f"{d['volume']}, {d['presentation']}: verify {pct(d['public'])} of slices, trace "
        f"{'n/a' if d['trace'] is None else pct(d['trace'])}"
        for d in medians
    )
    return AttackResult(
        "reslice",
        "Reslicing volumes (axes permuted, fused, mapped back, median of 3 orientations)",
        f"the voxel-wise median of 3 orientations: verify flags >= {GOAL:.0%} and the owner's trace >= {GOAL:.0%} "
        "of axial slices",
        met,
        summary,
        [
            "volume",
            "output",
            "presentation",
            "verify flagged (axial slices)",
            "volume verdict (median score)",
            "trace flagged",
            "PSNR to keyed (dB)",
            "unflagged at keyed quality",
            "met",
        ],
        rows,
        data,
        [
            "Each volume is fused unkeyed as stored (axial slices in display orientation), then presented with its "
            "array axes permuted so that the volume path slices it along another axis: 'header relabelled' permutes "
            "the array and claims an identity direction (the world geometry changes; the attacker undoes it on the "
            "output array), 'geometry kept' permutes array and header together (SimpleITK PermuteAxes). Every "
            "output is mapped back to the stored layout; the three orientations are merged by a voxel-wise median. "
            "Checks run per axial slice with content (std > 0.02), as `amif verify` reads a volume's slices; the "
            "volume verdict is verify_volume's median rule. The keyed reference runs the owner's code on the same "
            "normalised display slices. Each orientation costs one unkeyed fusion of the volume."
        ],
        time.perf_counter() - t0,
    )
