import numpy as np
import pytest

from amif_research.baselines import (
    BASELINES,
    box_mean,
    gff_fusion,
    guided_filter,
    laplacian_fusion,
    laplacian_pyramid,
    max_fusion,
    mean_fusion,
    reconstruct,
)


def _pair(shape=(64, 48)):
    rng = np.random.default_rng(0)
    return rng.random(shape) * 255, rng.random(shape) * 255


def test_mean_and_max():
    a, b = _pair()
    assert np.array_equal(max_fusion(a, b), np.where(a > b, a, b))
    assert np.allclose(mean_fusion(a, b), a / 2 + b / 2)
    assert np.array_equal(max_fusion(a, b), max_fusion(b, a)) and np.allclose(mean_fusion(a, b), mean_fusion(b, a))


@pytest.mark.parametrize("shape", [(64, 64), (61, 37), (256, 256)])
def test_pyramid_reconstructs_exactly(shape):
    a, _ = _pair(shape)
    pyr = laplacian_pyramid(a, 4)
    assert len(pyr) == 5 and pyr[-1].shape == tuple((s + 15) // 16 for s in shape)
    assert np.allclose(reconstruct(pyr), a, atol=1e-9)


def test_laplacian_of_identical_inputs_is_the_input():
    a, _ = _pair((61, 37))
    assert np.allclose(laplacian_fusion(a, a), a, atol=1e-9)


def test_laplacian_keeps_the_stronger_detail():
    a = np.full((64, 64), 100.0)
    b = a.copy()
    b[30:34, 30:34] = 200  # a small bright detail only in B; A is flat
    f = laplacian_fusion(a, b)
    assert f[31, 31] > 170 and abs(f[2, 2] - 100) < 0.1  # detail from B; far away the (averaged) base
    assert f[31, 31] > mean_fusion(a, b)[31, 31]


def test_baseline_table():
    assert list(BASELINES) == ["mean", "max", "Laplacian", "GFF"]


def _box_brute(x, r):
    h, w = x.shape
    return np.array(
        [[x[max(i - r, 0) : i + r + 1, max(j - r, 0) : j + r + 1].mean() for j in range(w)] for i in range(h)]
    )


@pytest.mark.parametrize("r", [0, 1, 2, 6])
def test_box_mean_against_brute_force(r):
    x, _ = _pair((7, 5))
    assert np.allclose(box_mean(x, r), _box_brute(x, r), atol=1e-9)


def test_guided_filter_against_brute_force():
    rng = np.random.default_rng(1)
    i, p, r, eps = rng.random((7, 6)), rng.random((7, 6)), 2, 0.05
    mi, mp = _box_brute(i, r), _box_brute(p, r)
    a = (_box_brute(i * p, r) - mi * mp) / (_box_brute(i * i, r) - mi**2 + eps)
    b = mp - a * mi
    assert np.allclose(guided_filter(i, p, r, eps), _box_brute(a, r) * i + _box_brute(b, r), atol=1e-9)
    assert np.allclose(guided_filter(i, i, 1, 1e-12), i, atol=1e-5)  # its own guide, no regularisation: itself
    assert np.allclose(guided_filter(i, np.full_like(i, 0.7), 2, 0.3), 0.7)  # a constant stays


def test_gff_of_identical_and_constant_inputs():
    a, _ = _pair((61, 37))
    assert np.allclose(gff_fusion(a, a), a, atol=1e-9)
    # flat sources have no saliency: the tie goes to A (as the authors' argmax does), so A comes back
    f = gff_fusion(np.full((40, 30), 30.0), np.full((40, 30), 200.0))
    assert np.allclose(f, 30, atol=1e-6)


def test_gff_commutes_with_a_grey_offset():
    # filters and saliency ignore an offset, so F(a + c, b + c) = F(a, b) + c iff the weights sum to 1
    a, b = _pair((48, 40))
    assert np.allclose(gff_fusion(a + 10, b + 10), gff_fusion(a, b) + 10, atol=1e-6)


def test_gff_takes_the_salient_source():
    a = np.full((64, 64), 100.0)
    b = np.full((64, 64), 50.0)
    b[30:34, 30:34] = 200  # a small bright detail only in B; A is flat
    f = gff_fusion(a, b)
    assert f[31, 31] > 180 > mean_fusion(a, b)[31, 31]  # B's detail nearly at full brightness
    assert 90 < f[2, 2] <= 100  # far from it mostly flat A: the tie goes to A, B's base weight spreads (r1 = 45)
