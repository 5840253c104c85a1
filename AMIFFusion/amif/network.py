"""AMIFNet: a key-modulated fusion network with a content-conditioned watermark memory.

One forward pass for every key state. The 256-value key code goes through a fixed random
sinusoidal embedding (a one-bit change moves it far) and a small MLP that gives FiLM scales and
shifts for every decoder stage; the all-zero code means "no key". The watermark memory is read at
coordinates normalized to the whole slice (so the identifier keeps one layout at any size and
on crops) and mixed with learned slots chosen by the local content. Its read also gates the
encoder features, so the clean path depends on it as much as the marked one: no single module
can be zeroed to turn the watermark off. There is no branch on the key anywhere.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class NetConfig:
    c1: int = 12  # full-resolution channels
    c2: int = 24  # 1/2 resolution
    c3: int = 48  # 1/4 resolution
    decoder_width: int = 1  # decoder stages have decoder_width * (c3, c2, c1) channels
    mem_channels: int = 8
    mem_size: int = 128  # spatial memory grid (mem_size x mem_size)
    mem_slots: int = 16
    key_bits: int = 256
    key_features: int = 512
    key_hidden: int = 128
    key_omega: float = 1.0  # phase change per flipped bit, in units of the embedding's std

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> NetConfig:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


def conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1)


def act(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


def slice_coords(n: int, h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Pixel-centre coordinates in [-1, 1] over the whole slice, shape (n, 2, h, w): (x, y)."""
    ys = (torch.arange(h, device=device, dtype=dtype) * 2 + 1) / h - 1
    xs = (torch.arange(w, device=device, dtype=dtype) * 2 + 1) / w - 1
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy]).unsqueeze(0).expand(n, -1, -1, -1)


def decoder_channels(cfg: NetConfig) -> list[int]:
    """Channels of the decoder's three stages, coarse to fine (each one FiLM-modulated by the key)."""
    return [cfg.decoder_width * c for c in (cfg.c3, cfg.c2, cfg.c1)]


class KeyEmbedding(nn.Module):
    """Code (n, 256) -> FiLM parameters for every decoder stage.

    A fixed random projection followed by sin: flipping one bit shifts every phase by about
    2*omega, so near-miss codes land far from the true code. The MLP after it is learned.
    """

    def __init__(self, cfg: NetConfig, film_sizes: list[int]):
        super().__init__()
        g = torch.Generator().manual_seed(20231)
        proj = torch.randn(cfg.key_bits, cfg.key_features, generator=g) * cfg.key_omega
        self.register_buffer("proj", proj)
        self.register_buffer("phase", torch.rand(cfg.key_features, generator=g) * 2 * math.pi)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.key_features, cfg.key_hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(cfg.key_hidden, 2 * sum(film_sizes)),
        )
        self.sizes = [s for c in film_sizes for s in (c, c)]

    def phases(self, code: torch.Tensor) -> torch.Tensor:
        """The embedding's angles: sin of them is what the MLP reads."""
        return code @ self.proj + self.phase

    @staticmethod
    def cosine(phases: torch.Tensor, key_phases: torch.Tensor) -> torch.Tensor:
        """Cosine of the embedding at `phases` ((n, F) or (F,)) to the one at the key's angles: how near a
        code's input to the MLP is to the owner's (where a forger's descent goes)."""
        return torch.nn.functional.cosine_similarity(torch.sin(phases), torch.sin(key_phases), dim=-1)

    def forward(self, code: torch.Tensor, phases: torch.Tensor | None = None) -> list[torch.Tensor]:
        e = torch.sin(self.phases(code) if phases is None else phases)
        return list(self.mlp(e).split(self.sizes, dim=1))


class WatermarkMemory(nn.Module):
    """Spatial memory read at slice coordinates, mixed with content-selected slots.

    out = spatial(x, y) * (1 + slots[softmax(query(content))]): where the identifier is written
    and with which contrast both come out of the weights, the latter chosen by local content.
    """

    def __init__(self, cfg: NetConfig, content_channels: int):
        super().__init__()
        c = cfg.mem_channels
        self.spatial = nn.Parameter(torch.randn(1, c, cfg.mem_size, cfg.mem_size) * 0.1 + 1.0)
        self.query = nn.Conv2d(content_channels, c, 1)
        self.slot_keys = nn.Parameter(torch.randn(cfg.mem_slots, c) * 0.5)
        self.slot_values = nn.Parameter(torch.randn(cfg.mem_slots, c) * 0.1)

    def forward(self, coords: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        grid = coords.permute(0, 2, 3, 1)
        mem = self.spatial.expand(coords.shape[0], -1, -1, -1)
        spatial = F.grid_sample(mem, grid, mode="bilinear", padding_mode="border", align_corners=False)
        q = self.query(content)  # (n, c, h, w)
        attn = torch.einsum("nchw,kc->nkhw", q, self.slot_keys).softmax(dim=1)
        slots = torch.einsum("nkhw,kc->nchw", attn, self.slot_values)
        return spatial * (1 + slots)


class Encoder(nn.Module):
    """Key-free content encoder over (A, B, x, y); shared by every key state."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.e1 = conv(4, cfg.c1)
        self.e2a, self.e2b = conv(cfg.c1, cfg.c2, 2), conv(cfg.c2, cfg.c2)
        self.e3a, self.e3b = conv(cfg.c2, cfg.c3, 2), conv(cfg.c3, cfg.c3)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f1 = act(self.e1(x))
        f2 = act(self.e2b(act(self.e2a(f1))))
        f3 = act(self.e3b(act(self.e3a(f2))))
        return [f1, f2, f3]


class Decoder(nn.Module):
    """Coarse-to-fine decoder; every stage is FiLM-modulated by the key and reads the memory."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        m = cfg.mem_channels
        w3, w2, w1 = decoder_channels(cfg)
        self.d3 = conv(cfg.c3 + m, w3)
        self.u2 = nn.Conv2d(w3, cfg.c2, 1)
        self.d2 = conv(cfg.c2 + m, w2)
        self.u1 = nn.Conv2d(w2, cfg.c1, 1)
        self.d1 = conv(cfg.c1 + m, w1)
        self.head = conv(w1, 2)

    @staticmethod
    def film(h: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        return act(h * (1 + gamma[:, :, None, None]) + beta[:, :, None, None])

    def forward(self, feats, mem, films, a, b) -> torch.Tensor:
        f1, f2, f3 = feats
        m2, m3 = F.avg_pool2d(mem, 2), F.avg_pool2d(mem, 4)
        g3, b3, g2, b2, g1, b1 = films
        h = self.film(self.d3(torch.cat([f3, m3], 1)), g3, b3)
        h = F.interpolate(self.u2(h), scale_factor=2, mode="bilinear", align_corners=False) + f2
        h = self.film(self.d2(torch.cat([h, m2], 1)), g2, b2)
        h = F.interpolate(self.u1(h), scale_factor=2, mode="bilinear", align_corners=False) + f1
        h = self.film(self.d1(torch.cat([h, mem], 1)), g1, b1)
        out = self.head(h)
        w, r = torch.sigmoid(out[:, :1]), torch.tanh(out[:, 1:])
        return (w * a + (1 - w) * b + r).clamp(0, 1)


class AMIFNet(nn.Module):
    """fused = AMIFNet(a, b, code): a, b in [0, 1] of shape (n, 1, h, w); code (256,), (n, 256)
    or (k*n, 256) for k outputs of every image (code set j is rows j*n..(j+1)*n-1)."""

    multiple = 4

    def __init__(self, cfg: NetConfig | None = None):
        super().__init__()
        self.cfg = cfg or NetConfig()
        c = self.cfg
        self.encoder = Encoder(c)
        self.memory = WatermarkMemory(c, c.c1)
        self.gate = nn.Conv2d(c.mem_channels, c.c1, 1)
        self.decoder = Decoder(c)
        self.key = KeyEmbedding(c, decoder_channels(c))

    def encode(self, a, b, coords=None):
        """Key-free part: padded inputs, encoder features gated by the memory read."""
        n, _, h, w = a.shape
        if coords is None:
            coords = slice_coords(n, h, w, a.device, a.dtype)
        ph, pw = -h % self.multiple, -w % self.multiple
        if ph or pw:
            mode = "reflect" if min(h, w) > max(ph, pw) else "replicate"
            a, b = (F.pad(t, (0, pw, 0, ph), mode=mode) for t in (a, b))
            coords = F.pad(coords, (0, pw, 0, ph), mode="replicate")
        f1, f2, f3 = self.encoder(torch.cat([a, b, coords], 1))
        mem = self.memory(coords, f1)
        f1 = f1 * torch.sigmoid(self.gate(mem)) * 2
        return [f1, f2, f3], mem, a, b, (h, w)

    def decode(self, enc, code: torch.Tensor, phases: torch.Tensor | None = None) -> torch.Tensor:
        """The output for `code`; `phases` (training only), one row per code row after expansion, replace the
        key embedding's angles (KeyEmbedding.phases) of the code."""
        feats, mem, a, b, (h, w) = enc
        n = a.shape[0]
        if code.dim() == 1:
            code = code.unsqueeze(0)
        if code.shape[0] == 1:
            code = code.expand(n, -1)
        k = code.shape[0] // n  # k codes per image: the key-free pass is shared by all of them
        if k * n != code.shape[0]:
            raise ValueError(f"{code.shape[0]} codes for {n} images")
        if k > 1:
            feats, mem, a, b = [f.repeat(k, 1, 1, 1) for f in feats], *(t.repeat(k, 1, 1, 1) for t in (mem, a, b))
        y = self.decoder(feats, mem, self.key(code.to(a.dtype), phases), a, b)
        return y[:, :, :h, :w]

    def forward(self, a, b, code, coords=None, phases=None) -> torch.Tensor:
        return self.decode(self.encode(a, b, coords), code, phases)


def widen_decoder(net: AMIFNet, factor: int) -> AMIFNet:
    """The same function with `factor` times the decoder's channels, to train on from a trained
    network (net2wider): every old filter is kept; the new channels' filters and FiLM rows start
    from a fresh init (scaled down), and the layers reading those channels from zero weights on
    them, so the widened network's outputs equal the old one's under every code."""
    cfg = NetConfig.from_dict({**net.cfg.to_dict(), "decoder_width": net.cfg.decoder_width * factor})
    wide, old = AMIFNet(cfg), net.state_dict()
    state = wide.state_dict()
    old_film, new_film = net.key.sizes, wide.key.sizes
    with torch.no_grad():
        for name, t in old.items():
            w = state[name]
            if w.shape == t.shape:
                w.copy_(t)
            elif name.startswith("key.mlp.2."):  # FiLM (scale, shift) rows, per stage
                w.mul_(0.1)
                for src, dst, n in zip(t.split(old_film), w.split(new_film), old_film):
                    dst[:n] = src
            elif name.startswith("decoder.d"):  # a stage conv: more output channels
                w[t.shape[0] :] *= 0.5
                w[: t.shape[0]] = t
            elif name.startswith(("decoder.u", "decoder.head")) and name.endswith(".weight"):  # reads them
                w.zero_()
                w[:, : t.shape[1]] = t
            else:
                raise ValueError(f"widen_decoder: unexpected shape change of {name}")
    wide.load_state_dict(state)
    return wide


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_slice(model: AMIFNet, h: int = 256, w: int = 256) -> int:
    """Multiply-adds x 2 of convolutions and linear layers for one slice (hooks count them)."""
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
            total += 2 * out.numel() * k
        elif isinstance(mod, nn.Linear):
            total += 2 * out.numel() * mod.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            dev = next(model.parameters()).device
            z = torch.zeros(1, 1, h, w, device=dev)
            model(z, z, torch.zeros(model.cfg.key_bits, device=dev))
    finally:
        for hd in handles:
            hd.remove()
    return total
