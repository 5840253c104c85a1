"""The bundled model on real and awkward volumes: keyed outputs never flagged, unkeyed ones always,
tissue that touches the slice edge kept. The real pairs are built at run time by
research/tools/make_real_pairs.py from files nibabel and nilearn ship (nilearn's from an installed
nilearn or the wheel AMIF_NILEARN_WHEEL names); a missing file skips, or fails where CI=true."""

import os

import numpy as np
import pytest

from amif.keys import load_key
from amif.package import bundled_key_path, bundled_model_path, load_package
from conftest import load_tool

pairs_tool = load_tool("make_real_pairs")
cases_tool = load_tool("verify_real_volumes")

EDGE_LOSS = 8.0  # percent of A's tissue the keyed output of the edge case may lose against the max rule


def need(found, what: str):
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {what} is missing")
        pytest.skip(f"{what} not present")
    return found


@pytest.fixture(scope="module")
def model():
    return load_package(bundled_model_path()), load_key(bundled_key_path())


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """The real pairs' folder, the MNI T1 at 3 mm (fast)."""
    out = tmp_path_factory.mktemp("real")
    pairs_tool.build_pairs(out, mni_spacing=3.0)
    return out


def _verdicts(case: str, pairs, model):
    """(keyed verdict, unkeyed verdict, keyed tissue loss %) of a case, verdicts by verify_volume on the output."""
    from amif.fusion import display_array, fuse_volumes
    from amif.verify import verify_volume

    pkg, key = model
    pair = cases_tool.case_pair(case, pairs)
    a, b = need(pair, f"the {case} pair's source files")
    ua, ub = cases_tool.unit_sources(a, b)
    out = {}
    for state, k in (("keyed", key), ("unkeyed", None)):
        y = display_array(fuse_volumes(a, b, pkg, k, device="cpu").image)
        out[state] = y
    verdict = [verify_volume(out[s], pkg.identifier, pkg.threshold) for s in ("keyed", "unkeyed")]
    return verdict[0], verdict[1], cases_tool.tissue_loss(out["keyed"], ua, ub)[0]


@pytest.mark.parametrize("case", ["t1_bold", "mni_stat", "edge_empty", "small33x41"])
def test_keyed_never_flagged_unkeyed_always(case, pairs, model):
    if case == "t1_bold":
        need(pairs_tool.nibabel_data(), "nibabel's tests/data (anatomical.nii, functional.nii)")
    if case == "mni_stat":
        need(pairs_tool.nilearn_files(), "nilearn's MNI T1 and statistical map (pip install nilearn)")
    keyed, unkeyed, loss = _verdicts(case, pairs, model)
    assert not keyed.flagged, (case, str(keyed))
    assert unkeyed.flagged, (case, str(unkeyed))
    if case == "edge_empty":  # tissue touching every edge, second volume empty
        assert loss <= EDGE_LOSS, loss


def test_network_coordinates_keep_the_identifier_layout(model):
    """Clamping the coordinates near the rim never moves a stroke pixel: every pixel of the strokes
    gets its own coordinate, and the rim's are clamped inside (-1, 1)."""
    from amif.identifier import identifier_mask
    from amif.inference import network_coords

    pkg, _ = model
    for h, w in ((256, 256), (155, 131), (65, 75), (41, 33), (512, 300)):
        ys, xs = (v.numpy() for v in network_coords(pkg, h, w))
        strokes = identifier_mask(pkg.identifier, h, w) > 0
        rows, cols = np.flatnonzero(strokes.any(1)), np.flatnonzero(strokes.any(0))
        np.testing.assert_allclose(ys[rows], (rows * 2 + 1) / h - 1, atol=1e-6)
        np.testing.assert_allclose(xs[cols], (cols * 2 + 1) / w - 1, atol=1e-6)
        assert max(abs(ys).max(), abs(xs).max()) < 0.95


def test_volume_verdict_reads_either_contrast_and_erasure_where_evident():
    from amif.verify import NO_EVIDENCE, volume_verdict

    # slices of both signs (strokes bright on anatomy, dark on a grey background): the identifier is there
    v = volume_verdict(np.array([-0.28, -0.27, 0.25, 0.22, -0.26, 0.24]), np.full(6, 7.0), 0.12)
    assert v.marked and v.flagged and v.score == pytest.approx(0.255)
    # clean slices of either sign stay clean
    assert not volume_verdict(np.array([-0.03, 0.02, -0.01, 0.03]), np.full(4, 1.1), 0.12).flagged
    # the erasure ratio counts only slices with evidence: slices without none do not dilute wiped ones
    wiped = volume_verdict(np.zeros(5), np.array([0.1, 0.12, NO_EVIDENCE, NO_EVIDENCE, NO_EVIDENCE]), 0.12)
    assert wiped.erased and wiped.erasure == pytest.approx(0.11)
    assert volume_verdict(np.zeros(2), np.full(2, NO_EVIDENCE), 0.12).erasure == NO_EVIDENCE
