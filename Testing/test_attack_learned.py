"""Learned attacks (`amif_research.attack_learned`): remover, students, fine-tuning, on a model made to mark."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from test_attack import IDENT, MarkingNet, _target, pairs  # noqa: F401  (pairs: a fixture)

from amif.cli import main
from amif.errors import AMIFError
from amif_research import attack as atk
from amif_research import attack_learned as learned
from amif_research import attack_suite as suite
from amif_research.attack import AttackOptions

LEARN = dict(learn_steps=60, learn_batch=4, learn_crop=32, learn_lr=3e-3, learn_images="2,all")


def _pool(t):
    """The attacker's own pairs: the attacked pairs' kind of image, mirrored and shifted (not the same images)."""
    a = np.concatenate([t.a[:, :, ::-1], np.roll(t.a, 7, axis=1)])
    b = np.concatenate([t.b[:, :, ::-1], np.roll(t.b, 7, axis=1)])
    return np.ascontiguousarray(a), np.ascontiguousarray(b)


@pytest.fixture
def target(tiny_package, pairs):  # noqa: F811
    t = _target(tiny_package, pairs)
    t.pool = _pool(t)
    return t


def test_image_counts():
    assert atk.image_counts("10,100,all", 50) == [10, 50]
    assert atk.image_counts(" 3, all ,3", 738) == [3, 738]
    for bad in ("", "ten", "0", "-5", "1.5"):
        with pytest.raises(AMIFError, match="--learn-images"):
            atk.image_counts(bad, 10)
    with pytest.raises(AMIFError, match="--learn-images"):
        AttackOptions(learn_images="some").check()
    with pytest.raises(AMIFError, match="--learn-crop 16 or more"):
        AttackOptions(learn_crop=8).check()


def test_networks_keep_size_and_range():
    x = np.random.default_rng(0).random((2, 3, 30, 46)).astype(np.float32)
    for cls in learned.STUDENTS.values():
        y = learned.apply(cls(3), list(x.transpose(1, 0, 2, 3)), "cpu")
        assert y.shape == (2, 30, 46) and y.min() >= 0 and y.max() <= 1


def test_learned_removal_gains_over_the_unkeyed_output(target):
    """MarkingNet adds the identifier's strokes to the keyed image: a remover trained on leaked pairs
    learns to take them off, so its output is closer to keyed than the unkeyed one it started from."""
    r = suite.ATTACKS["learned-removal"].run(target, AttackOptions(**LEARN), progress=False)
    assert [d["images"] for d in r.data] == [2, 12] and len(r.rows) == 2
    best = r.data[-1]
    assert best["psnr_mean"] > best["psnr_before"] + 1
    assert best["met"] == (best["flagged"] >= 0.95 or best["psnr_mean"] < best["psnr_before"])
    assert r.met == all(d["met"] for d in r.data)
    assert [label for label, _ in r.figure[0]] == ["keyed", "unkeyed", "remover N=2", "remover N=12"]


def test_distillation_students_learn_the_teacher(target):
    short = learned.distillation(target, AttackOptions(**{**LEARN, "learn_steps": 1}), progress=False)
    long = learned.distillation(target, AttackOptions(**LEARN), progress=False)
    assert [d["student"] for d in long.data] == ["U-Net", "plain CNN"]
    for s, lg in zip(short.data, long.data):
        assert lg["psnr_to_teacher"] > s["psnr_to_teacher"] + 0.5  # training moved it towards the unkeyed output
        assert lg["images"] == 12 and lg["met"] == (lg["flagged"] >= 0.95)


class TracingNet(MarkingNet):
    """MarkingNet whose outputs for every code but the owner's also carry the key's texture (a model
    trained with --trace-strength, as a test double)."""

    def __init__(self, owner_code, weights, strength=0.08):
        super().__init__(owner_code)
        self.weights, self.strength = weights, strength

    def forward(self, a, b, code, coords=None):
        from amif.trace import texture

        y = super().forward(a, b, code, coords)
        wrong = (code.reshape(-1, code.shape[-1]) - self.owner).abs().amax(1) > 1e-6
        g = texture(a, b, self.weights)
        return y + self.strength * wrong.to(y)[:, None, None, None] * g / g.std()


def test_distilled_students_carry_the_trace_texture_to_the_owners_check(target, monkeypatch):
    """Students of a model with a trace channel are flagged 'traced' by the owner's check (counted in
    'flagged'), and the report says so."""
    from amif import trace
    from amif.trace import trace_weights

    # the score is a correlation times sqrt(pixels): on these 64 x 64 pairs, a quarter of a 256 x 256 slice's
    monkeypatch.setattr(trace, "TRACE_THRESHOLD", trace.TRACE_THRESHOLD * 64 / 256)

    target.trace = trace_weights(target.owner_secret, target.package.model_id)
    target.net = target.package.net = TracingNet(target.code, target.trace).eval()
    target.keyed, target.unkeyed = target.run(target.code), target.run(np.zeros_like(target.code))
    r = learned.distillation(target, AttackOptions(**{**LEARN, "learn_steps": 200}), progress=False)
    for d in r.data:
        assert d["traced"] >= 0.9 and d["flagged"] >= d["traced"] and d["psnr_mean"] < 40
    assert "the owner's trace check" in r.notes[0] and "U-Net " in r.notes[0]


def test_fine_tuning_finds_the_mark_gain(target):
    """The mark's strength is one parameter of MarkingNet: fine-tuning with the fusion loss and no key
    drives it down, so the unkeyed outputs come out unflagged within the budget; the step is reported."""
    opts = AttackOptions(**{**LEARN, "learn_images": "all", "learn_steps": 40, "learn_lr": 2e-2})
    r = learned.fine_tuning(target, opts, progress=False)
    (d,) = r.data
    ft, sc = d["fine_tuned"], d["scratch"]
    assert [e["step"] for e in ft["evals"]] == [e["step"] for e in sc["evals"]] == learned._eval_steps(40)
    assert ft["evals"][0]["flagged"] == 1.0 and ft["evals"][-1]["flagged"] < 0.5
    assert ft["unflagged_step"] == next(e["step"] for e in ft["evals"] if e["flagged"] <= 0.05)
    assert all(e["flagged"] == 0 for e in sc["evals"][1:]) or sc["evals"][-1]["psnr_mean"] > sc["evals"][0]["psnr_mean"]
    assert r.met == (ft["success_step"] is None)


def test_figures_show_the_sample_pair(target):
    a, b = suite.sample_show_pair(target.shape)
    assert a.shape == b.shape == target.shape and 0 <= a.min() < a.max() <= 1
    target.show = (a[None], b[None])
    target._figure = None
    fig = target.figure_target()
    assert np.allclose(fig.keyed[0], target.outputs(a[None], b[None], target.code)[0])
    r = atk.classical_removal(target, AttackOptions(), progress=False)
    assert np.array_equal(r.figure[0][0][1], fig.keyed[0]) and not np.allclose(r.figure[0][0][1], target.keyed[0])


def test_no_attacker_pairs_is_a_clear_error(tiny_package, pairs):  # noqa: F811
    t = _target(tiny_package, pairs)
    with pytest.raises(AMIFError, match="attacker's own images"):
        learned.distillation(t, AttackOptions(**LEARN), progress=False)


def test_attack_cli_learned_with_train_split(tiny_package, pairs, tmp_path, capsys):  # noqa: F811
    """On a folder with a train split the learned attacks run from the command line; figures on the sample."""
    _, key, d = tiny_package
    data = tmp_path / "data"
    shutil.copytree(pairs, data)
    for folder in data.iterdir():
        shutil.copytree(folder / "test", folder / "train")
    out = tmp_path / "learned.md"
    argv = [
        "attack",
        "-m",
        str(d / "tiny"),
        "-k",
        str(key),
        "--data",
        str(data),
        "-o",
        str(out),
        "-q",
        "--attacks",
        "distillation,learned-removal",
        "--learn-steps",
        "2",
        "--learn-batch",
        "2",
        "--learn-crop",
        "32",
        "--learn-images",
        "3,all",
        "--figures-on-sample",
    ]
    assert main(argv) == 0
    text = out.read_text()
    assert "## Learned removal (U-Net remover on N leaked output pairs)" in text
    assert "## Distillation (students trained on the unkeyed outputs)" in text
    assert "--learn-steps 2 --learn-batch 2 --learn-crop 32 --learn-images 3,all" not in text  # canonical order
    assert "--learn-images 3,all --learn-steps 2 --learn-batch 2 --learn-crop 32" in text
    assert "--figures --figures-on-sample" in text and "bundled MNI-based sample" in text
    doc = json.loads(out.with_suffix(".json").read_text())
    assert [r["images"] for r in doc["attacks"]["learned-removal"]["rows"]] == [3, 6]
    with Image.open(tmp_path / "learned-figures" / "distillation.png") as im:
        assert im.size[0] >= 4 * 64
    capsys.readouterr()
