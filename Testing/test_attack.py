"""`amif attack`: the attack families' numbers, on a model made to mark and on the tiny package."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_evaluate import _synthetic_pairs
from torch import nn

from amif.cli import main
from amif.errors import AMIFError
from amif.identifier import identifier_mask
from amif.keys import generate_key, load_key, save_key
from amif.network import AMIFNet, NetConfig
from amif.package import ModelPackage
from amif_research import attack as atk
from amif_research import attack_suite as suite
from amif_research.attack import AttackOptions, Target
from amif_research.data import list_pairs, load_pairs
from amif_research.losses import shift_content
from conftest import ROOT, load_tool

IDENT = "TEST · MARK"
FOUR = ["wrong-keys", "classical", "surgery", "forging"]  # the attacks that need no attacker's pairs
SMALL = dict(random_codes=24, near_miss_codes=32, foreign_codes=4, forge_steps=12, forge_restarts=2, forge_images=2)


class MarkingNet(AMIFNet):
    """A model made to mark (a test double, not how AMIFNet works): FiLM off, so the fused image does
    not depend on the code, darkened to 0.4 so that bright strokes read clearly, plus the identifier's
    strokes times the parameter `mark_gain` for every code but the owner's. `weak`: the strokes also
    fade as the code's mean rises, so a forger can follow the gradient out of the mark. `shift`: wrong
    codes' outputs also move that many pixels right and down (the manifest's mark shift)."""

    def __init__(self, owner_code, weak=False, shift=0):
        torch.manual_seed(0)
        super().__init__(NetConfig(c1=4, c2=8, c3=8, mem_channels=4, mem_size=32, key_features=64, key_hidden=16))
        with torch.no_grad():
            self.key.mlp[2].weight.zero_()
            self.key.mlp[2].bias.zero_()
        self.mark_gain = nn.Parameter(torch.ones(()))
        self.register_buffer("owner", torch.as_tensor(owner_code, dtype=torch.float32))
        self.weak, self.shift = weak, shift

    def decode(self, enc, code, phases=None):
        y = 0.4 * super().decode(enc, code, phases)
        code = code.reshape(-1, code.shape[-1])
        code = code.expand(y.shape[0], -1) if code.shape[0] == 1 else code
        wrong = (code - self.owner).abs().amax(1) > 1e-6
        if self.shift:  # the content of every wrong code's output moves right and down
            y = torch.where(wrong[:, None, None, None], shift_content(y, self.shift), y)
        gain = self.mark_gain * wrong.to(y)
        if self.weak:
            gain = gain * (1 - 4 * code.mean(1)).clamp(0, 1)
        mask = torch.from_numpy(identifier_mask(IDENT, *y.shape[-2:])).to(y)
        return y + 0.3 * gain[:, None, None, None] * mask


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return _synthetic_pairs(tmp_path_factory.mktemp("pairs"))


def _target(tiny_package, pairs, weak=False) -> Target:
    _, key_path, _ = tiny_package
    key = load_key(key_path)
    manifest = {"model_id": key.model_id, "key_id": key.key_id, "identifier": IDENT, "verify": {"threshold": 0.12}}
    pkg = ModelPackage(manifest, MarkingNet(key.code(), weak).eval())
    ps = list_pairs(pairs, "test")
    a, b = load_pairs(ps)
    t = Target(pkg, key.code(), a / 255, b / 255, [p.kind for p in ps], [p.name for p in ps])
    t.owner_secret = key.secret
    return t


@pytest.fixture(scope="module")
def marking(tiny_package, pairs):
    return _target(tiny_package, pairs)


def _row(result, **match):
    rows = [d for d in result.data if all(d.get(k) == v for k, v in match.items())]
    assert len(rows) == 1, (match, [d.get("codes") or d.get("target") for d in result.data])
    return rows[0]


# ----------------------------------------------------------------- transforms


def test_classical_transforms_cost_a_clean_image_quality():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]
    x = (0.5 + 0.3 * np.sin(xx / 3) * np.cos(yy / 5) + 0.05 * rng.standard_normal((64, 64))).clip(0, 1)[None]
    x = x.astype(np.float32)
    p = lambda y: float(atk.psnr(y, x)[0])  # noqa: E731
    blur = [p(atk.gaussian_blur(x, s)) for s in (0.5, 1.0, 2.0, 3.0)]
    assert blur == sorted(blur, reverse=True) and blur[0] < atk.PSNR_CAP
    assert p(atk.jpeg(x, 30)) < p(atk.jpeg(x, 90)) < 60
    assert p(atk.median_filter(x, 7)) < p(atk.median_filter(x, 3)) < 60
    assert p(atk.gaussian_noise(x, 20)) < p(atk.gaussian_noise(x, 2)) < 60
    assert p(atk.down_up(x, 0.25)) < p(atk.down_up(x, 0.75)) < 60
    assert p(atk.crop_rescale(x, 0.5)) < p(atk.crop_rescale(x, 0.9)) < 60
    assert p(atk.equalize(x)) < 40
    for fn, arg in ((atk.jpeg, 50), (atk.median_filter, 5), (atk.down_up, 0.5), (atk.crop_rescale, 0.75)):
        assert fn(x, arg).shape == x.shape and fn(x, arg).dtype == np.float32
    # inpainting leaves known pixels alone and fills a smooth (linear) image almost exactly
    ramp = np.tile(np.linspace(0.1, 0.9, 64, dtype=np.float32), (64, 1))[None]
    mask = atk.identifier_region(IDENT, 64, 64, dilate=1)
    assert 0.05 < mask.mean() < 0.5 and atk.identifier_region(IDENT, 64, 64).sum() < mask.sum()
    damaged = np.where(mask, 1.0, ramp).astype(np.float32)
    filled = atk.inpaint(damaged, mask)
    assert np.array_equal(filled[0][~mask], ramp[0][~mask])
    assert np.abs(filled - ramp).max() < 0.01 and p(damaged) < 15


def test_measures():
    x = np.full((2, 32, 32), 0.5, np.float32)
    assert np.allclose(atk.psnr(x, x), atk.PSNR_CAP) and np.allclose(atk.ssim(x, x), 1)
    y = x + np.float32(0.1)
    assert np.allclose(atk.psnr(y, x), 20.0, atol=1e-4) and (atk.ssim(y, x) < 1).all()


# ----------------------------------------------------------------- wrong keys


def test_wrong_keys_flag_every_code_on_a_marking_model(marking):
    opts = AttackOptions(**SMALL)
    r = atk.wrong_keys(marking, opts, progress=False)
    assert r.met, r.summary
    rnd = _row(r, codes="random codes (24)")
    assert rnd["n"] == 24 and rnd["flagged"] == 1.0 and rnd["psnr_mean"] < 30 and rnd["broken"] == 0
    near = [d for d in r.data if d["part_of"] and d["part_of"].startswith("near-miss codes")]
    assert sum(d["n"] for d in near) == 32 and near[0]["codes"] == "near-miss, 1 bit (1)"
    assert near[-1]["codes"] == "near-miss, 17-32 bits (16)" and all(d["flagged"] == 1.0 for d in near)
    assert _row(r, codes="zero code = no key (6)")["flagged"] == 1.0
    assert _row(r, codes="other model ids, fresh secrets (4)")["flagged"] == 1.0
    assert _row(r, codes="other model ids, the owner's secret (4)")["flagged"] == 1.0
    keyed = _row(r, codes="owner's key, reference (6)")
    assert keyed["flagged"] == 0.0 and keyed["psnr_mean"] == atk.PSNR_CAP and keyed["met"]
    # the batched decoder (many codes per pair) gives what a plain forward pass gives
    m = atk.code_trials(marking, np.zeros((marking.n, 256), np.float32), batch=4)
    plain_scores, plain_erasure = atk.scores(marking, marking.unkeyed)
    assert np.allclose(m.scores, plain_scores, atol=1e-5) and np.allclose(m.erasure, plain_erasure, atol=1e-4)
    assert np.allclose(m.psnr, atk.psnr(marking.unkeyed, marking.keyed), atol=1e-3)


def test_wrong_keys_fail_on_a_model_that_does_not_mark(tiny_package, pairs):
    from amif_research.attack_suite import load_target

    _, key, d = tiny_package
    t, info = load_target(d / "tiny", key, pairs, "test", limit=1)
    assert t.n == 3 and info["pairs"] == 3
    r = atk.wrong_keys(t, AttackOptions(random_codes=6, near_miss_codes=4, foreign_codes=2), progress=False)
    assert not r.met and _row(r, codes="zero code = no key (3)")["flagged"] < 1.0


# ----------------------------------------------------------------- classical removal


def test_classical_removal_on_a_marking_model(marking):
    r = atk.classical_removal(marking, AttackOptions(), progress=False)
    assert len(r.data) == sum(len(c[3]) for c in atk.CLASSICAL if c[1] not in atk.SHIFT_ONLY) == len(r.rows)
    assert {d["attack"] for d in r.data} == {c[0] for c in atk.CLASSICAL if c[1] not in atk.SHIFT_ONLY}
    for d in r.data:
        assert d["flagged_before"] == 1.0 and d["met"] == (
            d["flagged_after"] >= 0.95 or d["psnr_after"] < d["psnr_before"]
        )
    # noise only costs quality; blurring the clean output costs it more the stronger it is
    noise = [d for d in r.data if d["attack"] == "Gaussian noise"]
    assert all(d["flagged_after"] == 1.0 and d["psnr_after"] < d["psnr_before"] for d in noise)
    blur = [d["psnr_same_on_keyed"] for d in r.data if d["attack"] == "Gaussian blur"]
    assert blur == sorted(blur, reverse=True)
    # knowing the mask exactly, inpainting takes these plain strokes off and gains quality, but leaves them
    # wiped: verify's erasure check flags every output; with texture painted back it does not: target not met
    for p in (1, 2, 3):
        inp = _row(r, attack="inpainting over the exact mask", setting=f"mask dilated {p} px")
        assert inp["flagged_after"] == inp["erased_after"] == 1.0 and inp["met"]
        assert inp["psnr_after"] > inp["psnr_before"] + 10
    tex = _row(r, attack="inpainting + texture painted back (knows the erasure check)", setting="mask dilated 1 px")
    assert tex["flagged_after"] == 0.0 and tex["psnr_after"] > tex["psnr_before"] + 10 and not tex["met"]
    assert not r.met and "inpainting + texture painted back (knows the erasure check) (mask dilated 1 px)" in r.summary
    # filling the strokes with the sources' max rule leaves neither strokes nor a wiped region to flag
    fill = _row(r, attack="strokes filled from the sources' max rule (has the sources)", setting="mask dilated 1 px")
    assert fill["flagged_after"] == 0.0 and fill["met"] == (fill["psnr_after"] < fill["psnr_before"])
    assert "the sources' max rule alone, no model at all, is" in r.notes[0]
    assert not any(d["attack"].startswith("inpainting + texture + shift") for d in r.data)  # this model has no shift


def test_filling_from_the_sources_changes_only_the_dilated_strokes(marking):
    t = marking.subset([0, 1])
    out = atk.fill_from_sources(t.unkeyed, t, 1)
    region = atk.identifier_region(t.identifier, *t.shape, 1)
    assert region.any() and (~region).any() and region.sum() > atk.identifier_region(t.identifier, *t.shape).sum()
    np.testing.assert_array_equal(out[:, ~region], t.unkeyed[:, ~region])
    np.testing.assert_array_equal(out[:, region], np.maximum(t.a, t.b)[:, region])


def test_the_shift_channel_flags_textured_inpainting_until_the_shift_is_undone(tiny_package):
    from test_fusion import _textured_sources

    key = load_key(tiny_package[1])
    manifest = {
        "model_id": key.model_id,
        "key_id": key.key_id,
        "identifier": IDENT,
        "verify": {"threshold": 0.12, "shift": 1},
    }
    a, b = (np.stack(v) for v in zip(*(_textured_sources(seed=s, n=128) for s in range(4))))
    t = Target(ModelPackage(manifest, MarkingNet(key.code(), shift=1).eval()), key.code(), a, b)
    m = atk.code_trials(t, np.stack([t.code, np.zeros_like(t.code)]))
    assert abs(m.moved[0]) < 0.3 and abs(m.moved[1] - 1) < 0.3  # wrong codes' outputs are measured for it
    r = atk.classical_removal(t, AttackOptions(), progress=False)
    assert len(r.data) == sum(len(c[3]) for c in atk.CLASSICAL)
    tex = _row(r, attack="inpainting + texture painted back (knows the erasure check)", setting="mask dilated 1 px")
    assert tex["flagged_after"] == tex["shifted_after"] == 1.0 and tex["met"]
    undo = _row(r, attack="inpainting + texture + shift undone (knows every check)", setting="mask dilated 1 px")
    assert undo["flagged_after"] == 0.0 and undo["psnr_after"] > undo["psnr_before"] + 10 and not undo["met"]


def test_the_owners_trace_check_counts_where_the_model_has_a_trace_channel(tiny_package):
    """Images verify does not flag but that carry the key's texture (a student's) are flagged 'traced' when
    the target holds the owner's texture (load_target sets it for a model with a trace channel), not else."""
    from test_fusion import _textured_sources

    from amif.trace import TRACE_THRESHOLD, texture, trace_scale, trace_weights

    key = load_key(tiny_package[1])
    manifest = {"model_id": key.model_id, "key_id": key.key_id, "identifier": IDENT, "verify": {"threshold": 0.12}}
    a, b = (np.stack(v) for v in zip(*(_textured_sources(seed=s, n=96) for s in range(3))))
    t = Target(ModelPackage(manifest, MarkingNet(key.code()).eval()), key.code(), a, b)
    w = trace_weights(key.secret, key.model_id)
    ta, tb = torch.from_numpy(a)[:, None], torch.from_numpy(b)[:, None]
    g = texture(ta, tb, w)[:, 0].numpy() / trace_scale(ta, tb, w)
    noise = np.random.default_rng(0).normal(0, 0.01, a.shape)
    student, other = t.keyed + 0.03 * g + noise, t.keyed + noise
    assert atk.Measure.of(t, student).flagged == 0 and atk.Measure.of(t, student).traces is None
    t.trace = w
    m = {k: atk.Measure.of(t, x) for k, x in (("student", student), ("other", other), ("unkeyed", t.unkeyed))}
    assert m["student"].flagged == m["student"].traced == m["student"].summary()["traced"] == 1
    assert (m["student"].traces > TRACE_THRESHOLD).all() and m["other"].flagged == 0
    assert (np.abs(m["other"].traces) < TRACE_THRESHOLD).all()
    assert m["unkeyed"].flagged == 1 and (m["unkeyed"].traces == 0).all()  # marked: the check is not run
    assert m["student"].rows([1]).traces.tolist() == m["student"].traces[1:2].tolist()
    codes = atk.code_trials(t, np.stack([t.code, np.zeros_like(t.code)]))  # the unflagged owner's output: traced?
    assert abs(codes.traces[0]) < TRACE_THRESHOLD and codes.traces[1] == 0 and codes.flags.tolist() == [False, True]


def test_the_public_texture_counts_as_verify_where_the_model_has_one(tiny_package):
    """Images without the identifier that carry the model's public texture (merged unkeyed outputs) are
    flagged 'textured' for a model whose manifest has a public texture, with no key; not else."""
    from test_fusion import _textured_sources

    from amif.trace import PUBLIC_THRESHOLD, public_weights, texture, trace_scale

    key = load_key(tiny_package[1])
    verify = {"threshold": 0.12, "public_strength": 0.05, "dihedral": True}
    manifest = {"model_id": key.model_id, "key_id": key.key_id, "identifier": IDENT, "verify": verify}
    a, b = (np.stack(v) for v in zip(*(_textured_sources(seed=s, n=96) for s in range(3))))
    t = Target(ModelPackage(manifest, MarkingNet(key.code()).eval()), key.code(), a, b)
    w = public_weights(key.model_id)
    ta, tb = torch.from_numpy(a)[:, None], torch.from_numpy(b)[:, None]
    g = texture(ta, tb, w)[:, 0].numpy() / trace_scale(ta, tb, w)
    noise = np.random.default_rng(0).normal(0, 0.01, a.shape)
    merged, other = t.keyed + 0.05 * g + noise, t.keyed + noise
    m = {k: atk.Measure.of(t, x) for k, x in (("merged", merged), ("other", other), ("unkeyed", t.unkeyed))}
    assert m["merged"].flagged == m["merged"].textured == m["merged"].summary()["textured"] == 1
    assert (m["merged"].textures > PUBLIC_THRESHOLD).all() and m["other"].flagged == 0
    assert m["unkeyed"].flagged == 1 and (m["unkeyed"].textures == 0).all()  # marked: the check is not run
    plain = Target(
        ModelPackage({**manifest, "verify": {"threshold": 0.12}}, MarkingNet(key.code()).eval()), key.code(), a, b
    )
    assert atk.Measure.of(plain, merged).flagged == 0 and atk.Measure.of(plain, merged).textures is None


# ----------------------------------------------------------------- surgery


def test_surgery_covers_every_module_and_tensor_and_finds_the_weak_one(marking):
    net = marking.net
    targets = atk.surgery_targets(net)
    names = [t[0] for t in targets]
    modules = [n for n, m in net.named_modules() if n and any(True for _ in m.parameters())]
    assert names == modules + [n for n, _ in net.named_parameters()] + [n for n, _ in net.named_buffers()]
    sub = marking.subset([0, 3])
    r = atk.surgery(sub, AttackOptions(), progress=False)
    assert len(r.rows) == len(targets)
    zero = _row(r, target="mark_gain", edit="zero")
    assert zero["flagged"] == 0.0 and zero["psnr_mean"] == atk.PSNR_CAP and zero["broken"] == 1.0
    assert _row(r, target="mark_gain", edit="random")["flagged"] == 1.0  # one value keeps its value
    assert _row(r, target="decoder.head", edit="zero")["broken"] == 0.0
    bypass = {d["target"]: d["how"] for d in r.data if d["edit"] == "bypass"}
    assert bypass["memory"] == "read = 1" and bypass["memory.spatial"] == "grid = channel mean"
    assert bypass["decoder.d1"] == bypass["decoder.d1.weight"] == "memory input cut"
    assert bypass["encoder.e2b"] == "identity" and "encoder.e2a" not in bypass
    assert not r.met and "mark_gain zero" in r.summary


def test_bypass_edits_do_what_they_say(marking):
    net = marking.net
    state = {k: v.detach() for k, v in [*net.named_parameters(), *net.named_buffers()]}
    _, edit = atk.surgery_edit(net, [], "bypass", state, None, "encoder.e2b")
    x = torch.randn(1, 8, 6, 6)
    assert torch.allclose(nn.functional.conv2d(x, edit["encoder.e2b.weight"], edit["encoder.e2b.bias"], padding=1), x)
    _, edit = atk.surgery_edit(net, [], "bypass", state, None, "decoder.d1")
    w = edit["decoder.d1.weight"]
    assert (w[:, -net.cfg.mem_channels :] == 0).all() and torch.equal(w[:, :4], state["decoder.d1.weight"][:, :4])
    gen = torch.Generator().manual_seed(0)
    _, edit = atk.surgery_edit(net, ["memory.spatial"], "random", state, gen)
    s, r = state["memory.spatial"], edit["memory.spatial"]
    assert abs(float(r.mean() - s.mean())) < 0.05 and abs(float(r.std() / s.std()) - 1) < 0.1
    with pytest.raises(AMIFError, match="Unknown surgery edit"):
        atk.surgery_edit(net, [], "melt", state, gen)


# ----------------------------------------------------------------- key forging


def test_forging_fails_on_a_gradient_free_mark_and_succeeds_on_a_weak_one(tiny_package, pairs, marking):
    opts = AttackOptions(**{**SMALL, "forge_detector": 0.0})
    r = atk.key_forging(marking, opts, progress=False)
    (d,) = r.data
    assert d["successes"] == 0 and d["steps_to_success"] == [] and d["steps"] == 2 * 12
    assert d["rate_upper_95"] == pytest.approx(1 - 0.05**0.5) and "(rate at most 77.6%)" in r.summary
    # no success in 2 restarts does not show a rate below 5%: not met, not failed either
    assert not r.met and not d["met"] and r.undecided and r.rows[0][-2] == "not shown"
    assert all(run["final"]["flagged"] == 1.0 for run in d["runs"])
    weak = _target(tiny_package, pairs, weak=True)
    r = atk.key_forging(weak, opts, progress=False)
    (d,) = r.data
    assert not r.met and not r.undecided and d["successes"] == 2 and d["success_rate"] == 1.0
    assert r.rows[0][-2] == "**no**"
    assert all(1 <= s <= 12 for s in d["steps_to_success"]) and d["steps"] == sum(d["steps_to_success"])
    assert all(run["final"]["flagged"] <= 0.5 for run in d["runs"])
    assert all(run["all_pairs"]["n"] == weak.n for run in d["runs"])
    emb = weak.package.net.key
    key = torch.sin(emb.phases(torch.from_numpy(weak.code).float()))
    for run in d["runs"]:  # the key embedding's cosine where each descent started (a random +-1 code) and ended
        gen = torch.Generator().manual_seed(opts.seed * 1000 + run["restart"])
        start = (torch.randint(0, 2, (weak.code.size,), generator=gen) * 2 - 1).float()
        start = float(torch.nn.functional.cosine_similarity(torch.sin(emb.phases(start)), key, 0))
        assert run["key_embedding_cosine"][0] == pytest.approx(start, abs=1e-6)
        assert run["key_embedding_cosine"][1] != run["key_embedding_cosine"][0]  # moved: the weak mark fades
    assert "2/2 restarts succeed within 12 steps (rate at most 100.0%)" in r.summary
    assert d["rate_upper_95"] == 1.0 and r.rows[0][1].startswith("2/2 (100.0%; at most 100.0%)")
    # the detector variant is a second row
    r = atk.key_forging(weak, AttackOptions(**{**SMALL, "forge_steps": 2, "forge_restarts": 1}), progress=False)
    assert [d["detector_weight"] for d in r.data] == [0.0, 1.0] and len(r.rows) == 2
    # --forge-detector-only: the detector variant alone, its restarts those of the same seed's second row
    only = atk.key_forging(
        weak,
        AttackOptions(**{**SMALL, "forge_steps": 2, "forge_restarts": 1, "forge_detector_only": True}),
        progress=False,
    )
    assert [d["detector_weight"] for d in only.data] == [1.0] and len(only.rows) == 1
    assert only.data[0]["runs"][0]["final"] == r.data[1]["runs"][0]["final"]
    with pytest.raises(AMIFError, match="--forge-detector-only needs"):
        AttackOptions(forge_detector=0.0, forge_detector_only=True).check()


# ----------------------------------------------------------------- selection, CLI and report


def test_rate_upper_is_the_one_sided_clopper_pearson_bound():
    from math import comb

    for n in (1, 2, 6, 59):  # no success: closed form 1 - 0.05**(1/n)
        assert atk.rate_upper(0, n) == pytest.approx(1 - 0.05 ** (1 / n), abs=1e-9)
    assert atk.rate_upper(0, 59) < 0.05 < atk.rate_upper(0, 58)
    for k, n in ((1, 10), (3, 20), (5, 6)):  # the binomial tail at the bound is exactly 5%
        p = atk.rate_upper(k, n)
        assert k / n < p < 1
        assert sum(comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1)) == pytest.approx(0.05, abs=1e-9)
    assert atk.rate_upper(1, 10) == pytest.approx(0.3942, abs=1e-4)  # published tables: 0.394
    assert atk.rate_upper(4, 4) == 1.0 and atk.rate_upper(1, 10) < atk.rate_upper(2, 10) < atk.rate_upper(2, 5)
    with pytest.raises(ValueError):
        atk.rate_upper(3, 2)


def _forging_json(target, path, **options) -> Path:
    """One `amif attack --attacks forging` JSON document, as the CLI writes it (data path and output inside)."""
    opts = AttackOptions(**{**SMALL, "forge_detector": 0.0, **options})
    result = atk.key_forging(target, opts, progress=False)
    command = f"amif attack -m m.json --data /machine/data --attacks forging --seed {opts.seed} -o /machine/o.md"
    info = {"key_id": "k", "data": "/machine/data", "split": "test", "command": command}
    suite.write_json(path, target, info, opts, [result])
    return path


def test_forging_runs_pool_each_restart_once(tiny_package, pairs, marking, tmp_path, capsys):
    weak = _target(tiny_package, pairs, weak=True)
    runs = [
        _forging_json(marking, tmp_path / "s1.json", seed=1),  # 2 restarts, none succeeds
        _forging_json(weak, tmp_path / "s0.json", seed=0),  # 2 restarts that succeed
        _forging_json(weak, tmp_path / "s0-more.json", seed=0, forge_restarts=3),  # restarts 0, 1 again + 2
        _forging_json(marking, tmp_path / "det.json", seed=2, forge_detector=1.0, forge_restarts=1),
    ]
    docs = [json.loads(p.read_text()) for p in runs]
    outcome = {
        (d["options"]["seed"], r["restart"]): r["success_step"] is not None
        for d in docs[:3]
        for r in d["attacks"]["forging"]["rows"][0]["runs"]
    }
    assert len(outcome) == 5 and 0 < sum(outcome.values()) < 5
    rows = atk.pool_forging(docs + docs[:1])  # a run given twice counts once
    fusion, detector = ({r["detector_weight"]: r for r in rows}[w] for w in (0.0, 1.0))
    assert fusion["restarts"] == 6 and fusion["seeds"] == [0, 1, 2]  # the detector run's fusion-loss restart too
    wins = sum(outcome.values()) + docs[3]["attacks"]["forging"]["rows"][0]["successes"]
    assert fusion["successes"] == wins and fusion["rate_upper_95"] == atk.rate_upper(wins, 6)
    assert len(fusion["steps_to_success"]) == wins and detector["restarts"] == 1 and detector["seeds"] == [2]
    lrs = atk.pool_forging(
        [*docs[:1], json.loads(_forging_json(marking, tmp_path / "lr.json", seed=1, forge_lr=0.2).read_text())]
    )
    assert [(r["forge_lr"], r["restarts"]) for r in lrs] == [(0.05, 2), (0.2, 2)]  # other rates are other rows

    tool = load_tool("pool_forging")
    out = tmp_path / "pooled" / "forging.md"
    assert tool.main([*map(str, runs), "-o", str(out)]) == 0
    text = out.read_text()
    assert f"| fusion loss | 0.05 | 6 | {wins}/6 (" in text and "/machine" not in text
    assert "`amif attack -m m.json --attacks forging --seed 0`" in text and text.count("`amif attack") == 4
    assert json.loads(out.with_suffix(".json").read_text())["pooled"] == json.loads(json.dumps(rows))
    capsys.readouterr()
    other = _forging_json(marking, tmp_path / "steps.json", forge_steps=5)
    assert tool.main([str(runs[0]), str(other), "-o", str(tmp_path / "bad.md")]) == 2
    assert "cannot be pooled" in capsys.readouterr().err and not (tmp_path / "bad.md").exists()
    retrained = {**docs[1], "weights_sha256": "0" * 64}  # same model id, other weights: not the same model
    with pytest.raises(AMIFError, match="cannot be pooled"):
        atk.pool_forging([docs[0], retrained])
    with pytest.raises(AMIFError, match="None of these attack reports ran forging"):
        atk.pool_forging([{"attacks": {"classical": {}}}])


def test_pooled_table_adds_new_runs_as_pooling_them_all_at_once(tiny_package, pairs, marking, tmp_path, capsys):
    weak = _target(tiny_package, pairs, weak=True)
    runs = [
        _forging_json(marking, tmp_path / "s1.json", seed=1),
        _forging_json(weak, tmp_path / "s0.json", seed=0),
        _forging_json(weak, tmp_path / "s0-more.json", seed=0, forge_restarts=3),  # restarts 0, 1 again + 2
        _forging_json(marking, tmp_path / "det.json", seed=2, forge_detector=1.0, forge_restarts=1),
    ]
    tool = load_tool("pool_forging")
    whole, first, added = (tmp_path / f"{n}.md" for n in ("whole", "first", "added"))
    assert tool.main([*map(str, runs), "-o", str(whole)]) == 0
    assert tool.main([*map(str, runs[:2]), "-o", str(first)]) == 0
    table = json.loads(first.with_suffix(".json").read_text())
    assert [r["restarts"] for r in table["pooled"]] == [4]
    assert tool.main(["--add-to", str(first.with_suffix(".json")), *map(str, runs[1:]), "-o", str(added)]) == 0
    assert added.read_text() == whole.read_text()  # runs[1] given again: its restarts and its line counted once
    assert json.loads(added.with_suffix(".json").read_text()) == json.loads(whole.with_suffix(".json").read_text())
    rows = atk.pool_forging([], json.loads(added.with_suffix(".json").read_text()))  # the table alone
    assert rows == json.loads(whole.with_suffix(".json").read_text())["pooled"]

    capsys.readouterr()
    other = _forging_json(marking, tmp_path / "steps.json", forge_steps=5)
    bad = tmp_path / "bad.md"
    assert tool.main(["--add-to", str(first.with_suffix(".json")), str(other), "-o", str(bad)]) == 2
    assert "cannot be pooled" in capsys.readouterr().err and not bad.exists()
    retrained = {**table, "setting": {**table["setting"], "weights_sha256": "0" * 64}}
    with pytest.raises(AMIFError, match="cannot be pooled"):
        atk.pool_forging([json.loads(runs[2].read_text())], retrained)


def test_parse_attacks():
    assert (
        suite.parse_attacks(None)
        == list(suite.ATTACKS)
        == [
            "wrong-keys",
            "classical",
            "surgery",
            "forging",
            "learned-removal",
            "distillation",
            "fine-tuning",
            "input-transforms",
            "reslice",
        ]
    )
    assert suite.parse_attacks("forging, wrong-keys") == ["wrong-keys", "forging"]
    assert suite.parse_attacks(["fine-tuning", "distillation"]) == ["distillation", "fine-tuning"]
    with pytest.raises(AMIFError, match=r"Unknown attack 'blurr'; choose from: wrong-keys, classical"):
        suite.parse_attacks("classical,blurr")
    with pytest.raises(AMIFError, match="No attack named"):
        suite.parse_attacks(" , ")


def _tables(text):
    """{section heading: [first cell of each table row]}"""
    out = {}
    for part in text.split("\n## ")[1:]:
        head, *lines = part.splitlines()
        rows = [ln for ln in lines if ln.startswith("| ") and not ln.startswith("|---")][1:]
        out[head] = [r.split(" | ")[0][2:] for r in rows]
    return out


def test_attack_cli_report(tiny_package, pairs, tmp_path, capsys):
    _, key, d = tiny_package
    out = tmp_path / "rep.md"
    argv = [
        "attack",
        "-m",
        str(d / "tiny"),
        "-k",
        str(key),
        "--data",
        str(pairs),
        "-o",
        str(out),
        "-q",
        "--random-codes",
        "12",
        "--near-miss-codes",
        "8",
        "--near-miss-max-bits",
        "4",
        "--foreign-codes",
        "2",
        "--forge-steps",
        "3",
        "--forge-restarts",
        "1",
        "--attacks",
        ",".join(FOUR),
        "--figures",
    ]
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    text = out.read_text()
    tables = _tables(text)
    assert list(tables) == [
        "Summary",
        "Wrong keys at scale",
        "Classical removal on unkeyed outputs",
        "White-box surgery (single edits, no key)",
        "White-box key forging",
        "Not run",
    ]
    assert tables["Summary"] == [tables_name for tables_name in list(tables)[1:5]]
    assert tables["Wrong keys at scale"] == [
        "random codes (12)",
        "near-miss codes, 1-4 bits (8)",
        "&nbsp;&nbsp;near-miss, 1 bit (2)",
        "&nbsp;&nbsp;near-miss, 2-4 bits (6)",
        "other model ids, fresh secrets (2)",
        "other model ids, the owner's secret (2)",
        "structured: all +1, all -1, owner's code negated (3)",
        "zero code = no key (6)",
        "owner's key, reference (6)",
    ]
    assert len(tables["Classical removal on unkeyed outputs"]) == sum(len(c[3]) for c in atk.CLASSICAL) - 4 == 33
    assert "`memory.spatial`" in tables["White-box surgery (single edits, no key)"]
    assert tables["White-box key forging"] == ["fusion loss", "fusion loss + 1 x detector score"]
    assert "* Distillation (students trained on the unkeyed outputs): not selected." in text
    assert "* Data: `" in text and "6 pairs (CT 2, PET 2, SPECT 2), 64x64" in text
    assert (
        f"* Command: `amif attack -m {d / 'tiny'} -k {key} --data {pairs} --split test --attacks "
        f"{','.join(FOUR)} --random-codes 12 --near-miss-codes 8 --near-miss-max-bits 4 --foreign-codes 2 "
        f"--forge-steps 3 --forge-restarts 1 -o {out} --figures`"
    ) in text
    for name in FOUR:
        with Image.open(tmp_path / "rep-figures" / f"{name}.png") as im:
            assert im.size[1] == 64 + 14 and im.size[0] >= 3 * 64
        assert f"(rep-figures/{name}.png)" in text
    doc = json.loads(out.with_suffix(".json").read_text())
    assert list(doc["attacks"]) == FOUR and doc["not_run"] == [n for n in suite.ATTACKS if n not in FOUR]
    assert doc["options"]["random_codes"] == 12 and doc["pairs"] == 6 and doc["shift"] == 0
    assert len(doc["attacks"]["classical"]["rows"]) == 33
    assert all(isinstance(r["met"], bool) for a in doc["attacks"].values() for r in a["rows"])
    assert all(isinstance(a["met"], bool) for a in doc["attacks"].values())
    forging = doc["attacks"]["forging"]  # its verdict, as the report prints it
    verdict = atk.yes_no(forging["met"], forging["undecided"])
    row = f"| White-box key forging | < 5% of restarts succeed within 3 steps | {forging['summary']} | {verdict} |"
    assert row in text
    assert not forging["met"] and not any(a["undecided"] for k, a in doc["attacks"].items() if k != "forging")
    secret = json.loads(key.read_text())["secret"]
    assert secret not in text and secret not in out.with_suffix(".json").read_text()


def test_attack_cli_selection_and_errors(tiny_package, pairs, tmp_path, capsys):
    _, key, d = tiny_package
    out = tmp_path / "sel.md"
    base = ["attack", "-m", str(d / "tiny"), "-k", str(key), "--data", str(pairs), "-q", "--limit", "1"]
    assert main([*base, "--attacks", "classical", "-o", str(out)]) == 0
    text = out.read_text()
    assert list(_tables(text)) == ["Summary", "Classical removal on unkeyed outputs", "Not run"]
    assert "* Wrong keys at scale: not selected." in text and "* White-box surgery: not selected." in text
    assert "--limit 1 --attacks classical" in text and "3 pairs (CT 1, PET 1, SPECT 1)" in text
    assert not (tmp_path / "sel-figures").exists()
    capsys.readouterr()
    none = ["--random-codes", "0", "--near-miss-codes", "0", "--foreign-codes", "0"]
    assert main([*base, "--attacks", "wrong-keys", *none, "-o", str(out)]) == 0
    assert _tables(out.read_text())["Wrong keys at scale"] == [
        "structured: all +1, all -1, owner's code negated (3)",
        "zero code = no key (3)",
        "owner's key, reference (3)",
    ]
    capsys.readouterr()
    assert (
        main(
            [
                *base,
                "--attacks",
                "forging",
                "--forge-steps",
                "1",
                "--forge-restarts",
                "1",
                "--forge-detector-only",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    text = out.read_text()
    assert _tables(text)["White-box key forging"] == ["fusion loss + 1 x detector score"]
    assert "--forge-steps 1 --forge-restarts 1 --forge-detector-only -o" in text
    capsys.readouterr()

    def fails(argv, message):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("amif: error: ") and message in err and len(err.strip().splitlines()) == 1

    fails([*base, "--attacks", "wrong-keys,jpeg", "-o", str(tmp_path / "x.md")], "Unknown attack 'jpeg'")
    fails(
        [*base, "--attacks", "fine-tuning", "-o", str(tmp_path / "x.md")], "The learned attacks train on the attacker"
    )
    fails(
        ["attack", "-m", str(d / "tiny"), "--data", str(pairs), "-o", str(tmp_path / "x.md")],
        "needs the model owner's key",
    )
    save_key(generate_key("test-model", "Someone"), tmp_path / "other.amifkey")
    fails(
        [*base[:4], str(tmp_path / "other.amifkey"), *base[5:], "-o", str(tmp_path / "x.md")],
        "is not the owner's key of model 'test-model'",
    )
    fails([*base, "--forge-images", "0", "-o", str(tmp_path / "x.md")], "--forge-images must be 1 or more")
    fails(
        [*base, "--forge-detector", "0", "--forge-detector-only", "-o", str(tmp_path / "x.md")],
        "--forge-detector-only needs a --forge-detector weight above 0",
    )
    fails([*base, "-o", str(tmp_path / "missing" / "x.md")], "does not exist")
    assert not (tmp_path / "x.md").exists()


def test_attack_groups_in_processes_give_the_same_report(tiny_package, pairs, tmp_path):
    _, key, d = tiny_package
    opts = AttackOptions(random_codes=6, near_miss_codes=4, near_miss_max_bits=2, foreign_codes=1)
    kw = dict(model=d / "tiny", key=key, data=pairs, limit=1, attacks="wrong-keys,classical", opts=opts, progress=False)

    def same(x, y) -> bool:  # equal up to float rounding (one thread vs several); wall times aside
        if isinstance(x, dict):
            return x.keys() == y.keys() and all(k == "seconds" or same(x[k], y[k]) for k in x)
        if isinstance(x, list):
            return len(x) == len(y) and all(map(same, x, y))
        return x == pytest.approx(y, rel=1e-5, abs=1e-6) if isinstance(x, float) else x == y

    one = suite.attack(out=tmp_path / "one.md", **kw)
    two = suite.attack(out=tmp_path / "two.md", groups=[["classical"], ["wrong-keys"]], **kw)
    a, b = (json.loads(p.with_suffix(".json").read_text()) for p in (one, two))
    assert list(b["attacks"]) == ["wrong-keys", "classical"] and same(a["attacks"], b["attacks"])
    b["attacks"]["classical"]["rows"][3]["psnr_after"] += 0.01
    assert not same(a["attacks"], b["attacks"])
    with pytest.raises(AMIFError, match="must cover the selected attacks"):
        suite.attack(out=tmp_path / "bad.md", groups=[["classical"]], **kw)
    assert not (tmp_path / "bad.md").exists()


def test_the_published_threat_model_keeps_attacks_not_shown_either_way_apart():
    """Key forging with no success but too few restarts is neither 'stopped' nor 'not stopped'."""
    report = load_tool("make_attack_report")
    doc = {
        "attacks": {
            "classical": {"title": "Classical", "met": True, "summary": "s"},
            "distillation": {"title": "Distillation", "met": False, "summary": "0% flagged"},
        }
    }
    assert "Not shown either way" not in report.threat_model(doc)
    forging = {"title": "Forging", "met": False, "undecided": True, "summary": "0/6 (rate at most 39.3%)"}
    three = report.threat_model({"attacks": {**doc["attacks"], "forging": forging}})
    held, rest = three.split("**Not shown either way**")
    shown, broke = rest.split("**Measured not to stop**")
    assert "(Forging: 0/6 (rate at most 39.3%))" in shown and "Forging" not in held + broke
    assert "(Classical: s)" in held and "(Distillation: 0% flagged)" in broke


def test_the_threat_model_takes_forgings_verdict_from_a_pooled_table_of_the_same_setting():
    """Six restarts show nothing; the pooled table over more seeds decides, when it pooled this model and setting."""
    report = load_tool("make_attack_report")
    setting = {
        "model_id": "m",
        "weights_sha256": "ab",
        "split": "test",
        "pairs": 18,
        "threshold": 0.12,
        "success_share": 0.5,
    }
    options = {"forge_steps": 1000, "forge_images": 2, "quality_db": 30.0}
    forging = {"title": "Forging", "met": False, "undecided": True, "summary": "0/6"}
    doc = {**setting, "options": options, "attacks": {"forging": forging}}
    pooled = {
        "setting": {**setting, **options},
        "pooled": [
            {"variant": "fusion loss", "successes": 0, "restarts": 59, "rate_upper_95": 1 - 0.05 ** (1 / 59)},
            {"variant": "detector", "successes": 0, "restarts": 30, "rate_upper_95": 1 - 0.05 ** (1 / 30)},
        ],
    }

    def group(model):  # the group whose list names forging
        parts = re.split(r"\*\*(Measured to stop|Not shown either way|Measured not to stop|Not covered)", model)
        return next(name for name, body in zip(parts[1::2], parts[2::2]) if "(Forging:" in body)

    assert group(report.threat_model(doc)) == "Not shown either way"
    part = report.threat_model(doc, pooled)
    assert group(part) == "Not shown either way"
    assert (
        "0/6; pooled with the runs of other seeds in [forging-pooled.md](forging-pooled.md): fusion loss: 0/59 "
        "(rate at most 4.95%); detector: 0/30 (rate at most 9.50%))" in part
    )
    pooled["pooled"][1].update(restarts=59, rate_upper_95=1 - 0.05 ** (1 / 59))
    assert group(report.threat_model(doc, pooled)) == "Measured to stop"
    pooled["pooled"][1].update(successes=3, rate_upper_95=0.3)
    assert group(report.threat_model(doc, pooled)) == "Measured not to stop"
    other = {**pooled, "setting": {**pooled["setting"], "weights_sha256": "cd"}}  # another model's table: unused
    assert report.threat_model(doc, other) == report.threat_model(doc)


def test_the_committed_attack_reports_threat_model_is_what_its_json_and_pooled_table_give():
    """After more forging runs are pooled, `make_attack_report --threat-model-only` must be run: the published
    threat model is the one its own numbers give, and rewriting it leaves the rest of the report as it is."""
    report = load_tool("make_attack_report")
    folder = ROOT / "docs" / "reports" / "attack"
    text = (folder / "report.md").read_text(encoding="utf-8")
    doc = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    model = report.threat_model(doc, report.read_pooled(folder))
    assert report.put_threat_model(text, model) == text
    assert report.put_threat_model(text, "## Threat model: x\n") == text.replace(model, "## Threat model: x\n")
    assert report.put_threat_model(text, "## Threat model: x\n") != text


def test_the_published_threat_model_names_the_shift_attacker_only_for_a_shift_model():
    report = load_tool("make_attack_report")
    doc = {
        "attacks": {
            "classical": {"title": "Classical", "met": True, "summary": "s"},
            "distillation": {"title": "Distillation", "met": False, "summary": "0% flagged"},
        }
    }
    plain = report.threat_model(doc)
    assert "moving the image back" not in plain and "moves unkeyed outputs back" not in plain
    assert "* distils a student network from unkeyed outputs (Distillation: 0% flagged)" in plain
    moved = report.threat_model({**doc, "shift": 2})
    held = moved.split("**Measured not to stop**")[0]
    assert (
        "equalization, inpainting over the exact identifier mask, and moving the image back by the manifest's "
        "2 px shift) (Classical: s)" in held
    )
    assert "combinations of attacks; an attacker who moves unkeyed outputs back before distilling" in moved


def test_probe_key_embedding_moves_codes_towards_the_key_and_reports_each_probe(tiny_package, tmp_path, capsys):
    """research/tools/probe_key_embedding.py: the arc (amif_research.train.arc_phases, the partial keys' path) ends
    at the key's angles (mod 2 pi), the matching descent raises the cosine without flipping a sign on the bundled
    model, and the tool runs on a package and pairs."""
    import torch
    from test_evaluate import _synthetic_pairs

    from amif.keys import load_key
    from amif.package import load_package
    from amif_research.train import arc_phases
    from conftest import ROOT, load_tool

    tool = load_tool("probe_key_embedding")
    models = ROOT / "AMIFFusion" / "Resources" / "Models"
    net = load_package(models / "amif-demo.json").net.eval()
    key = torch.from_numpy(load_key(models / "amif-demo.amifkey").code()).float()
    codes = (torch.randint(0, 2, (4, key.numel()), generator=torch.Generator().manual_seed(0)) * 2 - 1).float()
    with torch.no_grad():
        kp, start = net.key.phases(key), net.key.phases(codes)
    assert torch.allclose(arc_phases(kp, start, 0.0), start)
    assert (arc_phases(kp, start, 0.5) - start).abs().max() <= math.pi / 2 + 1e-5  # the shorter arc
    assert torch.allclose(torch.sin(arc_phases(kp, start, 1.0)), torch.sin(kp).expand_as(start), atol=1e-4)

    def cosine(c):  # KeyEmbedding.cosine written out
        with torch.no_grad():
            return torch.nn.functional.cosine_similarity(torch.sin(net.key.phases(c)), torch.sin(kp)[None], 1)

    assert torch.allclose(net.key.cosine(start, kp), cosine(codes)) and net.key.cosine(kp, kp) == pytest.approx(1.0)

    moved = tool.matched_codes(net, key, codes, 40)
    assert (cosine(codes) < 0.3).all() and (cosine(moved) > 0.85).all()
    assert torch.equal(moved.sign(), codes.sign())

    assert tool.stage_distances(net, kp, kp.unsqueeze(0)) == [0.0, 0.0, 0.0]
    far = tool.stage_distances(net, kp, start)
    assert len(far) == 3 and min(far) > 0.05

    _, owner, d = tiny_package
    data = _synthetic_pairs(tmp_path / "data")
    assert tool.main(["-m", str(d / "tiny.json"), "-k", str(owner), "--data", str(data), "--codes", "2"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert len(rows) == len(tool.ARCS) + len(tool.MATCH_STEPS) + 1 + len(tool.FORGE_STEPS)
    assert float(rows[len(tool.ARCS) - 1][-6]) > 0.999  # arc t 1: the key's embedding
    assert all(float(x) < 1e-3 for x in rows[len(tool.ARCS) - 1][-3:])  # ... and so the key's hidden layer and FiLM
    assert [r[0] for r in rows[-1 - len(tool.FORGE_STEPS) :]] == ["random"] + ["forged"] * len(tool.FORGE_STEPS)


def test_probe_key_embedding_forgers_descend_the_fusion_loss(tiny_package):
    """The forged probe's codes are the attack's forger's: each one's fusion loss is below its start's, and no
    higher than where a plain descent of as many steps ends (the probe keeps the best code met)."""
    import copy

    import torch

    from amif_research.losses import fusion_loss
    from conftest import load_tool

    tool = load_tool("probe_key_embedding")
    net = copy.deepcopy(tiny_package[0].net).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(1)
    a, b = torch.rand(2, 1, 32, 32, generator=gen), torch.rand(2, 1, 32, 32, generator=gen)
    codes = (torch.randint(0, 2, (2, 256), generator=gen) * 2 - 1).float()
    with torch.no_grad():
        enc = net.encode(a, b)
    forged = tool.forged_codes(net, enc, a, b, codes, 30)

    def loss(c):
        with torch.no_grad():
            return float(fusion_loss(net.decode(enc, c.unsqueeze(0).expand(2, -1)), a, b)[0])

    assert forged.shape == codes.shape and not torch.equal(forged, codes)
    assert all(loss(f) < loss(c) for f, c in zip(forged, codes))
    for f, start in zip(forged, codes):
        code = start.clone().requires_grad_()
        adam = torch.optim.Adam([code], lr=0.05)
        for _ in range(30):
            y = net.decode(enc, code.unsqueeze(0).expand(2, -1))
            adam.zero_grad()
            fusion_loss(y, a, b)[0].backward()
            adam.step()
        assert loss(f) <= loss(code.detach()) + 1e-6
