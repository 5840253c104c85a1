"""`verify`: does an image carry the model's identifier?

The score is the normalized correlation, over the band around the identifier's strokes, between
the image's fine detail and the expected stroke pattern, signed by the contrast the network
writes there (bright strokes on dark content, dark on bright). Clean images score near 0; a
marked one scores high. It needs the identifier text and layout only, not the sources.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import AMIFError
from .identifier import identifier_mask


@dataclass(frozen=True)
class Verdict:
    score: float
    threshold: float

    @property
    def marked(self) -> bool:
        return self.score >= self.threshold

    @property
    def state(self) -> str:
        return "marked" if self.marked else "clean"

    def __str__(self) -> str:
        return f"{self.state} (score {self.score:.3f}, threshold {self.threshold:.3f})"


def identifier_scores(images: np.ndarray, identifier: str) -> np.ndarray:
    """Scores of a stack of grey images in [0, 1], shape (n, h, w) -> (n,)."""
    import torch

    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3 or min(images.shape[1:]) < 16:
        raise AMIFError("verify needs 2D images of at least 16 x 16 pixels.")
    n, h, w = images.shape
    x = torch.from_numpy(np.nan_to_num(images))[:, None]
    m = torch.from_numpy(identifier_mask(identifier, h, w))[None, None]
    return score_tensor(x, m).numpy()


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
    return Verdict(float(identifier_scores(image[None], identifier)[0]), threshold)


def verify_volume(volume: np.ndarray, identifier: str, threshold: float, min_content: float = 0.02) -> Verdict:
    """A (z, y, x) volume in [0, 1]: the median score over slices that have content."""
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3:
        raise AMIFError(f"verify_volume needs a 3D array; got shape {vol.shape}.")
    keep = [i for i in range(vol.shape[0]) if vol[i].std() > min_content]
    if not keep:
        return Verdict(0.0, threshold)
    step = max(1, 32 * 256 * 256 // (vol.shape[1] * vol.shape[2]))  # 32 slices of 256x256 at a time: memory bounded
    scores = np.concatenate([identifier_scores(vol[keep[i : i + step]], identifier)
                             for i in range(0, len(keep), step)])
    return Verdict(float(np.median(scores)), threshold)
