"""The trace channel (amif.trace): a secret texture drawn from the key, found only by the key's holder."""

import numpy as np
import pytest
import torch

from amif.inference import run_network
from amif.keys import load_key
from amif.package import load_package
from amif.sample import sample_slices
from amif.trace import (
    PUBLIC_THRESHOLD,
    TRACE_THRESHOLD,
    null_spread,
    public_score,
    public_weights,
    texture,
    trace_scale,
    trace_score,
    trace_weights,
)
from conftest import ROOT, load_tool

MODELS = ROOT / "AMIFFusion" / "Resources" / "Models"


def _t(x):
    return torch.from_numpy(np.asarray(x, np.float32))[:, None]


@pytest.mark.parametrize("dihedral", [False, True])
def test_the_texture_is_drawn_from_the_key_secret_and_the_model_id(dihedral):
    tensors = lambda w: [x for x in w if x is not None]  # noqa: E731
    same = [tensors(trace_weights(bytes(range(32)), "m", dihedral)) for _ in range(2)]
    assert all(torch.equal(x, y) for x, y in zip(*same))
    for other in (trace_weights(bytes(32), "m", dihedral), trace_weights(bytes(range(32)), "n", dihedral)):
        assert not any(torch.equal(x, y) for x, y in zip(same[0], tensors(other)))


TURNS = [(k, f) for f in (False, True) for k in range(4)]


def _turn(x, k, flip):
    return torch.rot90(x.flip(-1) if flip else x, k, (-2, -1))


def _unturn(y, k, flip):
    y = torch.rot90(y, -k, (-2, -1))
    return y.flip(-1) if flip else y


def test_a_dihedral_texture_follows_the_anatomy_under_flips_turns_and_shifts():
    a, b = (_t(x[None]) for x in sample_slices())
    w = trace_weights(bytes(range(32)), "m", dihedral=True)
    g = texture(a, b, w)
    for k, f in TURNS:
        torch.testing.assert_close(_unturn(texture(_turn(a, k, f), _turn(b, k, f), w), k, f), g, atol=1e-4, rtol=0)
    moved = texture(torch.roll(a, (5, -7), (-2, -1)), torch.roll(b, (5, -7), (-2, -1)), w)
    torch.testing.assert_close(torch.roll(moved, (-5, 7), (-2, -1))[..., 32:-32, 32:-32], g[..., 32:-32, 32:-32])
    old = trace_weights(bytes(range(32)), "m")  # the first kind is drawn in the slice's own frame
    turned = _unturn(texture(_turn(a, 1, False), _turn(b, 1, False), old), 1, False)
    assert float(torch.nn.functional.cosine_similarity(turned.flatten(), texture(a, b, old).flatten(), 0)) < 0.5


def test_no_secret_draws_a_dihedral_texture_that_is_flat():
    """A random draw must not saturate into a constant (which would write no texture at all): the public
    textures of many model ids all vary, on an anatomy slice and on noise."""
    a, b = (_t(x[None]) for x in sample_slices())
    noise = torch.from_numpy(np.random.default_rng(0).random((2, 1, 64, 64), np.float32))
    for i in range(24):
        w = public_weights(f"model-{i}")
        assert float(texture(a, b, w).std()) > 0.1 and float(texture(noise[:1], noise[1:], w).std()) > 0.1


def test_dihedral_textures_of_other_secrets_stay_as_far_apart_as_the_first_kind():
    """Once the sources' detail is regressed out (as the checks do), textures of different secrets correlate
    no more than the first kind's do: turning the kernels together does not collapse the family."""
    from amif.trace import _fitted

    a, b = (x[None] for x in sample_slices())

    def spread(dihedral):
        ws = [trace_weights(bytes([i]) * 32, "m", dihedral) for i in range(10)]
        ((_, gs),) = _fitted(np.maximum(a, b), a, b, (a + b) / 2, ws)
        r = np.abs(np.corrcoef(np.stack(gs))[np.triu_indices(len(ws), 1)])
        return np.median(r), np.percentile(r, 90)

    (m0, p0), (m1, p1) = spread(False), spread(True)
    assert m1 <= m0 + 0.05 and p1 <= p0 + 0.05, (m0, p0, m1, p1)


def _bundled_outputs():
    """The sample slice's sources, the bundled model and key, and its keyed and unkeyed outputs."""
    a, b = (x[None] for x in sample_slices())
    pkg = load_package(MODELS / "amif-demo.json")
    key = load_key(MODELS / "amif-demo.amifkey")
    return a, b, pkg, key, run_network(pkg, a, b, key.code()), run_network(pkg, a, b, np.zeros_like(key.code()))


def test_the_public_texture_is_found_from_the_sources_alone_and_other_fusions_stay_below_the_threshold():
    a, b, pkg, key, keyed, unkeyed = _bundled_outputs()
    pub, other = public_weights(pkg.model_id), trace_weights(key.secret, pkg.model_id, dihedral=True)
    g, g_other = (texture(_t(a), _t(b), w)[:, 0].numpy() / trace_scale(_t(a), _t(b), w) for w in (pub, other))
    noise = np.random.default_rng(0).normal(0, 0.02, a.shape)
    assert public_score(keyed + 0.03 * g + noise, a, b, pkg.model_id)[0] > PUBLIC_THRESHOLD
    assert public_score(keyed[0], a[0], b[0], pkg.model_id).shape == (1,)  # one slice as h x w
    for null in (np.maximum(a, b), (a + b) / 2, keyed, unkeyed, keyed + noise, keyed + 0.03 * g_other + noise):
        assert abs(public_score(null, a, b, pkg.model_id)[0]) < PUBLIC_THRESHOLD


def test_the_texture_is_local_so_crops_teach_it():
    """A crop's texture is the slice's texture cropped, eight pixels in from the crop's border."""
    a, b = (x[None] for x in sample_slices())
    w = trace_weights(bytes(range(32)), "m")
    whole = texture(_t(a), _t(b), w)
    crop = texture(_t(a[:, 40:120, 20:110]), _t(b[:, 40:120, 20:110]), w)
    assert torch.allclose(crop[..., 8:-8, 8:-8], whole[..., 48:112, 28:102], atol=1e-5)
    assert not torch.allclose(crop[..., :3, :], whole[..., 40:43, 20:110], atol=1e-3)  # the border differs
    assert float(whole.std()) > 0.01 and abs(float(whole.mean())) < 0.1 * float(whole.std())  # high-passed


def test_only_the_keys_holder_finds_its_texture_and_other_fusions_stay_below_the_threshold():
    a, b, pkg, key, keyed, unkeyed = _bundled_outputs()
    w, other = trace_weights(key.secret, key.model_id), trace_weights(bytes(32), key.model_id)
    s = trace_scale(_t(a), _t(b), w)
    g = texture(_t(a), _t(b), w)[:, 0].numpy() / s
    g_other = texture(_t(a), _t(b), other)[:, 0].numpy() / trace_scale(_t(a), _t(b), other)
    noise = np.random.default_rng(0).normal(0, 0.02, a.shape)  # a student's own error, larger than the texture
    carries = keyed + 0.02 * g + noise
    assert trace_score(carries, a, b, keyed, w)[0] > TRACE_THRESHOLD
    assert trace_score(carries[0], a[0], b[0], keyed[0], w).shape == (1,)  # one slice as h x w
    assert trace_score(keyed, a, b, keyed, w)[0] == 0
    for null in (np.maximum(a, b), (a + b) / 2, unkeyed, keyed + noise, keyed + 0.02 * g_other + noise):
        assert abs(trace_score(null, a, b, keyed, w)[0]) < TRACE_THRESHOLD
    assert trace_score(carries, a, b, keyed, other)[0] < TRACE_THRESHOLD  # a wrong secret finds nothing


def _calibrate_trace_on_synthetic_pairs(tmp_path, **kw):
    """research/tools/calibrate_trace.py and a folder of synthetic pairs (its test split copied as the train split)."""
    import shutil

    from test_evaluate import _synthetic_pairs

    data = _synthetic_pairs(tmp_path / "data", **kw)
    for folder in data.iterdir():
        shutil.copytree(folder / "test", folder / "train")
    return load_tool("calibrate_trace"), data


def test_calibrate_trace_refuses_a_model_without_a_trace_channel(tiny_package, tmp_path, capsys):
    tool, data = _calibrate_trace_on_synthetic_pairs(tmp_path)
    _, key, d = tiny_package
    out = tmp_path / "scores.json"
    assert tool.main(["-m", str(d / "tiny.json"), "-k", str(key), "--data", str(data), "-o", str(out)]) == 2
    assert "has no trace channel" in capsys.readouterr().err and not out.exists()


def test_the_null_spread_is_the_scores_spread_over_textures_of_other_secrets():
    a, b = (x[None] for x in sample_slices())
    pkg = load_package(MODELS / "amif-demo.json")
    key = load_key(MODELS / "amif-demo.amifkey")
    keyed = run_network(pkg, a, b, key.code())
    w = trace_weights(key.secret, key.model_id)
    g = texture(_t(a), _t(b), w)[:, 0].numpy() / trace_scale(_t(a), _t(b), w)
    noise = np.random.default_rng(0).normal(0, 0.02, a.shape)
    spreads = {}
    for name, null in (("max", np.maximum(a, b)), ("mean", (a + b) / 2), ("noise", keyed + noise)):
        spreads[name] = null_spread(null, a, b, keyed)  # images that cannot carry the key's texture
        assert spreads[name].shape == (1,) and abs(trace_score(null, a, b, keyed, w)[0]) < 3 * spreads[name][0]
    assert 0.3 < spreads["noise"][0] < 1.5  # white noise (its detail finer than the texture): z at most N(0, 1)
    unkeyed = run_network(pkg, a, b, np.zeros_like(key.code()))  # carries the key's texture (and the identifier)
    spreads["unkeyed"] = null_spread(unkeyed, a, b, keyed)
    assert spreads["unkeyed"].shape == (1,) and spreads["unkeyed"][0] > 1.5 * spreads["noise"][0]  # spreads wider
    assert trace_score(unkeyed, a, b, keyed, w)[0] > spreads["unkeyed"][0]  # the key's texture above other secrets'
    carries = keyed + 0.02 * g + noise
    assert trace_score(carries, a, b, keyed, w)[0] > 10 * null_spread(keyed + noise, a, b, keyed)[0]


def test_calibrate_trace_adds_the_texture_after_the_fact_to_a_model_without_one(tiny_package, tmp_path, capsys):
    """--synthetic S: the key's texture added to the unkeyed outputs is what the check finds in them, and
    only there (the keyed outputs and the other fusions stay at their nulls)."""
    import json

    tool, data = _calibrate_trace_on_synthetic_pairs(tmp_path, size=96)
    _, key, d = tiny_package
    out, twins = tmp_path / "scores.json", tmp_path / "no-twins"
    twins.mkdir()
    base = [
        "-m",
        str(d / "tiny.json"),
        "-k",
        str(key),
        "--data",
        str(data),
        "--twins",
        str(twins),
        "--learn-steps",
        "2",
        "--learn-batch",
        "2",
        "-o",
        str(out),
    ]
    assert tool.main(base + ["--synthetic", "0.2", "--students", "GAN"]) == 2
    assert "--students takes names from" in capsys.readouterr().err and not out.exists()
    (twins / "notes.json").write_text("{}")
    assert tool.main(base + ["--synthetic", "0.2", "--students", "U-Net"]) == 2
    assert "notes.json is not an AMIF model manifest" in capsys.readouterr().err and not out.exists()
    (twins / "notes.json").unlink()
    assert tool.main(base + ["--synthetic", "0.2", "--students", "U-Net"]) == 0
    doc = json.loads(out.read_text())
    assert doc["weights_sha256"] == json.loads((d / "tiny.json").read_text())["weights_sha256"]
    above, below = doc["groups"]["should be above"], doc["groups"]["must stay below"]
    assert set(above) == {
        "unkeyed, strokes filled from the keyed output",
        "U-Net student of the unkeyed outputs",
        *(f"U-Net student, {k}" for k in tool.CLEANUPS),
    }
    carried = np.array(above["unkeyed, strokes filled from the keyed output"])
    nulls = np.abs([z for name in ("mean", "max", "Laplacian") for z in below[name]])
    assert carried.min() > 3 * nulls.max() and below["keyed"] == [0.0] * len(carried)
