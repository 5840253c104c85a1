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

Textures that follow the anatomy. The identifier sits at slice coordinates, so an attacker who queries
flipped, turned or shifted copies of the inputs and undoes each move on the output gets the strokes over
different anatomy in every copy, and a per-pixel merge keeps the copies without them. A texture is a
function of the local content instead: a dihedral one (`trace_weights(..., dihedral=True)`, Texture) is
moved exactly as its sources are moved, so every copy carries it over the same anatomy and no merge of
them drops it. A model trained with `--dihedral` draws its trace of that kind and, with
`--public-strength P`, also writes P x its public texture (`public_weights`: drawn from a published
secret and the model id), which anyone holding the two sources can look for (`public_score`, in the
spread of other textures of the family; above PUBLIC_THRESHOLD it is there).
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .errors import AMIFError
from .keys import KeyFile, hkdf_sha256, load_key

# z above which an image carries the texture, in null-spread units (null_spread); provisional. How it was
# calibrated and its margins: docs/security.md, "Calibration".
TRACE_THRESHOLD = 40.0
# public_score (in null-spread units) above which an image carries the model's public texture; provisional
PUBLIC_THRESHOLD = 8.0
HIDDEN = 16  # channels of the texture's first convolution
DECOYS = 32  # textures of other secrets that null_spread scores
PUBLIC_SECRET = hashlib.sha256(b"amif-public-texture").digest()
WAVES = 2  # grey-value sine waves per source that a dihedral texture sees
OMEGA = (4.0, 10.0)  # their angular frequencies, per unit of grey value


class Texture(NamedTuple):
    """The weights of one texture g. A dihedral texture (`omega` set) also sees random sine waves of the
    sources' grey values and pools its first layer over the eight flips and rotations of its kernels, so
    g of a flipped, rotated or shifted pair is g moved the same way: it follows the anatomy."""

    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    omega: torch.Tensor | None = None  # (WAVES, 2) angular frequencies of the grey-value waves (dihedral)
    phase: torch.Tensor | None = None  # (WAVES, 2) their phases

    @property
    def dihedral(self) -> bool:
        return self.omega is not None


def trace_weights(secret: bytes, model_id: str, dihedral: bool = False) -> Texture:
    """The texture's weights, drawn from the key secret (HKDF, bound to the model id); `dihedral`: the
    kind that follows the anatomy (Texture), drawn from a stream of its own."""
    label = b"amif-trace-d4\0" if dihedral else b"amif-trace\0"
    seed = int.from_bytes(hkdf_sha256(secret, label + model_id.encode("utf-8"), 8), "big") >> 1
    gen = torch.Generator().manual_seed(seed)
    omega = phase = None
    waves = WAVES if dihedral else 0
    if dihedral:
        omega = OMEGA[0] + torch.rand(WAVES, 2, generator=gen) * (OMEGA[1] - OMEGA[0])
        phase = torch.rand(WAVES, 2, generator=gen) * 2 * np.pi
    w1 = torch.randn(HIDDEN, 2 + 2 * waves, 3, 3, generator=gen) * 6
    if waves:
        w1 = w1 / np.sqrt(1 + waves)
    b1 = torch.randn(HIDDEN, generator=gen) * 0.5
    w2 = torch.randn(1, HIDDEN, 1, 1, generator=gen) / 4
    return Texture(w1, b1, w2, omega, phase)


def public_weights(model_id: str) -> Texture:
    """The public texture of a model: dihedral, drawn from a published secret, so that anyone holding the
    sources can look for it (public_score)."""
    return trace_weights(PUBLIC_SECRET, model_id, dihedral=True)


def detail(x: torch.Tensor, k: int = 5) -> torch.Tensor:
    """x (n, 1, h, w) minus its k x k box mean (edges replicated): the high-pass the channel lives in."""
    return x - F.avg_pool2d(F.pad(x, (k // 2,) * 4, mode="replicate"), k, 1)


def texture(a: torch.Tensor, b: torch.Tensor, weights: Texture) -> torch.Tensor:
    """g(A, B) for sources (n, 1, h, w) in [0, 1]: a random two-layer function of the sources seen at a
    two-pixel stride (smoothed, then a dilated 3 x 3 convolution), smoothed and high-passed. Coarse
    enough that a student learns it early in its training and a blur keeps it; local (within 8 pixels),
    so a crop's texture is the whole slice's texture cropped, away from the crop's border. A dihedral
    texture smooths with a centred 3 x 3 binomial (not a 2 x 2 box), adds sine waves of the smoothed grey
    values as inputs, averages its first layer over the eight turns of its kernels (Texture) and high-passes
    before the tanh too (local within 24 pixels)."""
    w1, b1, w2 = (w.to(a.device, a.dtype) for w in weights[:3])
    k = torch.tensor([1.0, 2.0, 1.0], dtype=a.dtype, device=a.device)
    k2 = k[:, None] * k / 16
    x = torch.cat([a, b], 1)
    if not weights.dihedral:
        x = F.avg_pool2d(F.pad(x, (0, 1, 0, 1), mode="replicate"), 2, 1)
        h = F.conv2d(F.pad(x, (2,) * 4, mode="replicate"), w1, b1, dilation=2).relu()
    else:
        x = F.conv2d(F.pad(x, (1,) * 4, mode="replicate"), k2.expand(2, 1, 3, 3), groups=2)
        om, ph = (v.to(a.device, a.dtype).reshape(1, -1, 1, 1) for v in (weights.omega, weights.phase))
        x = torch.cat([x, torch.sin(x.repeat(1, WAVES, 1, 1) * om + ph)], 1)
        turns = torch.cat([torch.rot90(v, r, (-2, -1)) for v in (w1, w1.flip(-1)) for r in range(4)])
        h = F.conv2d(F.pad(x, (2,) * 4, mode="replicate"), turns, b1.repeat(8), dilation=2).relu()
        h = h.unflatten(1, (8, len(b1))).mean(1)
    t = F.conv2d(h, w2)
    t = torch.tanh(2 * (detail(t, 33) if weights.dihedral else t))  # centred, a dihedral texture never saturates flat
    t = F.conv2d(F.pad(t, (1,) * 4, mode="replicate"), k2[None, None])
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


def public_basis(a: np.ndarray, b: np.ndarray, model_id: str, decoys: int = DECOYS) -> list:
    """What public_score needs of the sources (n, h, w) alone, per slice: an orthonormal basis of the
    regressors and the detail of the public texture and of `decoys` decoys with them regressed out. Worth
    keeping where many images of the same sources are scored (about 10 MB per 256 x 256 slice)."""
    ta, tb = (torch.from_numpy(np.asarray(x, np.float32).reshape(-1, *np.shape(x)[-2:]))[:, None] for x in (a, b))
    ws = [public_weights(model_id)] + _decoys(decoys, True)
    out = []
    for i in range(len(ta)):  # a slice at a time: a texture's hidden layer is 128 channels of the slice
        sa, sb = ta[i : i + 1], tb[i : i + 1]
        with torch.no_grad():
            gs = [detail(texture(sa, sb, w)).ravel().numpy() for w in ws]
            regs = [detail(x).ravel().numpy() for x in (sa, sb, torch.maximum(sa, sb), (sa - sb).abs())]
        q = np.linalg.qr(np.stack([np.ones(regs[0].size)] + regs, 1))[0].astype(np.float32)
        out.append((q, np.stack([g - q @ (q.T @ g) for g in gs])))
    return out


def public_score(
    image: np.ndarray, a: np.ndarray, b: np.ndarray, model_id: str, decoys: int = DECOYS, basis: list | None = None
) -> np.ndarray:
    """One score per slice of `image` (n, h, w; or one h x w slice) for the model's public texture, from the
    sources alone: z, the correlation of detail(image - max(A, B)) with detail(g(A, B)) (the detail of the
    sources, their max and their difference regressed out of both) times sqrt(pixels), over the spread of
    the same z for `decoys` dihedral textures of other secrets on the residual with its component along g
    removed (as null_spread, but not inflated where the image carries g). About N(0, 1) for an image
    without the texture; 0 where the image has no detail of its own (the max rule). Above PUBLIC_THRESHOLD:
    it is there. `basis`: public_basis of these sources, if kept."""
    img = np.asarray(image, np.float32).reshape(-1, *np.shape(image)[-2:])
    a, b = (np.asarray(x, np.float32).reshape(img.shape) for x in (a, b))
    basis = public_basis(a, b, model_id, decoys) if basis is None else basis
    with torch.no_grad():
        rs = detail(torch.from_numpy(img - np.maximum(a, b))[:, None])[:, 0].numpy()
    out = []
    for r, (q, gs) in zip(rs, basis):
        r = r.ravel() - q @ (q.T @ r.ravel())
        g, others = gs[0], gs[1:]
        rest = r - (g @ r) / (g @ g + 1e-12) * g  # the decoys' spread without g: other textures of the family
        spread = np.std([_z(o, rest) for o in others])  # correlate with g, which would inflate it where g is
        out.append(_z(g, r) / spread if spread > 0 else 0.0)
    return np.array(out)


def _decoys(n: int, dihedral: bool) -> list[Texture]:
    return [trace_weights(hashlib.sha256(b"amif-trace-decoy%d" % i).digest(), "decoy", dihedral) for i in range(n)]


def null_spread(image: np.ndarray, a: np.ndarray, b: np.ndarray, keyed: np.ndarray, decoys: int = DECOYS) -> np.ndarray:
    """Per slice, how far trace_score spreads on an image that does not carry the texture: the standard
    deviation of the scores of `decoys` textures drawn from other secrets. Neighbouring pixels are not
    independent, so this is wider than 1 for a structured image; for an image without the texture,
    trace_score / null_spread is about N(0, 1) (research/tools/calibrate_trace.py reads the threshold in these
    units). On an image that carries the texture it is inflated: networks that learned g also correlate
    with other textures of its family."""
    others = _decoys(decoys, False)
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
    return trace_score(image, a, b, keyed, trace_weights(key.secret, key.model_id, package.dihedral))
