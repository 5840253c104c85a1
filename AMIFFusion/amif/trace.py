"""The trace channel: a secret texture in unkeyed outputs that networks distilled from them inherit.

A student trained on the unkeyed outputs does not learn the visible identifier (it sits at fixed
slice coordinates, which a network trained on crops cannot see) and so learns the clean fusion. A
model trained with `amif train --trace-strength S` also adds S x g(A, B) to its unkeyed outputs: g is
a fixed random local function of the two sources (two small convolutions, high-passed, unit
scale) drawn from the owner's key secret. Being local, g is learned from crops with the fusion, so
a student carries it. Only the key's holder can look for it (`trace_score`): the correlation of the
image's detail, minus the keyed output's, with g, where the sources' and the keyed output's own
detail are regressed out of both; a score above TRACE_THRESHOLD says the image carries this
model's unkeyed texture. Keyed outputs do not (their score is 0 by construction), nor do other
fusions of the same sources.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .errors import AMIFError
from .keys import KeyFile, hkdf_sha256, load_key

# z above which an image carries the texture. Provisional: pixels are not independent, so z's spread without
# the texture is wider than 1; independently trained networks (the twins) reached 37 on 18 test pairs, other
# fusions and cleaned-up keyed outputs 19. Students of a trace model's unkeyed outputs mostly scored 48-205, but
# two of 18 outputs of one U-Net student stayed below 30 (tools/calibrate_trace.py, amif attack).
TRACE_THRESHOLD = 60.0
HIDDEN = 16  # channels of the texture's first convolution


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
    """g(A, B) for sources (n, 1, h, w) in [0, 1]: local (a 5x5-pixel footprint), so a crop's texture
    is the whole slice's texture cropped, away from the crop's border."""
    w1, b1, w2 = (w.to(a.device, a.dtype) for w in weights)
    x = F.pad(torch.cat([a, b], 1), (1, 1, 1, 1), mode="replicate")
    return detail(torch.tanh(2 * F.conv2d(F.conv2d(x, w1, b1).relu(), w2)))


def trace_scale(a: torch.Tensor, b: torch.Tensor, weights) -> float:
    """The texture's standard deviation on these sources: training adds strength / scale x g."""
    with torch.no_grad():
        return float(texture(a, b, weights).std())


def _residuals(regs: list[np.ndarray], *vs: np.ndarray) -> list[np.ndarray]:
    """Each of `vs` (flattened) minus its least-squares fit on a constant and the regressors `regs`."""
    q, _ = np.linalg.qr(np.stack([np.ones(regs[0].size)] + [r.ravel() for r in regs], 1))
    return [v.ravel() - q @ (q.T @ v.ravel()) for v in vs]


def trace_score(image: np.ndarray, a: np.ndarray, b: np.ndarray, keyed: np.ndarray, weights) -> np.ndarray:
    """One z per slice of `image` (n, h, w; or one h x w slice) with its sources and the owner's keyed
    output of them: the correlation of detail(image - keyed) with g(A, B), both with the detail of the
    sources, their max, their difference, the keyed output and its blur regressed out, times
    sqrt(pixels). Other fusions of the same sources score near 0; outputs carrying the texture high."""
    arrs = [np.asarray(x, np.float32) for x in (image, a, b, keyed)]
    if arrs[0].ndim == 2:
        arrs = [x[None] for x in arrs]
    t = [torch.from_numpy(x)[:, None] for x in arrs]
    img, ta, tb, tk = t
    with torch.no_grad():
        g = texture(ta, tb, weights)[:, 0].numpy()
        r = detail(img - tk)[:, 0].numpy()
        blur = tk - detail(tk)
        regs = [detail(x)[:, 0].numpy() for x in (ta, tb, torch.maximum(ta, tb), (ta - tb).abs(), tk, blur)]
    z = np.empty(len(g))
    for i in range(len(g)):
        gi, ri = _residuals([x[i] for x in regs], g[i], r[i])
        z[i] = gi @ ri / (np.sqrt((gi @ gi) * (ri @ ri)) + 1e-12) * np.sqrt(gi.size)
    return z


def trace_check(package, key, image: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The key holder's check of `image` (n, h, w) fused from sources `a`, `b` (n, h, w), all in [0, 1]:
    one trace score per slice (above TRACE_THRESHOLD: the texture is there). `key`: the owner's key
    file of this model, which the texture is drawn from and which gives the keyed reference."""
    from .fusion import run_network

    if not package.trace_strength:
        raise AMIFError(f"Model '{package.model_id}' has no trace channel (it was trained without --trace-strength): "
                        "there is no texture to look for.")
    key = key if isinstance(key, KeyFile) else load_key(key)
    if key.model_id != package.model_id or key.key_id != package.key_id:
        raise AMIFError(f"The trace check needs the owner's key of model '{package.model_id}' "
                        f"(key {package.key_id}); got key {key.key_id} of model '{key.model_id}'.")
    keyed = run_network(package, a, b, key.code())
    return trace_score(image, a, b, keyed, trace_weights(key.secret, key.model_id))
