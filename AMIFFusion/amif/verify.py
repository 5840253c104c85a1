"""`verify`: does an image carry the model's identifier?

The score is the normalized correlation, over the band around the identifier's strokes, between
the image's fine detail and the expected stroke pattern, signed by the contrast the network
writes there (bright strokes on dark content, dark on bright). Clean images score near 0; a
marked one scores high. It needs the identifier text and layout only, not the sources.

A second check catches the identifier wiped off: inside the strokes an inpainted or smoothed-over
image has almost no fine detail, while the rest of the image keeps the anatomy's. The erasure ratio
(detail inside the strokes / detail elsewhere, over pixels with content) is about 1 on clean images
(the strokes are nowhere special), above 1 on marked ones and near 0 on wiped ones. An image is
flagged when it carries the identifier (|score| >= threshold, or a weaker score with strokes that
have the extra detail a written identifier gives them: small matrices score lower) or shows it
wiped (ratio < ERASED).
A negative score is the identifier written against the contrast the local content predicts (dark
strokes on the mid-grey background of a signed map under its window); clean images score near 0
either way.
An attacker who paints texture back into the strokes defeats the second check (docs/security.md).

A model trained with a mark shift (manifest `verify.shift`, pixels) has a second channel that lives
in the content rather than at fixed places: its unkeyed outputs move the whole image that many
pixels right and down. Given the two sources, `displacements` measures where the image's edges sit
against the edges of each source and of both combined (the peak of their normalized cross-correlation
over shifts of up to SHIFT_RADIUS pixels, refined to sub-pixel); an output moved by at least half the
model's shift right and down, against the reference it matches best, is flagged 'shifted' (the
reference that matches best, because the two modalities' edges do not always coincide: against the
combined edges alone some sources sit 0.5-2 px off their own pairs).
Fusing outputs sit at 0 (the fusion loss ties them to the sources). Erasing the strokes leaves the
shift; so does a student network trained to copy unkeyed outputs (a translation is local, unlike the
identifier's layout). An attacker who knows the shift (it is in the manifest) moves the image back
(docs/security.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import AMIFError
from .identifier import identifier_mask

# erasure ratio below which the strokes count as wiped (its calibration: docs/security.md, "Calibration")
ERASED = 0.4
# a score of at least WEAK x threshold counts as the identifier when the erasure ratio is at least STROKE_DETAIL
# (small matrices score lower); keyed outputs and sources stay well under WEAK x threshold (docs/security.md)
WEAK = 0.5
STROKE_DETAIL = 1.5
MIN_DETAIL = 1 / 255  # mean fine detail the reference region needs before a ratio means anything (else 1)
NO_EVIDENCE = 1.0  # the erasure ratio of an image without enough content for one (erasure_tensor)
SHIFT_RADIUS = 3  # largest displacement `displacement` looks for, in pixels along each axis
SHIFT_SLICES = 16  # about this many slices of a volume get their displacement measured (it costs ~ a network pass)


@dataclass(frozen=True)
class Verdict:
    score: float
    threshold: float
    erasure: float = 1.0  # fine detail inside the strokes / elsewhere (see the module text)
    displacement: float = 0.0  # the content's move right and down against the sources, px (min of the two)
    shift: int = 0  # the model's mark shift, px (0: the model has no such channel, or no sources were given)
    texture: float = 0.0  # the public texture's score against the sources (trace.public_score; 0: not measured)
    trace: float = 0.0  # the key holder's trace score (trace.trace_check; 0: not measured)
    nonfinite: int = 0  # NaN or infinite values of the image, scored as the low end (intensity.unit_values)

    @property
    def marked(self) -> bool:
        """The identifier is there, in either contrast: |score| >= threshold, or |score| >= WEAK x threshold
        with the strokes' extra fine detail of a written identifier (erasure ratio >= STROKE_DETAIL)."""
        s = abs(self.score)
        return s >= self.threshold or (s >= WEAK * self.threshold and self.erasure >= STROKE_DETAIL)

    @property
    def erased(self) -> bool:
        """No identifier, but its strokes show it wiped off."""
        return not self.marked and self.erasure < ERASED

    @property
    def shifted(self) -> bool:
        """No identifier and no wiped strokes, but the content sits where the model's unkeyed outputs put it."""
        return not (self.marked or self.erased) and is_shifted(self.displacement, self.shift)

    @property
    def textured(self) -> bool:
        """None of those, but the sources show the model's public texture in the image: made from unkeyed
        outputs, whose identifier was taken out (trace.public_score)."""
        if not self.texture:  # not measured: amif.trace (and torch) need not load
            return False
        from .trace import PUBLIC_THRESHOLD

        return not (self.marked or self.erased or self.shifted) and self.texture > PUBLIC_THRESHOLD

    @property
    def traced(self) -> bool:
        """None of those, but the key's holder finds the model's unkeyed texture (a student of its outputs)."""
        if not self.trace:  # not measured: amif.trace (and torch) need not load
            return False
        from .trace import TRACE_THRESHOLD

        return not (self.marked or self.erased or self.shifted or self.textured) and self.trace > TRACE_THRESHOLD

    @property
    def flagged(self) -> bool:
        """Not a clean output: marked, erased, shifted, textured or traced."""
        return self.marked or self.erased or self.shifted or self.textured or self.traced

    @property
    def state(self) -> str:
        states = ("marked", "erased", "shifted", "textured", "traced")
        return next((k for k in states if getattr(self, k)), "clean")

    def __str__(self) -> str:
        text = f"{self.state} (score {self.score:.3f}, threshold {self.threshold:.3f}"
        if self.erased:
            text += f"; erasure ratio {self.erasure:.3f} < {ERASED}"
        elif self.shifted:
            text += f"; content moved {self.displacement:.2f} px, the model's unkeyed shift is {self.shift} px"
        elif self.textured:
            from .trace import PUBLIC_THRESHOLD

            text += f"; public texture score {self.texture:.1f}, threshold {PUBLIC_THRESHOLD:g}"
        elif self.trace:
            from .trace import TRACE_THRESHOLD

            text += f"; trace score {self.trace:.1f}, threshold {TRACE_THRESHOLD:g}"
        if self.nonfinite:
            text += f"; {self.nonfinite} NaN or infinite values ignored"
        return text + ")"


def is_shifted(displacement, shift: int):
    """Displacement(s) at least half the model's mark shift (never, for a model without one)."""
    return (np.asarray(displacement) >= shift / 2) & (shift > 0)


def _stack(images: np.ndarray, identifier: str):
    import torch

    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3 or min(images.shape[1:]) < 16:
        raise AMIFError("verify needs 2D images of at least 16 x 16 pixels.")
    _, h, w = images.shape
    mask = torch.from_numpy(identifier_mask(identifier, h, w))[None, None]
    return torch.from_numpy(np.nan_to_num(images))[:, None], mask


def identifier_scores(images: np.ndarray, identifier: str) -> np.ndarray:
    """Scores of a stack of grey images in [0, 1], shape (n, h, w) -> (n,)."""
    return score_tensor(*_stack(images, identifier)).numpy()


def scores_and_erasure(images: np.ndarray, identifier: str) -> tuple[np.ndarray, np.ndarray]:
    """Scores and erasure ratios of a stack of grey images in [0, 1], shape (n, h, w) -> (n,), (n,)."""
    x, mask = _stack(images, identifier)
    return score_tensor(x, mask).numpy(), erasure_tensor(x, mask).numpy()


def score_tensor(x, mask, scale: float | None = None):
    """The score as a (differentiable) torch function: images x of shape (n, 1, h, w) in [0, 1] and
    the identifier's mask of shape (1, 1, h, w) or (n, 1, h, w) -> scores (n,). `identifier_scores` is
    this on numpy. `scale`: the image's pixel size against a 256-pixel slice (default: its own size;
    1 for a crop of a 256-pixel slice)."""
    import torch

    from .filters import contrast_colour, gaussian_blur

    h, w = x.shape[-2:]
    scale = min(h, w) / 256 if scale is None else scale
    m = mask.to(x)
    sigma = max(1.0, 2.0 * scale)
    detail = x - gaussian_blur(x, sigma)
    pattern = m - gaussian_blur(m, sigma)
    sign = 2 * contrast_colour(x, 6.0 * scale) - 1
    region = (gaussian_blur(m, sigma) > 0.01).to(x.dtype)
    d = (detail * region).flatten(1)
    p = (pattern * region).flatten(1)
    num = (d * sign.flatten(1) * p).sum(1)
    den = torch.sqrt((d * d).sum(1) * (p * p).sum(1)).clamp_min(1e-12)
    return num / den


def erasure_parts(x, mask):
    """What the erasure ratio compares, shapes as in `score_tensor`: the fine detail |x - blur(x)|
    and the 0/1 maps of the strokes' pixels with content and of the pixels with content more than
    4 px (at 256 pixels) from the strokes (the reference), each (n, h * w)."""
    import torch.nn.functional as F

    from .filters import gaussian_blur

    h, w = x.shape[-2:]
    scale = min(h, w) / 256
    strokes = (mask.to(x) > 0.02).to(x.dtype)
    r = round(4 * scale)
    near = F.max_pool2d(strokes, 2 * r + 1, 1, r)
    detail = (x - gaussian_blur(x, max(1.0, scale))).abs()
    content = (gaussian_blur(x, 3.0 * scale) > 0.05).to(x.dtype)
    return detail.flatten(1), (strokes * content).flatten(1), ((1 - near) * content).flatten(1)


def erasure_tensor(x, mask):
    """The erasure ratio as a torch function, shapes as in `score_tensor` -> (n,): mean fine detail
    over the strokes' pixels with content, over its mean on the reference (`erasure_parts`); exactly
    NO_EVIDENCE (1) where either has under 50 pixels or the reference is flat."""
    d, inner, ref = erasure_parts(x, mask)
    n_in, n_ref = inner.sum(1), ref.sum(1)
    d_in = (d * inner).sum(1) / n_in.clamp_min(1)
    d_ref = (d * ref).sum(1) / n_ref.clamp_min(1)
    enough = (n_in >= 50) & (n_ref >= 50) & (d_ref >= MIN_DETAIL)
    return (d_in / d_ref.clamp_min(MIN_DETAIL)).where(enough, x.new_full((len(x),), NO_EVIDENCE))


def displacement_tensor(x, a, b, strokes=None, radius: int = SHIFT_RADIUS):
    """How far the content of images x sits right and down of the sources' (all (n, 1, h, w) in
    [0, 1]): per image (dx, dy) in pixels against the reference its edges match best -- the sources'
    edges combined by maximum, A's or B's -- shape (n, 2). Edge maps (Sobel of a slightly blurred
    image) are correlated at every whole-pixel shift up to `radius` on the interior, leaving out the
    identifier's strokes (`strokes`, its mask (1, 1, h, w): they have no counterpart in the sources),
    and the peak is refined by a parabola along each axis. No edges: (0, 0)."""
    import torch
    import torch.nn.functional as F

    from .filters import gaussian_blur, sobel

    h, w = x.shape[-2:]
    sigma = max(1.0, min(h, w) / 256)
    edges = lambda t: sobel(gaussian_blur(t.float(), sigma))  # noqa: E731
    ex, ea, eb = edges(x), edges(a), edges(b)
    r = radius
    keep = torch.ones_like(ex[:1])
    if strokes is not None:  # the strokes and their edges' reach, plus the largest shift looked for
        reach = r + math.ceil(2 * sigma) + 1
        keep = 1 - F.max_pool2d((strokes.to(ex) > 0.02).to(ex), 2 * reach + 1, 1, reach)
    keep = keep[..., r : h - r, r : w - r].flatten(1)
    n_keep = keep.sum(1, keepdim=True).clamp_min(1)
    centred = lambda v: (v - (v * keep).sum(1, keepdim=True) / n_keep) * keep  # noqa: E731
    core = centred(ex[..., r : h - r, r : w - r].flatten(1))
    peaks = [_ncc_peak(core, es, centred, r) for es in (torch.maximum(ea, eb), ea, eb)]
    d, best = torch.stack([p[0] for p in peaks], 1), torch.stack([p[1] for p in peaks], 1).argmax(1)
    return d[torch.arange(len(d)), best].to(x.dtype)


def _ncc_peak(core, es, centred, r: int):
    """(dx, dy) of the peak of the normalized cross-correlation of `core` (the image's centred interior
    edges, (n, pixels)) with reference edges `es` (n, 1, h, w) moved by up to r pixels ((0, 0) if flat),
    and the peak's value, shapes (n, 2) and (n,)."""
    import torch

    h, w = es.shape[-2:]
    ncc = []
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):  # content moved by (dx, dy): x(p) = reference(p - d)
            ref = centred(es[..., r - dy : h - r - dy, r - dx : w - r - dx].flatten(1))
            den = torch.sqrt((core * core).sum(1) * (ref * ref).sum(1)).clamp_min(1e-12)
            ncc.append((core * ref).sum(1) / den)
    c = torch.stack(ncc, 1).view(-1, 2 * r + 1, 2 * r + 1)  # (n, dy, dx)
    top, peak = c.flatten(1).max(1)
    iy, ix = peak // (2 * r + 1), peak % (2 * r + 1)

    def refine(lo, mid, hi):
        curv = lo - 2 * mid + hi
        return torch.where(curv < 0, 0.5 * (lo - hi) / curv.clamp_max(-1e-12), torch.zeros_like(mid)).clamp(-0.5, 0.5)

    rows = torch.arange(len(c))
    cy, cx = iy.clamp(1, 2 * r - 1), ix.clamp(1, 2 * r - 1)
    fx = torch.where((ix > 0) & (ix < 2 * r), refine(c[rows, iy, cx - 1], c[rows, iy, cx], c[rows, iy, cx + 1]), 0.0)
    fy = torch.where((iy > 0) & (iy < 2 * r), refine(c[rows, cy - 1, ix], c[rows, cy, ix], c[rows, cy + 1, ix]), 0.0)
    d = torch.stack([ix - r + fx, iy - r + fy], 1)
    flat = (core.abs().sum(1) == 0) | (top <= 0)
    return torch.where(flat[:, None], torch.zeros_like(d), d), top


def diagonal_move(x, a, b, strokes=None):
    """The content's move right and down that both axes agree on: min(dx, dy) of `displacement_tensor`,
    (n,). An image equal to one of its sources gets 0 (it matches that source best)."""
    return displacement_tensor(x, a, b, strokes).amin(1)


def displacements(images: np.ndarray, a: np.ndarray, b: np.ndarray, identifier: str | None = None) -> np.ndarray:
    """`diagonal_move` on numpy stacks (n, h, w) in [0, 1] -> (n,); with `identifier`, its strokes are left out."""
    import torch

    stacks = [np.asarray(v, np.float32) for v in (images, a, b)]
    if any(v.ndim != 3 for v in stacks) or len({v.shape for v in stacks}) != 1:
        raise AMIFError(
            f"The image and its two sources must be stacks of the same shape; got "
            f"{', '.join(str(v.shape) for v in stacks)}."
        )
    if min(stacks[0].shape[1:]) < 4 * SHIFT_RADIUS:
        raise AMIFError(f"Measuring a shift needs images of at least {4 * SHIFT_RADIUS} pixels a side.")
    t = [torch.from_numpy(np.nan_to_num(v))[:, None] for v in stacks]
    strokes = torch.from_numpy(identifier_mask(identifier, *stacks[0].shape[1:]))[None, None] if identifier else None
    with torch.inference_mode():
        return diagonal_move(*t, strokes).numpy()


def verify_image(image: np.ndarray, identifier: str, threshold: float, sources=None, shift: int = 0) -> Verdict:
    """One 2D image: grey (h, w) or RGB (h, w, 3) of any real values, mapped to [0, 1] as
    `intensity.unit_values` does (uint8 / 255, values in [0, 1] as they are, others by a robust
    percentile window; NaN and infinite values ignored and counted, mostly such values an AMIFError).
    With `sources` (the two grey images it was fused from, in [0, 1]) and the model's `shift`, the
    shift is measured too."""
    from .color import luminance
    from .intensity import unit_values

    image, nonfinite = unit_values(image)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        image = luminance(image[..., :3])
    if image.ndim != 2:
        raise AMIFError(f"verify_image needs a 2D image; got shape {image.shape}.")
    score, erasure = scores_and_erasure(image[None], identifier)
    moved = 0.0
    if sources is not None and shift:
        moved = float(displacements(image[None], *(np.asarray(s)[None] for s in sources), identifier)[0])
    return Verdict(
        float(score[0]), threshold, float(erasure[0]), moved, shift if sources is not None else 0, nonfinite=nonfinite
    )


def verify_volume(
    volume: np.ndarray,
    identifier: str,
    threshold: float,
    min_content: float = 0.02,
    displacement: np.ndarray | None = None,
    shift: int = 0,
) -> Verdict:
    """A (z, y, x) volume of any real values, mapped to [0, 1] as `intensity.unit_values` does (a fused
    output, in [0, 1], as it is; others by a robust percentile window, so that a few edited voxels
    cannot flip the verdict; NaN and infinite values ignored and counted, mostly such values an
    AMIFError): `volume_verdict` of the slices that have content (standard deviation above
    `min_content`); with `displacement` (per slice, (z,), from `displacements` against the sources; NaN
    where not measured) and the model's `shift`, the displacements of the same slices too."""
    from .intensity import unit_values

    if np.ndim(volume) != 3:
        raise AMIFError(f"verify_volume needs a 3D array; got shape {np.shape(volume)}.")
    vol, nonfinite = unit_values(volume, "The volume")
    keep = [i for i in range(vol.shape[0]) if vol[i].std() > min_content]
    if not keep:
        return Verdict(0.0, threshold, nonfinite=nonfinite)
    step = max(1, 32 * 256 * 256 // (vol.shape[1] * vol.shape[2]))  # 32 slices of 256x256 at a time: memory bounded
    scores, erasure = (
        np.concatenate(r)
        for r in zip(*(scores_and_erasure(vol[keep[i : i + step]], identifier) for i in range(0, len(keep), step)))
    )
    d = None if displacement is None else np.asarray(displacement, np.float64)[keep]
    return volume_verdict(scores, erasure, threshold, d, shift, nonfinite)


def volume_verdict(scores, erasure, threshold: float, displacement=None, shift: int = 0, nonfinite: int = 0) -> Verdict:
    """A volume's verdict from its scored slices' scores and erasure ratios ((k,) each, slices with
    content only) and, with the model's `shift`, their displacements ((k,), NaN where not measured):
      score: the median over slices of |score|, so that a volume whose slices carry the identifier in
        both contrasts (bright strokes on anatomy, dark ones on a signed map's grey background outside
        the brain) is not scored near 0 by slices of opposite sign;
      erasure: the median over the slices where the ratio has evidence (not NO_EVIDENCE: enough stroke
        and reference pixels with content); NO_EVIDENCE when none has;
      displacement: the median of the measured ones (0 when none is).
    No slices: score 0, a clean verdict."""
    scores, erasure = np.asarray(scores, np.float64), np.asarray(erasure, np.float64)
    if not scores.size:
        return Verdict(0.0, threshold, nonfinite=nonfinite)
    evident = erasure[erasure != NO_EVIDENCE]
    moved = 0.0
    if displacement is not None:
        d = np.asarray(displacement, np.float64)
        d = d[np.isfinite(d)]
        moved = float(np.median(d)) if d.size else 0.0
    return Verdict(
        float(np.median(np.abs(scores))),
        threshold,
        float(np.median(evident)) if evident.size else NO_EVIDENCE,
        moved,
        shift if displacement is not None else 0,
        nonfinite=nonfinite,
    )
