"""The trace channel: a secret texture in unkeyed outputs that networks distilled from them inherit.

A student trained on the unkeyed outputs does not learn the visible identifier (it sits at fixed
slice coordinates, which a network trained on crops cannot see) and so learns the clean fusion. A
model trained with `amif train --trace-strength S` also adds S x g(A, B) to its unkeyed outputs: g is
a fixed random local function of the two sources (two small convolutions at a two-pixel stride,
smoothed, high-passed, unit scale) drawn from the owner's key secret. Being local, g is learned from
crops with the fusion, and being coarse, early in a student's training, so a student carries it.
Only the key's holder can look for it (`trace_score`): the correlation of the image's detail, minus
the keyed output's, with g, where the sources' and the keyed output's own detail are regressed out of
both; a score above TRACE_THRESHOLD says the image carries this model's unkeyed texture. Keyed
outputs do not (their score is 0 by construction), nor do other fusions of the same sources.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F

from .errors import AMIFError
from .keys import KeyFile, hkdf_sha256, load_key

# z above which an image carries the texture, in null-spread units (null_spread); provisional. How it was
# calibrated and its margins: docs/security.md, "Calibration".
TRACE_THRESHOLD = 40.0
HIDDEN = 16  # channels of the texture's first convolution
DECOYS = 32  # textures of other secrets that null_spread scores


def trace_weights(secret: bytes, model_id: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The texture's convolutions, drawn from the key secret (HKDF, bound to the model id)."""
    seed = int.from_bytes(hkdf_sha256(secret, b"amif-trace\0" + model_id.encode("utf-8"), 8), "big") >> 1
    gen = torch.Generator().manual_seed(seed)
    w1 = torch.randn(HIDDEN, 2, 3, 3, generator=gen) * 6
    b1 = torch.randn(HIDDEN, generator=gen) * 0.5
    w2 = torch.randn(1, HIDDEN, 1, 1, generator=gen) / 4
    return w1, b1, w2


def detail(x: torch.Tensor, k: int = 5) -> torch.Tensor:
    """x (n, 1, h, w) minus its k x k box mean (edges replicated): the high-pass the channel lives in."""
    return x - F.avg_pool2d(F.pad(x, (k // 2,) * 4, mode="replicate"), k, 1)


def texture(a: torch.Tensor, b: torch.Tensor, weights) -> torch.Tensor:
    """g(A, B) for sources (n, 1, h, w) in [0, 1]: a random two-layer function of the sources seen at a
    two-pixel stride (box-smoothed, then a dilated 3 x 3 convolution), smoothed and high-passed. Coarse
    enough that a student learns it early in its training and a blur keeps it; local (within 8 pixels),
    so a crop's texture is the whole slice's texture cropped, away from the crop's border."""
    w1, b1, w2 = (w.to(a.device, a.dtype) for w in weights)
    x = F.avg_pool2d(F.pad(torch.cat([a, b], 1), (0, 1, 0, 1), mode="replicate"), 2, 1)
    h = F.conv2d(F.pad(x, (2,) * 4, mode="replicate"), w1, b1, dilation=2).relu()
    t = torch.tanh(2 * F.conv2d(h, w2))
    k = torch.tensor([1.0, 2.0, 1.0], dtype=a.dtype, device=a.device)
    t = F.conv2d(F.pad(t, (1,) * 4, mode="replicate"), (k[:, None] * k / 16)[None, None])
    return detail(t, 9)


def trace_scale(a: torch.Tensor, b: torch.Tensor, weights) -> float:
    """The texture's standard deviation on these sources: training adds strength / scale x g."""
    with torch.no_grad():
        return float(texture(a, b, weights).std())


def _residuals(regs: list[np.ndarray], *vs: np.ndarray) -> list[np.ndarray]:
    """Each of `vs` (flattened) minus its least-squares fit on a constant and the regressors `regs`."""
    q, _ = np.linalg.qr(np.stack([np.ones(regs[0].size)] + [r.ravel() for r in regs], 1))
    return [v.ravel() - q @ (q.T @ v.ravel()) for v in vs]


def _fitted(image: np.ndarray, a: np.ndarray, b: np.ndarray, keyed: np.ndarray, textures: list):
    """Per slice: the residual detail(image - keyed) and each texture's g(A, B), all with the detail of the
    sources, their max, their difference, the keyed output and its blur regressed out."""
    arrs = [np.asarray(x, np.float32) for x in (image, a, b, keyed)]
    if arrs[0].ndim == 2:
        arrs = [x[None] for x in arrs]
    img, ta, tb, tk = (torch.from_numpy(x)[:, None] for x in arrs)
    with torch.no_grad():
        gs = [texture(ta, tb, w)[:, 0].numpy() for w in textures]
        r = detail(img - tk)[:, 0].numpy()
        regs = [detail(x)[:, 0].numpy() for x in (ta, tb, torch.maximum(ta, tb), (ta - tb).abs(), tk, tk - detail(tk))]
    for i in range(len(r)):
        ri, *gi = _residuals([x[i] for x in regs], r[i], *(g[i] for g in gs))
        yield ri, gi


def _z(g: np.ndarray, r: np.ndarray) -> float:
    return float(g @ r / (np.sqrt((g @ g) * (r @ r)) + 1e-12) * np.sqrt(g.size))


def trace_score(image: np.ndarray, a: np.ndarray, b: np.ndarray, keyed: np.ndarray, weights) -> np.ndarray:
    """One z per slice of `image` (n, h, w; or one h x w slice) with its sources and the owner's keyed
    output of them: the correlation of detail(image - keyed) with g(A, B), both with the detail of the
    sources, their max, their difference, the keyed output and its blur regressed out, times
    sqrt(pixels). Other fusions of the same sources score near 0; outputs carrying the texture high."""
    return np.array([_z(g, r) for r, (g,) in _fitted(image, a, b, keyed, [weights])])


def null_spread(image: np.ndarray, a: np.ndarray, b: np.ndarray, keyed: np.ndarray, decoys: int = DECOYS) -> np.ndarray:
    """Per slice, how far trace_score spreads on an image that does not carry the texture: the standard
    deviation of the scores of `decoys` textures drawn from other secrets. Neighbouring pixels are not
    independent, so this is wider than 1 for a structured image; for an image without the texture,
    trace_score / null_spread is about N(0, 1) (research/tools/calibrate_trace.py reads the threshold in these
    units). On an image that carries the texture it is inflated: networks that learned g also correlate
    with other textures of its family."""
    others = [trace_weights(hashlib.sha256(b"amif-trace-decoy%d" % i).digest(), "decoy") for i in range(decoys)]
    return np.array([np.std([_z(g, r) for g in gs]) for r, gs in _fitted(image, a, b, keyed, others)])


def trace_check(package, key, image: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The key holder's check of `image` (n, h, w) fused from sources `a`, `b` (n, h, w), all in [0, 1]:
    one trace score per slice (above TRACE_THRESHOLD: the texture is there). `key`: the owner's key
    file of this model, which the texture is drawn from and which gives the keyed reference."""
    from .inference import run_network

    if not package.trace_strength:
        raise AMIFError(
            f"Model '{package.model_id}' has no trace channel (it was trained without --trace-strength): "
            "there is no texture to look for."
        )
    key = key if isinstance(key, KeyFile) else load_key(key)
    if key.model_id != package.model_id or key.key_id != package.key_id:
        raise AMIFError(
            f"The trace check needs the owner's key of model '{package.model_id}' "
            f"(key {package.key_id}); got key {key.key_id} of model '{key.model_id}'."
        )
    keyed = run_network(package, a, b, key.code())
    return trace_score(image, a, b, keyed, trace_weights(key.secret, key.model_id))
