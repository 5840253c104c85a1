import numpy as np
import pytest

from amif.metrics import entropy, max_rule, qabf, spatial_frequency, vif


def test_entropy_by_hand():
    assert entropy(np.full((8, 8), 77)) == 0
    half = np.zeros((8, 8))
    half[:, 4:] = 255
    assert entropy(half) == pytest.approx(1.0)
    four = np.repeat([0, 1, 2, 3], 16).reshape(8, 8)
    assert entropy(four) == pytest.approx(2.0)


def test_spatial_frequency_by_hand():
    assert spatial_frequency(np.full((5, 5), 9.0)) == 0
    ramp = np.tile(np.arange(6.0) * 2, (4, 1))  # horizontal differences all 2, vertical 0
    assert spatial_frequency(ramp) == pytest.approx(2.0)
    assert spatial_frequency(ramp.T) == pytest.approx(2.0)


def test_qabf_and_vif_identity_and_order():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]
    a = 128 + 100 * np.sin(xx / 5.0) + 5 * rng.standard_normal((64, 64))
    # a fused image that is one source keeps all of that source's edges
    assert qabf(a, a, a) == pytest.approx(0.9994 * 0.9879 / ((1 + np.exp(-15 * 0.5)) * (1 + np.exp(-22 * 0.2))))
    assert vif(a, a, a) == pytest.approx(2.0, abs=1e-6)
    blurred = (a + np.roll(a, 1, 0) + np.roll(a, 1, 1) + np.roll(a, -1, 1)) / 4
    assert qabf(a, a, blurred) < qabf(a, a, a)
    assert vif(a, a, blurred) < vif(a, a, a)
    assert qabf(a, a, np.full_like(a, 100)) < 0.05


def test_max_rule():
    assert (max_rule(np.array([1, 5]), np.array([3, 2])) == [3, 5]).all()
