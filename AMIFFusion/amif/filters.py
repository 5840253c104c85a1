"""Image filters on torch tensors (n, 1, h, w) shared by verification and training: edges, blur and
the identifier's stroke colour."""

from __future__ import annotations

import torch
import torch.nn.functional as F

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def sobel(x: torch.Tensor) -> torch.Tensor:
    """|gx| + |gy| with the 3x3 Sobel kernels (replicate padding)."""
    k = torch.stack([_SOBEL_X, _SOBEL_X.t()]).unsqueeze(1).to(x)
    g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k)
    return g.abs().sum(1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of standard deviation `sigma` pixels (radius 3 sigma, replicate padding)."""
    r = max(1, int(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    x = F.pad(x, (r, r, r, r), mode="replicate")
    x = F.conv2d(x, g.view(1, 1, 1, -1))
    return F.conv2d(x, g.view(1, 1, -1, 1))


def contrast_colour(y: torch.Tensor, sigma: float = 6.0) -> torch.Tensor:
    """Stroke colour chosen by local content: bright on dark surroundings, dark on bright."""
    return torch.sigmoid((0.45 - gaussian_blur(y, sigma)) / 0.05)
