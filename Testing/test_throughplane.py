"""Through-plane consistency: the residual filter streams exactly, passes what every slice shares, and the
sliced axis of a fused volume is no rougher than the in-plane ones (research/tools/through_plane.py's
measure)."""

import numpy as np
import pytest
from scipy.ndimage import convolve1d

from amif.fusion import fuse_volumes
from amif.keys import load_key
from amif.package import bundled_key_path, bundled_model_path, load_package
from amif.sample import sample_volumes
from amif.throughplane import THROUGH_PLANE_WEIGHT, SliceSmoother
from conftest import load_tool

tool = load_tool("through_plane")


def streamed(r: np.ndarray, sizes, weight=THROUGH_PLANE_WEIGHT):
    """Push r's slices in batches of the given sizes (cycled); (filtered slices, their items in order)."""
    s, out, items, i, k = SliceSmoother(weight), [], [], 0, 0
    while i < len(r):
        n = sizes[k % len(sizes)]
        done, its = s.push(r[i : i + n], list(range(i, min(len(r), i + n))))
        out.extend(done)
        items.extend(its)
        i, k = i + n, k + 1
    done, its = s.finish()
    return np.array(out + list(done)), items + its


@pytest.mark.parametrize("n", [1, 2, 3, 7])
@pytest.mark.parametrize("sizes", [(1,), (2,), (3, 1), (64,)])
def test_streaming_equals_the_whole_volume_filter(n, sizes):
    r = np.random.default_rng(n).normal(size=(n, 5, 4)).astype(np.float32)
    w = THROUGH_PLANE_WEIGHT
    want = convolve1d(r, np.array([w, 1 - 2 * w, w], np.float32), axis=0, mode="nearest")
    got, items = streamed(r, sizes)
    assert items == list(range(n))
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_what_every_slice_shares_passes_unchanged():
    strokes = np.random.default_rng(0).random((6, 8)).astype(np.float32)
    got, _ = streamed(np.repeat(strokes[None], 5, 0), (2,))
    np.testing.assert_allclose(got, np.repeat(strokes[None], 5, 0), atol=1e-6)


def test_weight_zero_is_identity_and_bad_weights_are_refused():
    r = np.random.default_rng(1).normal(size=(4, 3, 3)).astype(np.float32)
    np.testing.assert_array_equal(streamed(r, (3,), weight=0.0)[0], r)
    with pytest.raises(ValueError):
        SliceSmoother(0.6)


@pytest.fixture(scope="module")
def sample_run():
    import SimpleITK as sitk

    from amif.fusion import display_view

    package, key = load_package(bundled_model_path()), load_key(bundled_key_path())
    a, b = sample_volumes()
    sa, sb = tool.unit_sources(a, b)
    ref = np.maximum(sa, sb)

    def fused(weight, k=key, batch=None):
        r = fuse_volumes(a, b, package, k, device="cpu", through_plane=weight, batch=batch)
        return display_view(a)(sitk.GetArrayFromImage(r.image)), r

    return fused, ref, ref > tool.HEAD


def test_sliced_axis_no_rougher_than_in_plane_on_the_sample(sample_run):
    fused, ref, head = sample_run
    after = tool.excess(tool.roughness(fused(THROUGH_PLANE_WEIGHT)[0], ref, head))
    before = tool.excess(tool.roughness(fused(0.0)[0], ref, head))
    assert after <= tool.TARGET, f"sliced axis {after:+.1%} rougher than in-plane (target {tool.TARGET:.0%})"
    assert before > tool.TARGET  # the measure sees slice-by-slice fusion's roughness


def test_result_does_not_depend_on_the_batch(sample_run):
    fused = sample_run[0]
    one, r1 = fused(THROUGH_PLANE_WEIGHT, batch=1)
    three, r3 = fused(THROUGH_PLANE_WEIGHT, batch=3)
    np.testing.assert_allclose(one, three, atol=1e-5)
    assert r1.verdict.state == r3.verdict.state


def test_unkeyed_volume_still_flagged(sample_run):
    fused = sample_run[0]
    _, r = fused(THROUGH_PLANE_WEIGHT, k=None)
    assert r.verdict.state != "clean"


def test_published_report_meets_the_target():
    import json

    report = json.loads((tool.ROOT / "docs" / "reports" / "through-plane.json").read_text())
    shipped = f"{THROUGH_PLANE_WEIGHT:g}"
    assert report["cases"], "no case measured"
    for name, states in report["cases"].items():
        got = states["keyed"][shipped]["excess"]
        assert got <= report["target_excess"], f"{name}: sliced axis {got:+.1%} rougher than in-plane"
