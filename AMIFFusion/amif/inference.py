"""Running a model package's network on arrays: on a device, in batches or in tiles."""

from __future__ import annotations

import weakref
from functools import lru_cache

import numpy as np

from .device import full_float32, resolve_device
from .package import ModelPackage

_DEVICE_NETS = weakref.WeakKeyDictionary()  # a package's net -> {device: (stamp of its tensors, copy there)}


def network_on(package: ModelPackage, device):
    """package.net on the resolved torch `device`, for inference. Where the net already is, the net itself;
    elsewhere a frozen copy, kept per device for as long as package.net lives and made again when any of
    its tensors was replaced or changed in place. package.net itself never moves, so other callers of the
    package (training, attacks, other threads on the CPU) are not affected."""
    import copy

    net = package.net
    tensors = [*net.parameters(), *net.buffers()]
    if not tensors or tensors[0].device == device:
        return net
    stamp = tuple((t.data_ptr(), t._version) for t in tensors)  # _version: torch's in-place edit counter
    copies = _DEVICE_NETS.setdefault(net, {})
    kept = copies.get(str(device))
    if kept is None or kept[0] != stamp:
        moved = copy.deepcopy(net).to(device).requires_grad_(False).eval()
        copies[str(device)] = kept = (stamp, moved)
    return kept[1]


EDGE_COORD = 0.85  # slice coordinates the network reads at most (beyond the identifier's strokes: coord_bounds)


@lru_cache(maxsize=64)
def coord_bounds(identifier: str, h: int, w: int) -> tuple[float, float]:
    """(x, y) bounds of the slice coordinates the network is given for an (h, w) slice: EDGE_COORD, or
    0.05 beyond the identifier's strokes where they reach further. The network's coordinate-addressed
    memory blacks out content at its outer rim (|x| or |y| near 1: the training slices had background
    there), so tissue that touches a slice's edge would be lost; coordinates clamped to these bounds read
    the memory just inside the rim there instead, while every pixel of the identifier's strokes (and
    so the identifier's layout) keeps its own coordinates. No identifier (a twin): EDGE_COORD."""
    from .identifier import identifier_mask

    if not identifier:  # an unprotected twin: no strokes to keep
        return EDGE_COORD, EDGE_COORD
    strokes = identifier_mask(identifier, h, w) > 0.02
    bounds = []
    for n, axis in ((w, 0), (h, 1)):
        at = np.flatnonzero(strokes.any(axis))
        reach = max(abs((at[0] * 2 + 1) / n - 1), abs((at[-1] * 2 + 1) / n - 1)) if at.size else 0.0
        bounds.append(float(max(EDGE_COORD, reach + 0.05)))
    return bounds[0], bounds[1]


def network_coords(package: ModelPackage, h: int, w: int):
    """Per-axis pixel-centre coordinates (ys (h,), xs (w,)) for the network, as network.slice_coords lays them
    out, clamped to coord_bounds."""
    import torch

    bx, by = coord_bounds(package.identifier, h, w)
    ys, xs = ((torch.arange(n, dtype=torch.float32) * 2 + 1) / n - 1 for n in (h, w))
    return ys.clamp(-by, by), xs.clamp(-bx, bx)


def _grid(ys, xs, device):
    import torch

    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy])[None].to(device)


def _takes_coords(net) -> bool:
    import inspect

    return "coords" in inspect.signature(net.forward).parameters


def run_network(package: ModelPackage, a: np.ndarray, b: np.ndarray, code: np.ndarray, device="cpu") -> np.ndarray:
    """(n, h, w) float arrays in [0, 1] -> fused (n, h, w), a float32 numpy array. The network runs on
    `device` (a name or torch.device; see amif.device) in float32; inputs go there, the result comes back.
    A network whose forward takes `coords` (AMIFNet) is given those of `network_coords` (its own layout,
    clamped near the rim); others (stand-ins) are called with (a, b, code)."""
    import torch

    device = resolve_device(device)
    net = network_on(package, device)
    n, h, w = np.shape(a)
    with torch.inference_mode(), full_float32(device):
        ta = torch.from_numpy(np.ascontiguousarray(a, np.float32))[:, None].to(device)
        tb = torch.from_numpy(np.ascontiguousarray(b, np.float32))[:, None].to(device)
        tcode = torch.from_numpy(np.asarray(code, np.float32)).to(device)
        if _takes_coords(net):
            y = net(ta, tb, tcode, _grid(*network_coords(package, h, w), device).expand(n, -1, -1, -1))
        else:
            y = net(ta, tb, tcode)
        return y[:, 0].to("cpu", torch.float32).numpy()


TILE_PIXELS = 1024 * 1024  # 2D images with more pixels go through the network in tiles (fuse_images)
TILE = 512  # side of a tile's core, pixels (a multiple of the network's 4)
TILE_MARGIN = 32  # context run around each core and cut off (a multiple of 4, beyond the network's reach)


def run_network_tiled(
    package: ModelPackage,
    a: np.ndarray,
    b: np.ndarray,
    code: np.ndarray,
    device="cpu",
    tile: int | None = None,
    margin: int | None = None,
) -> np.ndarray:
    """One (h, w) image pair in [0, 1] -> fused (h, w) float32, through the network in tiles: cores of
    `tile` x `tile` pixels (default TILE), each run with `margin` (default TILE_MARGIN) pixels of context
    on every side, cut off after, so the network's memory is that of one (tile + 2 margin)^2 slice
    whatever the image size. Every tile gets the coordinates of its pixels in the whole image (the network
    reads its watermark memory there, so the identifier keeps the whole image's layout), and cores and
    margins are multiples of 4 (the network's down-sampling grid), so the result equals the one-piece
    run's to float rounding: AMIFNet's reach is under 24 pixels (on the CPU, margins of 24 and more give
    results bitwise equal to the one-piece run's). The coordinates are run_network's (network_coords).
    The network must take `coords` (AMIFNet does)."""
    import torch

    tile, margin = TILE if tile is None else tile, TILE_MARGIN if margin is None else margin
    if tile % 4 or margin % 4 or tile < 4:
        raise ValueError("tile and margin must be multiples of 4")
    h, w = a.shape
    device = resolve_device(device)
    net = network_on(package, device)
    ys, xs = network_coords(package, h, w)
    tcode = torch.from_numpy(np.asarray(code, np.float32)).to(device)
    out = np.empty((h, w), np.float32)
    with torch.inference_mode(), full_float32(device):
        for y0 in range(0, h, tile):
            for x0 in range(0, w, tile):
                y1, x1 = min(h, y0 + tile), min(w, x0 + tile)
                ty0, tx0, ty1, tx1 = max(0, y0 - margin), max(0, x0 - margin), min(h, y1 + margin), min(w, x1 + margin)
                ta, tb = (
                    torch.from_numpy(np.ascontiguousarray(v[ty0:ty1, tx0:tx1], np.float32))[None, None].to(device)
                    for v in (a, b)
                )
                coords = _grid(ys[ty0:ty1], xs[tx0:tx1], device)
                y = net(ta, tb, tcode, coords)
                out[y0:y1, x0:x1] = y[0, 0, y0 - ty0 : y1 - ty0, x0 - tx0 : x1 - tx0].to("cpu", torch.float32).numpy()
    return out
