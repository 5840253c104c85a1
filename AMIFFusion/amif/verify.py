"""`verify`: does an image carry the model's identifier?

The score is the normalized correlation, over the band around the identifier's strokes, between
the image's fine detail and the expected stroke pattern, signed by the contrast the network
writes there (bright strokes on dark content, dark on bright). Clean images score near 0; a
marked one scores high. It needs the identifier text and layout only, not the sources.

A second check catches the identifier wiped off: inside the strokes an inpainted or smoothed-over
image has almost no fine detail, while the rest of the image keeps the anatomy's. The erasure ratio
(detail inside the strokes / detail elsewhere, over pixels with content) is about 1 on clean images
(the strokes are nowhere special), above 1 on marked ones and near 0 on wiped ones. An image is
flagged when it carries the identifier (score >= threshold) or shows it wiped (ratio < ERASED).
An attacker who paints texture back into the strokes defeats the second check (README, Security).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import AMIFError
from .identifier import identifier_mask

# erasure ratio below which the strokes count as wiped. Harvard train split, every 12th pair: keyed outputs,
# sources and keyed outputs after JPEG 30 or equalization >= 0.63; inpainted over the mask dilated 2-20 px <= 0.11
ERASED = 0.4
MIN_DETAIL = 1 / 255  # mean fine detail the reference region needs before a ratio means anything (else 1)


@dataclass(frozen=True)
class Verdict:
    score: float
    threshold: float
    erasure: float = 1.0  # fine detail inside the strokes / elsewhere (see the module text)

    @property
    def marked(self) -> bool:
        """The identifier is there."""
        return self.score >= self.threshold

    @property
    def erased(self) -> bool:
        """No identifier, but its strokes show it wiped off."""
        return not self.marked and self.erasure < ERASED

    @property
    def flagged(self) -> bool:
        """Not a clean output: marked or erased."""
        return self.marked or self.erased

    @property
    def state(self) -> str:
        return "marked" if self.marked else "erased" if self.erased else "clean"

    def __str__(self) -> str:
        text = f"{self.state} (score {self.score:.3f}, threshold {self.threshold:.3f}"
        return text + (f"; erasure ratio {self.erasure:.3f} < {ERASED})" if self.erased else ")")


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


def score_tensor(x, mask):
    """The score as a (differentiable) torch function: images x of shape (n, 1, h, w) in [0, 1] and
    the identifier's mask of shape (1, 1, h, w) -> scores (n,). `identifier_scores` is this on numpy."""
    import torch

    from .losses import contrast_colour, gaussian_blur

    h, w = x.shape[-2:]
    scale = min(h, w) / 256
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

    from .losses import gaussian_blur

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
    over the strokes' pixels with content, over its mean on the reference (`erasure_parts`); 1 (no
    evidence) where either has under 50 pixels or the reference is flat."""
    d, inner, ref = erasure_parts(x, mask)
    n_in, n_ref = inner.sum(1), ref.sum(1)
    d_in = (d * inner).sum(1) / n_in.clamp_min(1)
    d_ref = (d * ref).sum(1) / n_ref.clamp_min(1)
    enough = (n_in >= 50) & (n_ref >= 50) & (d_ref >= MIN_DETAIL)
    return (d_in / d_ref.clamp_min(MIN_DETAIL)).where(enough, x.new_ones(len(x)))


def verify_image(image: np.ndarray, identifier: str, threshold: float) -> Verdict:
    """One 2D image: grey (h, w) or RGB (h, w, 3), in [0, 1] (uint8 is scaled)."""
    from .color import luminance

    image = np.asarray(image)
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        image = luminance(image[..., :3])
    if image.ndim != 2:
        raise AMIFError(f"verify_image needs a 2D image; got shape {image.shape}.")
    score, erasure = scores_and_erasure(image[None], identifier)
    return Verdict(float(score[0]), threshold, float(erasure[0]))


def verify_volume(volume: np.ndarray, identifier: str, threshold: float, min_content: float = 0.02) -> Verdict:
    """A (z, y, x) volume in [0, 1]: the median score and erasure ratio over slices that have content."""
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3:
        raise AMIFError(f"verify_volume needs a 3D array; got shape {vol.shape}.")
    keep = [i for i in range(vol.shape[0]) if vol[i].std() > min_content]
    if not keep:
        return Verdict(0.0, threshold)
    step = max(1, 32 * 256 * 256 // (vol.shape[1] * vol.shape[2]))  # 32 slices of 256x256 at a time: memory bounded
    scores, erasure = (np.concatenate(r) for r in zip(*(scores_and_erasure(vol[keep[i : i + step]], identifier)
                                                       for i in range(0, len(keep), step))))
    return Verdict(float(np.median(scores)), threshold, float(np.median(erasure)))
