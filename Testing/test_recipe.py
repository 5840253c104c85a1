"""Training recipes: TrainConfig's groups and their checks, the manifest's record (the config minus defaults),
recipe files (research/recipes/*.toml) and `amif train --recipe FILE` with flags that override it."""

import functools
import json
from pathlib import Path

import pytest
import torch
from test_train import TINY, _fake_pairs

from amif.cli import main
from amif.errors import AMIFError
from amif_research.train import (
    GROUPS,
    PROTECTION,
    TrainConfig,
    flat_names,
    flat_record,
    read_recipe,
)

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "research" / "recipes"
BUNDLED = ROOT / "AMIFFusion" / "Resources" / "Models" / "amif-demo.json"
TWINS = ROOT / "research" / "twins"


def _config_of(manifest: dict) -> TrainConfig:
    """The config a committed manifest's training record (either form) describes; a protected model's trace
    strength is in its verify entry (records before the groups did not hold it)."""
    flat = {k: v for k, v in flat_record(manifest["training"]).items() if k in flat_names()}
    trace = manifest.get("verify", {}).get("trace_strength")
    return TrainConfig.from_flat(**flat, **({"trace_strength": trace} if trace else {}))


@pytest.mark.parametrize(
    "recipe,manifest,seed",
    [
        ("demo-model.toml", BUNDLED, None),
        ("twin.toml", TWINS / "amif-twin-s0.json", None),
        ("twin.toml", TWINS / "amif-twin-s1.json", 4),  # the second twin: --seed 4
    ],
)
def test_recipes_are_the_last_stage_of_the_committed_models(recipe, manifest, seed):
    cfg, extra = read_recipe(RECIPES / recipe)
    if seed is not None:
        cfg = cfg.override(seed=seed)
    m = json.loads(manifest.read_text())
    twin = extra.get("twin", False)
    assert twin == bool(m.get("twin"))
    cfg.validate(twin, init="the package it continued")
    assert cfg.record(twin) == _config_of(m).record(twin)  # every setting that changes what is learned
    assert cfg.steps == m["training"]["steps"]


def test_recipe_is_read_nested_and_unknown_or_mistyped_settings_are_named(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(
        "twin = true\nsteps = 7\nlr = 1\n[fusion]\nmi_weight = 2\n[forgers]\npool = 1\nrestart = 0.02\n"
        "[research]\nforge_untraced = true\n"
    )
    cfg, extra = read_recipe(path)
    assert extra == {"twin": True} and cfg.steps == 7 and cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.fusion.mi_weight == 2.0 and cfg.forgers.pool == 1 and cfg.forgers.restart == 0.02
    assert cfg.research.forge_untraced is True and cfg.negatives == GROUPS["negatives"]()  # the rest: defaults
    for text, match in (
        ("stpes = 7\n", r"Unknown setting 'stpes' in .*r\.toml"),
        ("[forgers]\npools = 1\n", r"Unknown setting 'forgers\.pools' in .*r\.toml"),
        ("[forger]\npool = 1\n", r"Unknown setting 'forger' in .*r\.toml"),
        ("fusion = 1\n", r"'fusion' in .*r\.toml must be a table"),
        ('steps = "7"\n', r"Setting 'steps' in .*r\.toml must be a int"),
        ("[forgers]\npool = 1.5\n", r"Setting 'forgers\.pool' .* must be a int"),
        ("twin = 1\n", r"Setting 'twin' .* must be a bool"),
        ("steps = = 7\n", r"r\.toml is not valid TOML"),
    ):
        path.write_text(text)
        with pytest.raises(AMIFError, match=match):
            read_recipe(path)
    with pytest.raises(AMIFError, match="does not exist"):
        read_recipe(tmp_path / "none.toml")


def test_flags_given_on_the_command_line_override_the_recipe(monkeypatch, tmp_path):
    import amif_research.train

    seen = {}
    monkeypatch.setattr(amif_research.train, "train", lambda *a, cfg=None, **kw: seen.update(a=a, cfg=cfg, kw=kw))
    out = ["-o", str(tmp_path / "m")]
    assert main(["train", "--recipe", str(RECIPES / "twin.toml"), *out]) == 0
    recipe = read_recipe(RECIPES / "twin.toml")[0]
    assert seen["cfg"] == recipe and seen["kw"]["twin"] is True  # the recipe alone: its settings, its twin
    assert (
        main(
            [
                "train",
                "--recipe",
                str(RECIPES / "twin.toml"),
                *out,
                "--seed",
                "4",
                "--vif-weight",
                "0",
                "--steps",
                "5",
                "--forge-pool",
                "0",
            ]
        )
        == 0
    )
    cfg = seen["cfg"]
    assert (cfg.seed, cfg.fusion.vif_weight, cfg.steps, cfg.forgers.pool) == (4, 0.0, 5, 0)  # given: the flag's
    assert cfg.fusion.sd_weight == 8.0 and cfg.lr_anneal == 300  # not given: the recipe's
    assert cfg.identifier == recipe.identifier and cfg.device == "cpu"  # in neither: the default
    assert main(["train", "--twin", *out, "--sd-weight", "8"]) == 0  # no recipe: the defaults and the flags
    assert seen["cfg"] == TrainConfig().override(sd_weight=8.0)
    assert main(["train", "--recipe", str(RECIPES / "demo-model.toml"), *out]) == 2  # a keyed recipe needs a key


@pytest.mark.parametrize(
    "flat,twin,match",
    [
        (dict(batch=0), False, "batch must be 1 or more"),
        (dict(lr=0.0), False, "learning rates must be above 0"),
        (dict(mi_weight=-1.0), False, "MI weight of the fusion loss"),  # fusion
        (dict(sf_floor=float("nan")), False, "SF hinge's floor"),
        (dict(mark_alpha=0.0), False, "identifier's opacity"),  # identifier
        (dict(decoy_alpha=0.8), False, "decoys' identifier opacity"),
        (dict(ablate_ssim=2.0), False, "surgery hinge's SSIM"),
        (dict(trace_strength=0.3), False, "trace strength"),
        (dict(public_strength=0.05), False, "needs --dihedral"),
        (dict(headroom=20.0), False, "headroom"),
        (dict(ceiling="grey"), False, "ceiling must be one of"),
        (dict(near_miss_share=0.9), False, "near-miss and zero-code shares"),  # negatives
        (dict(partial_keys=1.5), False, "partial-key negatives"),
        (dict(decoys=0.5, decoy_alpha=0.3, partial_keys=0.6), False, "decoy negatives"),
        (dict(forge_pool=-1), False, "forgers must be 0 or more"),  # forgers
        (dict(forge_restart=0.0), False, "restart chance"),
        (dict(forge_memory=1, forge_pool=0), False, "need forgers"),
        (dict(anchor_weight=-1.0), False, "anchor weight"),  # anchoring
        (dict(mark_shift=4), False, "mark shift"),  # research
        (dict(forge_repeat=0), False, "Adam steps per training step"),
        (dict(vif_weight=1.0, crop=32), False, "crop of at least 48"),  # across groups
        (dict(forge_pool=9), False, "forgers must be 0 to --batch"),
        (dict(decoys=0.2), False, "need their identifier opacity"),
        (dict(forge_untraced=True), False, "Untraced forgers need"),
        (dict(widen_decoder=2), True, "needs a trained package"),
        (dict(anchor_weight=1.0), True, "needs a trained package: --init or --anchor"),
    ],
)
def test_each_group_checks_its_settings_with_one_message(flat, twin, match):
    cfg = TrainConfig.from_flat(**flat)
    with pytest.raises(AMIFError, match=match) as e:
        cfg.validate(twin)
    assert "\n" not in str(e.value)
    TrainConfig().validate(twin)  # the defaults pass
    TrainConfig.from_flat(forge_pool=9).validate(twin=True)  # a twin has no forgers to fit in the batch


def test_the_record_is_the_config_minus_defaults_and_reads_back():
    assert TrainConfig().record() == {"batch": 8, "crop": 128, "seed": 0}  # always: every report names them
    cfg = TrainConfig.from_flat(
        steps=99,
        device="cuda",
        minutes=5.0,
        save_every=3,
        lr_anneal=300,
        mi_weight=2.0,
        mark_alpha=0.9,
        forge_memory=2,
        anchor_weight=30.0,
        forge_repeat=3,
        partial_keys=0.6,
    )
    record = {
        "batch": 8,
        "crop": 128,
        "seed": 0,
        "lr_anneal": 300,
        "fusion": {"mi_weight": 2.0},
        "identifier": {"mark_alpha": 0.9},
        "negatives": {"partial_keys": 0.6},
        "forgers": {"memory": 2},
        "anchoring": {"weight": 30.0},
        "research": {"forge_repeat": 3},
    }
    assert cfg.record() == record  # neither the steps asked for nor how the run was driven
    assert cfg.record(twin=True) == {k: v for k, v in record.items() if k not in PROTECTION}
    back = TrainConfig.from_dict(record, "a record")
    assert back.record() == record and back == cfg.override(steps=20000, device="cpu", minutes=0.0, save_every=250)
    flat = flat_record(record | {"steps": 300, "init": {"training": {}}})
    assert flat["forge_memory"] == 2 and flat["anchor_weight"] == 30.0 and flat["mi_weight"] == 2.0
    assert flat["steps"] == 300 and "init" in flat and not set(GROUPS) & set(flat)
    old = json.loads(BUNDLED.read_text())["training"]  # a record from before the groups: flat already
    assert flat_record(old) == old
    with pytest.raises(AMIFError, match="Unknown training setting 'forge_pools'"):
        TrainConfig().override(forge_pools=1)


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "last.safetensors"))


def test_recipe_reproduces_the_twin_flags_bit_for_bit(monkeypatch, tmp_path):
    """`amif train --recipe twin.toml` and the twins' command line of flags (research/twins' records) train the
    same first steps: every tensor of the checkpoint (weights, optimizer moments) equal; the manifests' training
    records equal and nested."""
    import amif_research.train

    _fake_pairs(tmp_path / "data", blocks=8)
    quiet = functools.partial(amif_research.train.train, net_cfg=TINY, progress=False, log=lambda *_: None)
    monkeypatch.setattr(amif_research.train, "train", quiet)
    tiny = ["--data", str(tmp_path / "data"), "--steps", "3", "--batch", "2", "--crop", "48"]
    flags = [
        "--twin",
        "--lr-anneal",
        "300",
        "--seed",
        "3",
        "--mi-weight",
        "2",
        "--sd-weight",
        "8",
        "--vif-weight",
        "1",
        "--sf-weight",
        "2",
        "--scd-weight",
        "0.3",
    ]
    assert main(["train", *flags, *tiny, "-o", str(tmp_path / "a" / "m"), "--checkpoints", str(tmp_path / "cka")]) == 0
    assert (
        main(
            [
                "train",
                "--recipe",
                str(RECIPES / "twin.toml"),
                *tiny,
                "-o",
                str(tmp_path / "b" / "m"),
                "--checkpoints",
                str(tmp_path / "ckb"),
            ]
        )
        == 0
    )
    a, b = _weights(tmp_path / "cka"), _weights(tmp_path / "ckb")
    assert a.keys() == b.keys() and any(k.startswith("model.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ma, mb = (json.loads((tmp_path / n / "m.json").read_text()) for n in "ab")
    assert ma["training"] == mb["training"]
    assert ma["training"]["fusion"] == {
        "vif_weight": 1.0,
        "sd_weight": 8.0,
        "sf_weight": 2.0,
        "scd_weight": 0.3,
        "mi_weight": 2.0,
    }
    cfg = TrainConfig.from_flat(
        steps=3,
        batch=2,
        crop=48,
        seed=3,
        lr_anneal=300,
        vif_weight=1.0,
        sd_weight=8.0,
        sf_weight=2.0,
        scd_weight=0.3,
        mi_weight=2.0,
    )
    assert ma["training"] == {
        "data": ma["training"]["data"],
        "steps": 3,
        "world_size": 1,
        "effective_batch": 2,
        **cfg.record(twin=True),
    }


@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("*.toml")))
def test_every_recipe_reads_and_validates(recipe):
    cfg, extra = read_recipe(RECIPES / recipe)
    cfg.validate(extra.get("twin", False), init="the package it continues")
    assert TrainConfig.from_dict(cfg.record(extra.get("twin", False))).record() == cfg.record()
