import numpy as np
import pytest

from amif_research.baselines import max_fusion
from amif_research.metrics import (
    NAMES,
    all_metrics,
    average_gradient,
    entropy,
    mutual_information,
    psnr,
    qabf,
    scd,
    spatial_frequency,
    ssim,
    standard_deviation,
    to_grey,
    vif,
)

TG, TA = 0.9994, 0.9879


def _image(seed=0, n=64):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:n, 0:n]
    return np.clip(np.round(128 + 90 * np.sin(xx / 5.0) * np.cos(yy / 7.0) + 8 * rng.standard_normal((n, n))), 0, 255)


def test_constant_image_has_no_information():
    c = np.full((16, 16), 77.0)
    assert entropy(c) == 0 and standard_deviation(c) == 0
    assert spatial_frequency(c) == 0 and average_gradient(c) == 0


def test_entropy_by_hand():
    half = np.zeros((8, 8))
    half[:, 4:] = 255
    assert entropy(half) == pytest.approx(1.0)
    four = np.repeat([0, 1, 2, 3], 16).reshape(8, 8)
    assert entropy(four) == pytest.approx(2.0)


def test_sd_sf_ag_by_hand():
    half = np.zeros((8, 8))
    half[:, 4:] = 200
    assert standard_deviation(half) == pytest.approx(100.0)
    ramp = np.tile(np.arange(6.0) * 2, (4, 1))  # horizontal differences all 2, vertical 0
    assert spatial_frequency(ramp) == pytest.approx(2.0)
    assert spatial_frequency(ramp.T) == pytest.approx(2.0)
    assert average_gradient(ramp) == pytest.approx(2 / np.sqrt(2))  # Gx = 2 everywhere, Gy = 0


def test_colour_becomes_grey_like_opencv():
    rgb = np.zeros((2, 2, 3))
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 50, 10
    assert to_grey(rgb) == pytest.approx(np.round(np.full((2, 2), 29.9 + 29.35 + 1.14)))


def test_mutual_information_in_nats():
    x = _image()
    h_nats = entropy(x) * np.log(2)
    # MI of an image with itself is its entropy; the sum over A and B doubles it
    assert mutual_information(x, x, x) == pytest.approx(2 * h_nats)
    half = np.zeros((8, 8))
    half[:, 4:] = 255
    assert mutual_information(half, half, half) == pytest.approx(2 * np.log(2))
    # a bijective grey-level map keeps the information; independent noise has (almost) none
    assert mutual_information(x, x, 255 - x) == pytest.approx(2 * h_nats)
    noise = np.random.default_rng(1).integers(0, 256, (256, 256))
    other = np.random.default_rng(2).integers(0, 256, (256, 256))
    assert mutual_information(noise, noise, other) < 0.4 * entropy(noise) * np.log(2)
    shifted = np.roll(x, 3, axis=1)
    assert mutual_information(x, x, shifted) < mutual_information(x, x, x)


def test_scd_by_hand():
    a, b = _image(0), _image(1)[::-1]
    assert scd(a, b, a + b) == pytest.approx(2.0)  # F - B = A and F - A = B
    assert scd(a, b, a + b) > scd(a, b, (a + b) / 2)


def test_ssim_psnr_vif_of_perfect_outputs():
    x = _image()
    assert ssim(x, x, x) == pytest.approx(2.0)
    assert vif(x, x, x) == pytest.approx(2.0)
    assert psnr(x, x, x) == float("inf")


def test_ssim_by_hand_with_data_range_2():
    # two 7x7 images: one window; x is a checkerboard (0/2), y = x + 1 (shifted mean, same variance)
    x = (np.indices((7, 7)).sum(0) % 2) * 2.0
    y = x + 1
    ux, uy, v = 48 / 49, 48 / 49 + 1, (np.mean(x * x) - (48 / 49) ** 2) * 49 / 48
    c1, c2 = 0.02**2, 0.06**2
    expected = (2 * ux * uy + c1) * (2 * v + c2) / ((ux**2 + uy**2 + c1) * (2 * v + c2))
    assert ssim(x, x, y) == pytest.approx(2 * expected)


def test_psnr_by_hand_and_decreasing_with_noise():
    a = np.zeros((4, 4))
    a[0, 0] = 255
    f = a.copy()
    f[1, 1] = 51  # MSE against both sources: 51^2 / 16
    assert psnr(a, a, f) == pytest.approx(10 * np.log10(255**2 * 16 / 51**2))
    dim = np.zeros((4, 4))
    dim[0, 0] = 100  # the peak is F's maximum (CDDFuse), not 255: MSE 100^2 / 16
    assert psnr(np.zeros((4, 4)), np.zeros((4, 4)), dim) == pytest.approx(10 * np.log10(16))
    x = _image()
    x[0, 0] = 255
    rng = np.random.default_rng(3)
    vals = []
    for s in (2, 8, 32):
        f = np.clip(x + s * rng.standard_normal(x.shape), 0, 255)
        f[0, 0] = 255
        vals.append(psnr(x, x, f))
    assert vals[0] > vals[1] > vals[2]


def test_qabf_identity_and_order():
    a = np.zeros((32, 32))
    a[:, 16:] = 200  # one straight edge: every Sobel strength is 0 or >= 200
    # a fused image that is both sources keeps all edges: Qg = Tg, orientation term at alpha = 1
    assert qabf(a, a, a) == pytest.approx(TG * TA / (1 + np.exp(-22 * 0.2)))
    x = _image()
    blurred = (x + np.roll(x, 1, 0) + np.roll(x, 1, 1) + np.roll(x, -1, 1)) / 4
    assert qabf(x, x, blurred) < qabf(x, x, x)
    assert vif(x, x, blurred) < vif(x, x, x)
    assert ssim(x, x, blurred) < ssim(x, x, x)
    assert qabf(x, x, np.zeros_like(x)) < 0.001  # no edge at all (zero padding: not even at the border)


def test_sums_are_symmetric_in_the_sources():
    a, b = _image(0), _image(1).T
    f = np.round((a + b) / 2)
    for fn in (mutual_information, vif, ssim, qabf, scd, psnr):
        assert fn(a, b, f) == pytest.approx(fn(b, a, f)), fn.__name__


def test_all_metrics_order_and_values():
    a, b = _image(0), _image(1).T
    f = max_fusion(a, b)
    m = all_metrics(a, b, f)
    assert tuple(m) == NAMES == ("EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM", "PSNR")
    assert m["EN"] == entropy(f) and m["VIF"] == vif(a, b, f) and m["Qabf"] == qabf(a, b, f)
    assert all(np.isfinite(v) for v in m.values())


def test_training_vif_matches_the_metric_and_its_hinge_stops_at_the_max_rule():
    import torch

    from amif_research.losses import fusion_loss, gaussian_blur, vif
    from amif_research.metrics import _vifp

    rng = np.random.default_rng(3)
    a = gaussian_blur(torch.from_numpy(rng.random((1, 1, 96, 80))), 2.0)
    a = (a - a.min()) / (a.max() - a.min())
    a[..., :30, :30] = 0  # a flat patch: the metric's special cases
    for f in (a, 0.7 * a + 0.2 * torch.from_numpy(rng.random(a.shape)), a.flip(-1), torch.full_like(a, 0.5)):
        f = f.clone()
        f[..., :20, :20] = 0
        assert abs(vif(a, f).item() - _vifp(a[0, 0].numpy() * 255, f[0, 0].numpy() * 255)) < 1e-9
    b = torch.from_numpy(rng.random(a.shape))
    m = torch.maximum(a, b).requires_grad_()
    _, parts = fusion_loss(m, a, b, w_vif=1.0)
    assert parts["vif"] == 0.0  # no shortfall against the max rule: the hinge is off
    y = m + 0.1 * torch.from_numpy(rng.standard_normal(a.shape))  # noise: fidelity below the max rule's
    loss, parts = fusion_loss(y, a, b, w_vif=1.0)
    assert parts["vif"] > 0.02 and loss.item() > fusion_loss(y, a, b)[0].item()


def test_training_sd_sf_and_scd_hinges_follow_the_metrics_and_stop_above_the_max_rule():
    import torch

    from amif_research.losses import MARGIN, fusion_loss, gaussian_blur
    from amif_research.losses import scd as scd_t
    from amif_research.losses import sf as sf_t
    from amif_research.metrics import scd, spatial_frequency

    rng = np.random.default_rng(4)
    a = gaussian_blur(torch.from_numpy(rng.random((2, 1, 64, 72))), 1.5)
    a = (a - a.amin((2, 3), keepdim=True)) / (a.amax((2, 3), keepdim=True) - a.amin((2, 3), keepdim=True))
    b = torch.from_numpy(rng.random(a.shape)) ** 2
    m = torch.maximum(a, b)
    for f in (m, 0.8 * a + 0.1, gaussian_blur(m, 1.0)):
        for i in range(2):
            A, B, Fi = (t[i, 0].numpy() * 255 for t in (a, b, f))
            assert scd_t(a, b, f)[i].item() == pytest.approx(scd(A, B, Fi), abs=1e-9)
            assert sf_t(f)[i].item() * 255 == pytest.approx(spatial_frequency(Fi), rel=1e-9)
    hinges = dict(w_sd=1.0, w_sf=1.0, w_scd=1.0)
    _, parts = fusion_loss(m, a, b, **hinges)
    assert parts["scd"] == 0.0  # the floors of SD and SF lie MARGIN above the rule, SCD's at it
    assert parts["sd"] == pytest.approx(MARGIN - 1) and parts["sf"] == pytest.approx(MARGIN - 1)
    _, parts = fusion_loss(m, a, b, **hinges, sf_floor=1.1)
    assert parts["sf"] == pytest.approx(0.1) and parts["sd"] == pytest.approx(MARGIN - 1)  # sf_floor moves SF's only
    contrast = (m - m.mean((2, 3), keepdim=True)) * (MARGIN + 0.01) + m.mean((2, 3), keepdim=True)
    _, parts = fusion_loss(contrast, a, b, **hinges)
    assert parts["sd"] == 0.0 and parts["sf"] == 0.0  # above the floor: the hinges are off
    flat = torch.zeros_like(a)
    _, parts = fusion_loss(flat + 1e-4 * torch.rand_like(a), flat, flat, **hinges)
    assert parts["sd"] == 0.0 and parts["sf"] == 0.0  # a flat crop asks for no contrast
    empty = m.clone()
    empty[..., :, :36] = 0  # both sources empty on the left
    a0, b0 = a * (empty > 0), b * (empty > 0)
    noisy = 0.9 * empty
    noisy[..., :, :20] = 0.002 * torch.rand_like(noisy[..., :, :20])  # faint noise far from the content
    assert fusion_loss(noisy, a0, b0, w_sf=1.0)[1]["sf"] == fusion_loss(0.9 * empty, a0, b0, w_sf=1.0)[1]["sf"] > 0
    y = (0.5 * m + 0.25).requires_grad_()  # half the contrast and edges, and a worse SCD
    loss, parts = fusion_loss(y, a, b, **hinges)
    assert parts["sd"] > 0.4 and parts["sf"] > 0.4 and parts["scd"] > 0.1
    assert loss.item() > fusion_loss(y, a, b)[0].item()
    loss.backward()
    assert y.grad.abs().sum() > 0


def test_training_mi_matches_the_metric_and_its_gradient_makes_the_output_predictable():
    import torch

    from amif_research.losses import MARGIN, fusion_loss, grey_mi
    from amif_research.metrics import _mutual_info

    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, (3, 1, 40, 56))
    b = rng.integers(0, 256, a.shape)
    f = np.clip(a // 2 + rng.integers(0, 60, a.shape), 0, 255)  # a noisy function of a
    ta, tb, tf = (torch.from_numpy(x / 255.0) for x in (a, b, f))

    def total(y):
        return grey_mi(y, ta) + grey_mi(y, tb)

    for i in range(3):  # on the grey levels: the metric's joint histogram, exactly
        assert grey_mi(tf, ta)[i].item() == pytest.approx(_mutual_info(f[i, 0], a[i, 0]), abs=1e-9)
        assert grey_mi(tf, tb)[i].item() == pytest.approx(_mutual_info(f[i, 0], b[i, 0]), abs=1e-9)
    half = grey_mi(tf + 0.5 / 255, ta)  # between two levels: another value, continuous in y
    assert torch.all(half != grey_mi(tf, ta))
    assert torch.allclose(grey_mi(tf + 1e-6 / 255, ta), grey_mi(tf, ta), atol=1e-4)
    m = torch.maximum(ta, tb)
    assert fusion_loss(m, ta, tb, w_mi=1.0)[1]["mi"] == pytest.approx(MARGIN - 1)  # the rule itself: its floor only
    loss, parts = fusion_loss(tf, ta, tb, w_mi=1.0)
    assert parts["mi"] > 0.1 and loss.item() > fusion_loss(tf, ta, tb)[0].item()
    y0 = (tf + 0.3 / 255).requires_grad_()  # between levels, where the MI is smooth in y
    (g,) = torch.autograd.grad(total(y0).sum(), y0)
    up, down = (total((y0 + s * 0.1 / 255 * g.sign()).detach()) for s in (1, -1))  # staying between the levels
    assert torch.all(up > total(y0.detach())) and torch.all(down < total(y0.detach()))
