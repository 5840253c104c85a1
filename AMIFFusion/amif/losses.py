"""Training losses: fusion quality on the keyed output, identifier target on unkeyed outputs."""

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
    r = max(1, int(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    x = F.pad(x, (r, r, r, r), mode="replicate")
    x = F.conv2d(x, g.view(1, 1, 1, -1))
    return F.conv2d(x, g.view(1, 1, -1, 1))


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM per image (Gaussian window, sigma 1.5), shape (n,)."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = gaussian_blur(x, 1.5), gaussian_blur(y, 1.5)
    vx = gaussian_blur(x * x, 1.5) - mx**2
    vy = gaussian_blur(y * y, 1.5) - my**2
    cxy = gaussian_blur(x * y, 1.5) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def fusion_loss(y, a, b, w_grad: float = 1.0, w_ssim: float = 0.5) -> tuple[torch.Tensor, dict]:
    """Intensity towards max(a, b), gradient towards the larger source gradient, SSIM to both."""
    l_int = (y - torch.maximum(a, b)).abs().mean()
    l_grad = (sobel(y) - torch.maximum(sobel(a), sobel(b))).abs().mean()
    l_ssim = (2 - ssim(y, a) - ssim(y, b)).mean()
    loss = l_int + w_grad * l_grad + w_ssim * l_ssim
    return loss, {"int": l_int.item(), "grad": l_grad.item(), "ssim": l_ssim.item()}


def contrast_colour(y: torch.Tensor, sigma: float = 6.0) -> torch.Tensor:
    """Stroke colour chosen by local content: bright on dark surroundings, dark on bright."""
    return torch.sigmoid((0.45 - gaussian_blur(y, sigma)) / 0.05)


def marked_target(y: torch.Tensor, mask: torch.Tensor, alpha: float = 0.75) -> torch.Tensor:
    """The keyed output with the identifier blended in at content-adaptive contrast."""
    return y + alpha * mask * (contrast_colour(y) - y)
