import numpy as np
import pytest

from amif_research.baselines import BASELINES, laplacian_fusion, laplacian_pyramid, max_fusion, mean_fusion, reconstruct


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
    assert list(BASELINES) == ["mean", "max", "Laplacian"]
