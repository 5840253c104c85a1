"""Training losses: fusion quality on the keyed output, identifier target on unkeyed outputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from amif.filters import contrast_colour, gaussian_blur, sobel  # noqa: F401 (also this module's API)

from .reader import DOMINANCE_LEVELS


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM per image (Gaussian window, sigma 1.5), shape (n,)."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = gaussian_blur(x, 1.5), gaussian_blur(y, 1.5)
    vx = gaussian_blur(x * x, 1.5) - mx**2
    vy = gaussian_blur(y * y, 1.5) - my**2
    cxy = gaussian_blur(x * y, 1.5) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def _filter_valid(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return F.conv2d(F.conv2d(x, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))


def vif(ref: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
    """Differentiable 4-scale pixel-domain VIF of `dist` against `ref`, per image, shape (n,):
    `amif.metrics._vifp` in torch (same windows, 'valid' filtering, decimation and special cases),
    on images in [0, 1] scaled to 0-255 as the metric sees them."""
    sigma_nsq, eps = 2.0, 1e-10
    ref, dist = ref * 255.0, dist * 255.0
    num = den = 0.0
    for scale in range(1, 5):
        n = 2 ** (4 - scale + 1) + 1
        t = torch.arange(n, dtype=ref.dtype, device=ref.device) - (n - 1) / 2
        k = torch.exp(-(t * t) / (2 * (n / 5.0) ** 2))
        k = k / k.sum()
        if scale > 1:
            ref, dist = _filter_valid(ref, k)[..., ::2, ::2], _filter_valid(dist, k)[..., ::2, ::2]
        mu1, mu2 = _filter_valid(ref, k), _filter_valid(dist, k)
        s1 = (_filter_valid(ref * ref, k) - mu1 * mu1).clamp_min(0)
        s2 = (_filter_valid(dist * dist, k) - mu2 * mu2).clamp_min(0)
        s12 = _filter_valid(ref * dist, k) - mu1 * mu2
        g = s12 / (s1 + eps)
        sv = s2 - g * s12
        flat1, flat2 = s1 < eps, s2 < eps
        g = torch.where(flat1 | flat2, torch.zeros_like(g), g)
        sv = torch.where(flat1, s2, torch.where(flat2, torch.zeros_like(sv), sv))
        s1 = torch.where(flat1, torch.zeros_like(s1), s1)
        neg = g < 0
        sv, g = torch.where(neg, s2, sv), torch.where(neg, torch.zeros_like(g), g)
        sv = sv.clamp_min(eps)
        num = num + torch.log10(1 + g * g * s1 / (sv + sigma_nsq)).flatten(1).sum(1)
        den = den + torch.log10(1 + s1 / sigma_nsq).flatten(1).sum(1)
    return torch.where(den > 0, num / den.clamp_min(eps), torch.ones_like(num))


def _corr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.flatten(1) - x.flatten(1).mean(1, keepdim=True)
    y = y.flatten(1) - y.flatten(1).mean(1, keepdim=True)
    return (x * y).sum(1) / ((x * x).sum(1) * (y * y).sum(1)).clamp_min(1e-12).sqrt()


def scd(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """`amif.metrics.scd` per image, shape (n,): corr(A, F - B) + corr(B, F - A), differentiable."""
    return _corr(f - b, a) + _corr(f - a, b)


def sf(x: torch.Tensor) -> torch.Tensor:
    """`amif.metrics.spatial_frequency` per image, shape (n,), differentiable."""
    rf = (x[..., :, 1:] - x[..., :, :-1]).pow(2).flatten(1).mean(1)
    cf = (x[..., 1:, :] - x[..., :-1, :]).pow(2).flatten(1).mean(1)
    return (rf + cf + 1e-12).sqrt()


HINGES = ("vif", "sd", "sf", "scd", "mi")  # the optional fusion-loss hinges against the max rule (w_<name>)
MARGIN = 1.01  # SD's floor and SF's default floor: 1% above the max rule's (a floor at parity lands at parity)
CONTENT = 2 / 255  # the SF hinge looks where the blurred max rule exceeds this (both sources empty elsewhere)


def grey_mi(y: torch.Tensor, src: torch.Tensor, levels: int = 256) -> torch.Tensor:
    """Mutual information in nats of y with src per image, shape (n,), from their joint histogram
    over `levels` grey levels, as `amif.metrics.mutual_information` counts it: src's level is
    rounded; y's is split linearly between its two nearest levels, so the histogram (and the MI) is
    differentiable in y, and equals the metric's where y lies on the levels. Its gradient moves each
    pixel of y towards the level that pixels sharing its src level take more often."""
    n, top = y.shape[0], levels - 1
    yv = y.flatten(1).clamp(0, 1) * top
    lo = yv.detach().floor().clamp(max=top - 1)
    t = yv - lo
    s = (src.flatten(1).clamp(0, 1) * top).round().long()
    lo = lo.long()
    h = torch.zeros(n, levels * levels, dtype=y.dtype, device=y.device)
    h = h.scatter_add(1, lo * levels + s, 1 - t).scatter_add(1, (lo + 1) * levels + s, t)
    p = (h / yv.shape[1]).view(n, levels, levels)
    py, ps = p.sum(2, keepdim=True), p.sum(1, keepdim=True)
    return (p * (p.clamp_min(1e-12).log() - (py * ps).clamp_min(1e-12).log())).sum((1, 2))


def _relative_hinge(value: torch.Tensor, rule: torch.Tensor, floor: float = MARGIN) -> torch.Tensor:
    """Shortfall of `value` below `floor` x the max rule's, relative to it; 0 on a flat crop (rule <= 1e-3)."""
    rule = rule.detach()
    return (torch.relu(floor * rule - value) / rule.clamp_min(0.01) * (rule > 1e-3)).mean()


DOMINANCE = DOMINANCE_LEVELS / 255  # the second image dominates where it exceeds the first by this
RIM_TOLERANCE = 4 / 255  # how far beyond both sources the rim hinges let an output go


def binomial_high_pass(x: torch.Tensor) -> torch.Tensor:
    """x minus its blur by the separable 5-tap binomial [1, 4, 6, 4, 1] / 16 (mirror-reflected borders): the
    fine detail that reader.high_pass measures, for (n, 1, h, w) tensors of at least 3 x 3."""
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=x.dtype, device=x.device) / 16
    blur = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="reflect"), k.view(1, 1, 1, 5))
    blur = F.conv2d(F.pad(blur, (0, 0, 2, 2), mode="reflect"), k.view(1, 1, 5, 1))
    return x - blur


DETAIL_SLACK = 6 / 255  # how far the detail target may go beyond the sources (below the reader's 8 levels)


CEILINGS = ("white", "max")  # what fusion_target's base is lowered under (with headroom)
BRIGHT = 250 / 255  # a saturated second image (CT's bone): where the output's clamp at white hides the detail


def fusion_target(
    a: torch.Tensor, b: torch.Tensor, detail: float = 0.0, headroom: float = 0.0, ceiling: str = "white"
) -> torch.Tensor:
    """The intensity target: max(a, b), plus `detail` x a's fine detail (binomial_high_pass) where b dominates
    (b > a + DOMINANCE), so the first image's anatomy shows through a brighter second image; kept within
    DETAIL_SLACK of the range between the two sources (no rims, no halos). With `headroom` (a blur sigma in
    pixels, 0 = off), where that target would pass white (1: a saturated second image, CT's bone) the base
    is lowered by a smooth shift (the excess over 1, max-filtered over radius `headroom` and blurred by it),
    so the detail fits below white instead of being clipped away; the shift is low-frequency, so the fine
    detail the reader measures is kept. With `ceiling` "max", the base is lowered wherever the target would
    pass max(a, b) (not only white), so the detail fits under the brighter source everywhere (no halos)."""
    m = torch.maximum(a, b)
    if not detail:
        return m
    t = m + detail * (b > a + DOMINANCE).to(a.dtype) * binomial_high_pass(a)
    if headroom:
        r = max(1, round(headroom))
        top = m if ceiling == "max" else torch.ones_like(m)
        excess = F.max_pool2d(torch.relu(t - top), 2 * r + 1, stride=1, padding=r)
        t = t - gaussian_blur(excess, headroom)
    return torch.minimum(torch.maximum(t, torch.minimum(a, b) - DETAIL_SLACK), m + DETAIL_SLACK)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of x over the pixels of a boolean mask (0 where the mask is empty)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def fusion_loss(
    y,
    a,
    b,
    w_grad: float = 1.0,
    w_ssim: float = 0.5,
    w_vif: float = 0.0,
    w_sd: float = 0.0,
    w_scd: float = 0.0,
    w_sf: float = 0.0,
    sf_floor: float = MARGIN,
    w_mi: float = 0.0,
    detail: float = 0.0,
    w_under: float = 0.0,
    w_detail: float = 0.0,
    w_over: float = 0.0,
    headroom: float = 0.0,
    ceiling: str = "white",
    w_bright: float = 0.0,
    w_base: float = 0.0,
) -> tuple[torch.Tensor, dict]:
    """Intensity towards max(a, b), gradient towards the larger source gradient, SSIM to both;
    with `w_vif`, also the shortfall of VIF(a, y) and of VIF(b, y) against the max rule's on the same
    crop, each source on its own (a surplus on one does not pay for a shortfall on the other). A
    hinge: VIF rewards contrast gain without bound (g > 1 in its distortion model), and an unbounded
    VIF term trades edges and SCD for it within a few hundred steps. With `w_sd`, `w_sf` and `w_scd`,
    the same kind of hinge on the crop's SD and SF (relative to the max rule's, floors MARGIN x it for SD
    and `sf_floor` x it for SF; SF over the region with content) and SCD. With `w_mi`, the same hinge on
    MI(y, a) + MI(y, b) (`grey_mi`, 256 levels as the metric counts them), whose floor AMIF outputs
    trained without it stay well below (0.7-0.87 of the max rule's): it pushes y towards grey levels its
    sources predict. With `detail`, the intensity term's target is fusion_target's (the hinges still
    measure against the max rule). With `w_detail`, the mean |fine detail of y - `detail` (or 1) x a's|
    (binomial_high_pass) over the pixels where b dominates (the reader's anatomy under function, asked for
    directly). With `w_under` and `w_over`, hinges on y falling below both sources (dark rims) or rising
    above both (halos) by more than RIM_TOLERANCE. With `headroom`, fusion_target's (the detail target's
    base lowered under white, or under max(a, b) with `ceiling` "max"). With `w_bright`, also the mean
    |y - that target| over the pixels where b dominates and is near white (>= BRIGHT: CT's bone), where
    an output clamped at white keeps none of a's detail: the few unclamped pixels there carry the pull
    that lowers the rest below white. With `w_base`, the mean |base of y - base of that target| over the
    crop, a base being an image less its fine detail (x - binomial_high_pass(x)): the detail match is then
    met by adding a's detail on the second image's base, not by blending towards a (which darkens hot
    PET/SPECT and the colour put back on it)."""
    m = torch.maximum(a, b)
    dominant = b > a + DOMINANCE  # where the second image dominates
    target = fusion_target(a, b, detail, headroom, ceiling)
    l_int = (y - target).abs().mean()
    l_grad = (sobel(y) - torch.maximum(sobel(a), sobel(b))).abs().mean()
    l_ssim = (2 - ssim(y, a) - ssim(y, b)).mean()
    loss = l_int + w_grad * l_grad + w_ssim * l_ssim
    parts = {"int": l_int.item(), "grad": l_grad.item(), "ssim": l_ssim.item(), **dict.fromkeys(HINGES, 0.0)}
    if w_detail:
        gap = (binomial_high_pass(y) - (detail or 1.0) * binomial_high_pass(a)).abs()
        l_detail = _masked_mean(gap, dominant)
        loss = loss + w_detail * l_detail
        parts["detail"] = l_detail.item()
    if w_base:
        l_base = ((y - binomial_high_pass(y)) - (target - binomial_high_pass(target))).abs().mean()
        loss = loss + w_base * l_base
        parts["base"] = l_base.item()
    if w_bright:
        l_bright = _masked_mean((y - target).abs(), dominant & (b >= BRIGHT))
        loss = loss + w_bright * l_bright
        parts["bright"] = l_bright.item()
    if w_under:
        l_under = torch.relu(torch.minimum(a, b) - RIM_TOLERANCE - y).mean()
        loss = loss + w_under * l_under
        parts["under"] = l_under.item()
    if w_over:
        l_over = torch.relu(y - m - RIM_TOLERANCE).mean()
        loss = loss + w_over * l_over
        parts["over"] = l_over.item()
    if w_vif:
        with torch.no_grad():
            ref_a, ref_b = vif(a, m), vif(b, m)
        l_vif = (torch.relu(ref_a - vif(a, y)) + torch.relu(ref_b - vif(b, y))).mean()
        loss = loss + w_vif * l_vif
        parts["vif"] = l_vif.item()
    if w_sd:
        l_sd = _relative_hinge(y.flatten(1).std(1, correction=0), m.flatten(1).std(1, correction=0))
        loss = loss + w_sd * l_sd
        parts["sd"] = l_sd.item()
    if w_sf:
        # over the content only: measured on the whole crop, the protected net paid the SF floor with
        # sub-grey-level noise in the empty background, which drives the SSIM metric to 0 there
        keep = (gaussian_blur(m, 2.0) > CONTENT).to(y.dtype)
        l_sf = _relative_hinge(sf(y * keep), sf(m * keep), sf_floor)
        loss = loss + w_sf * l_sf
        parts["sf"] = l_sf.item()
    if w_scd:
        l_scd = torch.relu(scd(a, b, m).detach() - scd(a, b, y)).mean()
        loss = loss + w_scd * l_scd
        parts["scd"] = l_scd.item()
    if w_mi:
        l_mi = _relative_hinge(grey_mi(y, a) + grey_mi(y, b), grey_mi(m, a) + grey_mi(m, b))
        loss = loss + w_mi * l_mi
        parts["mi"] = l_mi.item()
    return loss, parts


def shift_content(y: torch.Tensor, shift: int) -> torch.Tensor:
    """y moved `shift` pixels right and down, or left and up where negative (edge pixels repeated
    where it uncovers the border)."""
    if not shift:
        return y
    h, w = y.shape[-2:]
    if shift > 0:
        return F.pad(y, (shift, 0, shift, 0), mode="replicate")[..., :h, :w]
    return F.pad(y, (0, -shift, 0, -shift), mode="replicate")[..., -shift:, -shift:]


def marked_target(
    y: torch.Tensor, mask: torch.Tensor, alpha: float | torch.Tensor = 0.75, shift: int = 0
) -> torch.Tensor:
    """The keyed output, moved `shift` pixels right and down (the second identifier channel: it sits
    in the content, so it survives what erases the strokes; verify.displacement measures it), with
    the identifier blended in at content-adaptive contrast, opacity `alpha` (a number, or one per image)."""
    y = shift_content(y, shift)
    return y + alpha * mask * (contrast_colour(y) - y)
