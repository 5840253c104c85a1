"""`amif attack` input-transforms and reslice: transforms and their inverses, the merge rules on stacks
computed by hand, the family end to end on a model that marks in the slice frame, and reslicing's axis
permutations."""

import numpy as np
import pytest
import SimpleITK as sitk
from test_attack import IDENT, MarkingNet
from test_evaluate import _synthetic_pairs

from amif.errors import AMIFError
from amif.keys import load_key
from amif.package import ModelPackage
from amif_research import attack_inputs as ai
from amif_research.attack import AttackOptions, Target
from amif_research.attack_suite import ATTACKS
from amif_research.data import list_pairs, load_pairs


def _smooth(h=48, w=40, n=2):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([0.5 + 0.3 * np.sin(xx / (6 + i)) * np.cos(yy / 7) for i in range(n)]).astype(np.float32)


# ----------------------------------------------------------------- transforms


def test_dihedral_inverses_are_exact_and_the_eight_differ():
    x = np.random.default_rng(0).random((2, 6, 5)).astype(np.float32)  # not square: rotations swap the sides
    seen = set()
    for t in ai.DIHEDRAL:
        y = t.forward(x, 0.0)
        assert np.array_equal(t.inverse(y, np.nan), x), t.name
        seen.add(y.tobytes() + bytes(y.shape))
    assert len(seen) == 8 and len({t.name for t in ai.DIHEDRAL}) == 8


def test_shift_moves_the_content_and_its_inverse_restores_it_where_known():
    x = _smooth()
    t = ai.shift(1 / 8, -1 / 8)  # 6 rows down, 5 columns left
    y = t.forward(x, 0.0)
    assert np.array_equal(y[:, 6:, :-5], x[:, :-6, 5:]) and (y[:, :6] == 0).all() and (y[:, :, -5:] == 0).all()
    back = t.inverse(y, np.nan)
    known = np.isfinite(back)
    assert np.array_equal(back[known], x[known])
    assert not known[:, -6:].any() and not known[:, :, :5].any() and known[:, :-6, 5:].all()


@pytest.mark.parametrize("s", [0.8, 1.25])
def test_rescale_inverse_is_within_interpolation_error(s):
    x = _smooth(64, 64)
    t = ai.rescale(s)
    y = t.forward(x, 0.0)
    assert np.abs(y - x).max() > 0.05  # it does move the content
    back = t.inverse(y, np.nan)
    known = np.isfinite(back)
    assert known[:, 16:48, 16:48].all()
    inner = known[:, 1:-1, 1:-1]  # for s < 1 the outermost ring was mixed with the background fill
    assert np.abs(back[:, 1:-1, 1:-1][inner] - x[:, 1:-1, 1:-1][inner]).max() < 0.01
    if s > 1:  # what the zoom cropped is unknown
        assert not known[:, :2].any()


def test_pools_start_with_the_plain_query_and_hold_eight():
    for name, ts in ai.SETS.items():
        assert ts[0].name == "identity" and len(ts) == ai.MAX_QUERIES, name
    assert len(ai.MIXED_ORDER) == ai.MAX_QUERIES and ai.MIXED_ORDER[0] == ("dihedral", 0)


# ----------------------------------------------------------------- merge rules


def _stack(*values):
    """Candidates (K, 1, 1, 2): pixel 0 takes the values given, pixel 1 agrees everywhere (0.5)."""
    return np.array([[[[v, 0.5]]] for v in values], np.float32)


def test_every_rule_drops_the_one_stroke_among_three():
    c = _stack(0.2, 0.2, 0.9)
    for rule in ai.MERGES:
        assert np.allclose(ai.merged(c, rule)[0, 0], [0.2, 0.5]), rule


def test_median_and_trimmed_mean_by_hand():
    c = _stack(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 1.0)  # 8: two cut from each end
    assert np.isclose(ai.merged(c, "median")[0, 0, 0], 0.45)
    assert np.isclose(ai.merged(c, "trimmed mean")[0, 0, 0], np.mean([0.3, 0.4, 0.5, 0.6]))
    assert np.isclose(ai.merged(_stack(0.2, 0.6), "trimmed mean")[0, 0, 0], 0.4)  # nothing cut from two


def test_unknown_candidates_are_left_out():
    c = _stack(0.3, np.nan, 0.5)
    for rule in ("median", "trimmed mean", "outlier rejection"):
        assert np.isclose(ai.merged(c, rule)[0, 0, 0], 0.4), rule


def test_outlier_rejection_averages_the_agreeing():
    c = _stack(0.5, 0.51, 0.49, 0.9)
    assert np.isclose(ai.merged(c, "outlier rejection")[0, 0, 0], 0.5, atol=1e-6)
    assert np.isclose(ai.merged(_stack(0.2, 0.6), "outlier rejection")[0, 0, 0], 0.4)  # two: the mean


def test_stroke_aware_keeps_the_candidate_without_the_stroke():
    bright = _stack(0.2, 0.9)  # two candidates: a median can only average them
    assert np.isclose(ai.merged(bright, "median")[0, 0, 0], 0.55)
    ref = np.array([[[0.25, 0.5]]], np.float32)  # stroke-free stand-in (the max rule): the stroke is the bright one
    assert ai.stroke_sign(bright, ref)[0] == 1
    assert np.isclose(ai.merged(bright, "stroke-aware", ref)[0, 0, 0], 0.2)
    assert np.isclose(ai.merged(bright, "stroke-aware", 1 - ref)[0, 0, 0], 0.9)  # dark strokes: the other one
    dark = _stack(0.8, 0.1, 0.8)
    assert ai.stroke_sign(dark)[0] == -1
    assert np.isclose(ai.merged(dark, "stroke-aware")[0, 0, 0], 0.8)
    near = _stack(0.2, 0.21, 0.9)  # agreeing candidates are averaged
    assert np.isclose(ai.merged(near, "stroke-aware")[0, 0, 0], 0.205)


def test_query_counts():
    assert ai.query_counts("8, 2,3,3") == [2, 3, 8]
    for bad in ("1,2", "9", "", "x"):
        with pytest.raises(AMIFError):
            ai.query_counts(bad)


# ----------------------------------------------------------------- the family end to end


@pytest.fixture(scope="module")
def marking(tiny_package, tmp_path_factory):
    """A target whose model writes the identifier at fixed frame positions on every wrong code."""
    _, key_path, _ = tiny_package
    key = load_key(key_path)
    manifest = {"model_id": key.model_id, "key_id": key.key_id, "identifier": IDENT, "verify": {"threshold": 0.12}}
    ps = list_pairs(_synthetic_pairs(tmp_path_factory.mktemp("pairs")), "test")
    a, b = load_pairs(ps)
    return Target(
        ModelPackage(manifest, MarkingNet(key.code()).eval()),
        key.code(),
        a / 255,
        b / 255,
        [p.kind for p in ps],
        [p.name for p in ps],
    )


def test_registered():
    assert ATTACKS["input-transforms"].run is ai.input_transforms and ATTACKS["reslice"].run is ai.reslice


def test_input_transforms_end_to_end(marking):
    r = ai.input_transforms(marking, AttackOptions(input_queries="2,8"), progress=False)
    sets = [*ai.SETS, "mixed"]
    assert [(d["set"], d["queries"], d["rule"]) for d in r.data] == [
        (s, k, rule) for s in sets for k in (2, 8) for rule in ai.MERGES
    ]
    assert len(r.rows) == len(r.data) and all(len(row) == len(r.columns) for row in r.rows)
    assert all(d["trace"] is None for d in r.data) and not r.met  # no trace channel: the target cannot be met
    unkeyed = ai.checks(marking, marking.unkeyed, 30.0)
    assert unkeyed["public"] == 1.0  # the plain unkeyed output is flagged
    row = next(d for d in r.data if (d["set"], d["queries"], d["rule"]) == ("dihedral", 8, "stroke-aware"))
    assert row["public"] == 0.0 and row["psnr"] > unkeyed["psnr"] + 3  # the frame-fixed strokes are merged away
    assert row["transforms"] == [t.name for t in ai.DIHEDRAL]


# ----------------------------------------------------------------- reslicing


def _volume(size=(20, 18, 16)):
    rng = np.random.default_rng(1)
    img = sitk.GetImageFromArray(rng.random(size[::-1]).astype(np.float32))
    img.SetSpacing((1.0, 1.5, 2.0))
    img.SetOrigin((3.0, -4.0, 5.0))
    img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    return img


@pytest.mark.parametrize("perm", ai.RESLICE_PERMS)
def test_permute_kept_keeps_world_geometry_and_undoes(perm):
    img = _volume()
    q = ai.permute_kept(img, perm)
    arr, qarr = sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(q)
    assert np.array_equal(qarr, np.transpose(arr, perm))
    for idx in ((0, 0, 0), (3, 5, 7), (15, 17, 19)):  # (z, y, x) of the stored array
        moved = tuple(int(idx[p]) for p in perm)  # the same voxel in the permuted array
        assert np.allclose(q.TransformIndexToPhysicalPoint(moved[::-1]), img.TransformIndexToPhysicalPoint(idx[::-1]))
    back = ai.permute_kept(q, list(np.argsort(perm)))
    assert np.array_equal(sitk.GetArrayFromImage(back), arr)
    for f in ("GetSpacing", "GetOrigin", "GetDirection"):
        assert np.allclose(getattr(back, f)(), getattr(img, f)()), f


def test_relabel_permutes_the_array_and_claims_identity():
    img = _volume()
    r = ai.relabel(img, (2, 1, 0))
    assert np.array_equal(sitk.GetArrayFromImage(r), np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0)))
    assert r.GetSpacing() == (2.0, 1.5, 1.0) and r.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)


def test_reslice_rows_and_geometry_kept_changes_nothing(marking):
    yy, xx, zz = np.mgrid[0:32, 0:32, 0:20]
    body = np.exp(-((xx - 16) ** 2 + (yy - 16) ** 2 + 2 * (zz - 10) ** 2) / 120.0).transpose(2, 0, 1)
    vols = []
    for v in (100 * body + 10 * np.sin(xx / 3).transpose(2, 0, 1), 50 * body**2):
        img = sitk.GetImageFromArray(v.astype(np.float32))
        img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
        vols.append(img)
    rows = ai.reslice_volume(marking.package, marking.code, *vols)
    outs = [(r["output"], r["presentation"]) for r in rows]
    assert outs[:2] == [("unkeyed, as stored", "-"), ("sources' max rule", "-")] and len(rows) == 8
    plain = rows[0]
    assert plain["public"] == 1.0
    kept = [r for r in rows if r["presentation"] == "geometry kept"]
    assert len(kept) == 3 and all(r["psnr"] == plain["psnr"] and r["public"] == 1.0 for r in kept)
    relabelled = [r for r in rows if r["presentation"] == "header relabelled"]
    assert len(relabelled) == 3 and all(r["psnr"] != plain["psnr"] for r in relabelled)  # strokes in other planes
    assert relabelled[-1]["output"].startswith("median") and relabelled[-1]["volume_score"] < plain["volume_score"]
