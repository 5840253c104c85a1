import colorsys

import numpy as np
import pytest

from amif_research.reader import (
    DOMINANCE_LEVELS,
    HOT_LEVEL,
    HUE_MIN_SATURATION,
    READER_NAMES,
    RIM_LEVELS,
    anatomy_under_function,
    colour_error,
    high_pass,
    hot_mask,
    near_edges,
    reader_measures,
    rgb_to_hsv,
    rim_share,
)


def _checker(shape=(32, 32)):
    yy, xx = np.indices(shape)
    return np.where((yy + xx) % 2 == 0, 1.0, -1.0)


# ----------------------------------------------------------------- anatomy under function


def test_high_pass_keeps_a_checkerboard_and_drops_a_constant():
    c = _checker((9, 7))
    assert np.allclose(high_pass(10 * c), 10 * c, atol=1e-12)
    assert np.allclose(high_pass(np.full((9, 7), 123.0)), 0, atol=1e-12)


def test_anatomy_of_max_mean_and_detail_added():
    mri = 100 + 10 * _checker()  # fine MRI detail everywhere
    other = np.full_like(mri, 200.0)  # a flat, brighter second modality: it dominates everywhere
    assert anatomy_under_function(np.maximum(mri, other), mri, other) == pytest.approx(0, abs=1e-12)
    assert anatomy_under_function(other + high_pass(mri), mri, other) == pytest.approx(1, abs=1e-12)
    assert anatomy_under_function(other + 0.5 * high_pass(mri), mri, other) == pytest.approx(0.5, abs=1e-12)
    assert anatomy_under_function((mri + other) / 2, mri, other) == pytest.approx(0.5, abs=1e-12)


def test_anatomy_needs_the_second_modality_to_dominate():
    mri = 100 + 10 * _checker()
    at_margin = mri.max() + DOMINANCE_LEVELS  # not above every MRI pixel by more than the margin
    assert np.isnan(anatomy_under_function(mri, mri, np.full_like(mri, mri.min() + DOMINANCE_LEVELS)))
    assert not np.isnan(anatomy_under_function(mri, mri, np.full_like(mri, at_margin)))  # dark pixels qualify
    assert np.isnan(anatomy_under_function(mri, np.full_like(mri, 50.0), np.full_like(mri, 200.0)))  # no detail


# ----------------------------------------------------------------- rims and halos


def _step():
    """A: a vertical step 50 | 150 between columns 15 and 16 of 32x32; B: flat 40."""
    a = np.full((32, 32), 50.0)
    a[:, 16:] = 150
    return a, np.full((32, 32), 40.0)


def test_near_edges_is_six_columns_around_a_step():
    a, b = _step()
    near = near_edges(a, b)
    assert np.array_equal(np.flatnonzero(near.any(0)), np.arange(13, 19)) and near[:, 13:19].all()
    assert np.array_equal(near_edges(b, a), near)  # an edge of either source counts


def test_rim_share_counts_a_dark_ring_and_a_halo():
    a, b = _step()
    assert rim_share(np.maximum(a, b), a, b) == {"undershoot": 0.0, "overshoot": 0.0, "pixels": 6 * 32}
    out = a.copy()
    out[:, 17] = 20  # a dark ring beside the edge: below min(a, b) = 40 by 20 > RIM_LEVELS
    out[:, 5] = 0  # dark too, but far from any edge: not counted
    out[:10, 14] = 50 + RIM_LEVELS + 1  # a short halo: above max(a, b) = 50 by more than RIM_LEVELS
    out[10:20, 14] = 50 + RIM_LEVELS  # not more than RIM_LEVELS above: not counted
    r = rim_share(out, a, b)
    assert r["undershoot"] == 32 / 192 and r["overshoot"] == 10 / 192 and r["pixels"] == 192
    assert rim_share(out, a, b, levels=25)["undershoot"] == 0.0  # 20 below is not more than 25 below


def test_rim_share_without_edges_is_nan():
    flat = np.full((16, 16), 90.0)
    r = rim_share(flat - 50, flat, flat)
    assert np.isnan(r["undershoot"]) and np.isnan(r["overshoot"]) and r["pixels"] == 0


# ----------------------------------------------------------------- colour


def _hsv_image(h_deg, s, v, shape=(4, 5)):
    rgb = colorsys.hsv_to_rgb((h_deg % 360) / 360, s, v)
    return np.broadcast_to(np.array(rgb), (*shape, 3)).copy()


def test_rgb_to_hsv_matches_colorsys():
    rng = np.random.default_rng(0)
    x = rng.random((50, 3))
    x[0] = 0.3  # a grey: hue 0, saturation 0
    h, s, v = rgb_to_hsv(x)
    ref = np.array([colorsys.rgb_to_hsv(*p) for p in x])
    assert np.allclose(h, ref[:, 0] * 360) and np.allclose(s, ref[:, 1]) and np.allclose(v, ref[:, 2])


def test_hot_mask_is_bright_luminance():
    px = np.array([[[1.0, 0, 0], [1, 1, 0], [1, 1, 1], [0.5, 0.5, 0.5]]])  # red .299, yellow .886, white, grey .5
    assert hot_mask(px).tolist() == [[False, True, True, HOT_LEVEL / 255 <= 0.5]]


def test_colour_error_of_same_colour_rotated_hue_and_paler_output():
    src = _hsv_image(40, 0.8, 0.9)
    hot = np.ones(src.shape[:2], bool)
    assert colour_error(src, src, hot) == {"hue_deg": 0.0, "saturation": 0.0, "pixels": 20}
    e = colour_error(_hsv_image(70, 0.8, 0.9), src, hot)
    assert e["hue_deg"] == pytest.approx(30) and e["saturation"] == pytest.approx(0)
    wrap = colour_error(_hsv_image(20, 0.8, 0.9), _hsv_image(350, 0.8, 0.9), hot)
    assert wrap["hue_deg"] == pytest.approx(30)  # the short way round the hue circle
    pale = colour_error(_hsv_image(40, 0.5, 0.9), src, hot)
    assert pale["hue_deg"] == pytest.approx(0, abs=1e-9) and pale["saturation"] == pytest.approx(0.3)


def test_colour_error_only_where_hot_and_hue_only_where_coloured():
    src = _hsv_image(40, 0.8, 0.9)
    out = _hsv_image(100, 0.8, 0.9)  # hue 60 degrees off
    out[0, 0] = 0.7  # a grey output pixel: no hue, saturation 0.8 lost
    hot = np.zeros(src.shape[:2], bool)
    hot[0, :2] = True
    e = colour_error(out, src, hot)
    assert e["pixels"] == 2 and e["hue_deg"] == pytest.approx(60) and e["saturation"] == pytest.approx(0.4)
    grey = colour_error(np.full_like(src, 0.7), src, hot)
    assert np.isnan(grey["hue_deg"]) and grey["saturation"] == pytest.approx(0.8)
    assert HUE_MIN_SATURATION > 0 and np.isnan(colour_error(out, src, hot & False)["saturation"])


def test_reader_measures_order():
    a, b = _step()
    v = reader_measures(np.maximum(a, b), a, b)
    assert len(v) == len(READER_NAMES) and v[1:3] == [0.0, 0.0] and np.isnan(v[3]) and np.isnan(v[4])


def test_report_reader_targets_pass_and_fail():
    from amif_research.metrics import NAMES
    from conftest import load_tool

    report = load_tool("make_report")
    kinds = ("CT", "PET", "SPECT")

    def reader_row(anatomy, under, sat):
        return {
            k: {"mean": [anatomy, under, 0.0, None if k == "CT" else 0.0, None if k == "CT" else sat[k]]} for k in kinds
        }

    agg = {
        "metrics": list(NAMES),
        "win_metrics": ["EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM"],
        "rows": {
            r: {k: {"mean": [v] * len(NAMES)} for k in kinds}
            for r, v in (("AMIF keyed", 2.0), ("max", 1.0), ("GFF", 3.0))
        },
        "reader": {
            "measures": list(READER_NAMES),
            "rows": {
                "AMIF keyed": reader_row(0.5, 0.006, {"PET": 0.09, "SPECT": 0.11}),
                "max": reader_row(0.2, 0.0, {"PET": 0.08, "SPECT": 0.08}),
                "GFF": reader_row(0.4, 0.0, {"PET": 0.0, "SPECT": 0.0}),
            },
        },
    }
    lines = report.reader_targets(agg)
    anatomy, rims, colour, vs_max, vs_gff = lines[2:]
    assert anatomy.endswith("| yes |") and anatomy.count(") yes") == 3
    assert rims.endswith("| **no** |") and "0.60% (max 0.00%) no" in rims  # 0.6% > 0 + 0.5%
    assert colour.endswith("| **no** |") and "n/a (grey)" in colour
    assert "sat 0.090 (max 0.080), hue 0.0° (max 0.0°) yes" in colour and "sat 0.110 (max 0.080), hue" in colour
    assert vs_max.endswith("| 8/8 | 8/8 | 8/8 | yes |") and vs_gff.endswith("| 0/8 | 0/8 | 0/8 | **no** |")
    assert "not measured" in report.reader_targets({"rows": {}})[0]
