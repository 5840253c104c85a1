import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from amif.errors import AMIFError
from amif.network import NetConfig
from amif.package import load_package
from amif_research.train import (
    LR_FLOOR,
    PROTECTION,
    TrainConfig,
    flat_record,
    lr_factor,
    sample_batch,
    sample_negatives,
    train,
)

TINY = NetConfig(c1=4, c2=8, c3=8, mem_channels=4, mem_size=16, key_features=32, key_hidden=8)
flat_cfg = TrainConfig.from_flat  # settings by their flat names, as `amif train`'s flags name them


def _fake_pairs(root, n=3, blocks=1):
    """Random images; with blocks > 1, piecewise constant in blocks x blocks squares (structure
    that the fusion metrics see, unlike pixel noise)."""
    rng = np.random.default_rng(0)
    for folder, kind in (("CT-MRI", "CT"), ("PET-MRI", "PET")):
        for mod in ("MRI", kind):
            d = root / folder / "train" / mod
            d.mkdir(parents=True)
            for i in range(n):
                shape = (64 // blocks, 64 // blocks, 3) if mod == "PET" else (64 // blocks, 64 // blocks)
                img = rng.random(shape).repeat(blocks, 0).repeat(blocks, 1)
                Image.fromarray((img * 255).astype(np.uint8)).save(d / f"{i}.png")


def _blocky_twin_run(tmp_path):
    """Blocky fake pairs under tmp_path/data; returns train()'s keyword arguments for a tiny, quiet twin run."""
    _fake_pairs(tmp_path / "data", blocks=8)
    return dict(identifier="", data_dir=tmp_path / "data", net_cfg=TINY, progress=False, log=lambda *_: None, twin=True)


def test_train_writes_package_and_resumes_deterministically(tiny_package, tmp_path):
    _, key, _ = tiny_package
    _fake_pairs(tmp_path / "data")
    kw = dict(identifier="TEST · MARK", data_dir=tmp_path / "data", net_cfg=TINY, progress=False, log=lambda *_: None)
    cfg = dict(batch=2, crop=32, save_every=2)
    train(key, tmp_path / "a" / "m", checkpoint_dir=tmp_path / "a" / "ck", cfg=flat_cfg(steps=4, **cfg), **kw)
    train(key, tmp_path / "b" / "m", checkpoint_dir=tmp_path / "b" / "ck", cfg=flat_cfg(steps=2, **cfg), **kw)
    train(key, tmp_path / "b" / "m", checkpoint_dir=tmp_path / "b" / "ck", cfg=flat_cfg(steps=4, **cfg), **kw)
    pa, pb = load_package(tmp_path / "a" / "m"), load_package(tmp_path / "b" / "m")
    assert pa.manifest["training"]["steps"] == pb.manifest["training"]["steps"] == 4
    for (n, x), (_, y) in zip(pa.net.state_dict().items(), pb.net.state_dict().items()):
        assert np.allclose(x.numpy(), y.numpy(), atol=1e-6), n
    log = (tmp_path / "b" / "ck" / "metrics.csv").read_text().splitlines()
    assert log[0].startswith("step,loss") and len(log) == 5
    # a committed package is a resume point: its step count carries on, in a new checkpoint folder
    train(
        key,
        tmp_path / "c" / "m",
        checkpoint_dir=tmp_path / "c" / "ck",
        init=tmp_path / "b" / "m",
        cfg=flat_cfg(steps=6, **cfg),
        **kw,
    )
    c = load_package(tmp_path / "c" / "m").manifest
    assert c["training"]["steps"] == 6
    assert len((tmp_path / "c" / "ck" / "metrics.csv").read_text().splitlines()) == 3
    # ... and its manifest names where it started: the init package's weights hash and training record
    assert c["training"]["init"] == {
        "weights_sha256": pb.manifest["weights_sha256"],
        "training": pb.manifest["training"],
    }
    assert "init" not in pb.manifest["training"]


def test_negative_codes_curriculum():
    true = np.where(np.random.default_rng(1).random(256) > 0.5, 1.0, -1.0).astype(np.float32)
    cfg = TrainConfig()
    early = sample_negatives(np.random.default_rng(0), true, 400, 0, cfg.negatives)
    late = sample_negatives(np.random.default_rng(0), true, 400, cfg.negatives.near_miss_ramp, cfg.negatives)
    for codes in (early, late):
        assert not any(np.array_equal(c, true) for c in codes)
    flips = (late != true[None]).sum(1)
    near = flips[(flips >= 1) & (flips <= 16) & (np.abs(late).sum(1) > 0)]
    nonzero = early[np.abs(early).sum(1) > 0]
    assert (nonzero != true[None]).sum(1).min() > 16  # no near-miss codes before the ramp
    assert 0.1 < 1 - len(nonzero) / 400 < 0.2  # the zero code's share
    assert 0.4 < len(near) / 400 < 0.6


def test_memory_surgery_substitutes_zeros_mean_and_ones_in_turn():
    import torch

    from amif_research.train import memory_surgery

    grid = torch.randn(1, 4, 8, 8)
    zeros, mean, ones = (memory_surgery(grid, s) for s in (0, 1, 2))
    assert zeros.shape == mean.shape == ones.shape == grid.shape
    assert torch.all(zeros == 0) and torch.all(ones == 1)
    assert torch.allclose(mean[0, :, 3, 5], grid.mean(dim=(2, 3))[0])
    assert torch.equal(memory_surgery(grid, 3), zeros)


def test_surgery_loss_changes_training(tiny_package, tmp_path):
    """The ablation term reaches the weights: with the hinge always active, training differs."""
    _, key, _ = tiny_package
    _fake_pairs(tmp_path / "data")
    kw = dict(identifier="TEST · MARK", data_dir=tmp_path / "data", net_cfg=TINY, progress=False, log=lambda *_: None)
    nets = {}
    for w in (0.0, 1.0):
        cfg = flat_cfg(steps=2, batch=2, crop=32, ablate_weight=w, ablate_ssim=-1.0)
        train(key, tmp_path / f"w{w}" / "m", checkpoint_dir=tmp_path / f"w{w}" / "ck", cfg=cfg, **kw)
        nets[w] = load_package(tmp_path / f"w{w}" / "m").net.state_dict()
        rows = [r.split(",") for r in (tmp_path / f"w{w}" / "ck" / "metrics.csv").read_text().splitlines()]
        ablate = [float(r[rows[0].index("ablate")]) for r in rows[1:]]
        assert all(a > 0 for a in ablate) if w else all(a == 0 for a in ablate)
    assert any(not np.allclose(nets[0.0][n].numpy(), nets[1.0][n].numpy()) for n in nets[0.0])


def test_twin_trains_without_key_or_identifier(tmp_path):
    from amif.errors import AMIFError
    from amif.fusion import fuse_images
    from amif_research.evaluate import _run_twin

    _fake_pairs(tmp_path / "data")
    cfg = flat_cfg(steps=2, batch=2, crop=32)
    out = train(
        None,
        tmp_path / "twin",
        checkpoint_dir=tmp_path / "ck",
        cfg=cfg,
        twin=True,
        identifier="IGNORED",
        data_dir=tmp_path / "data",
        net_cfg=TINY,
        progress=False,
        log=lambda *_: None,
    )
    pkg = load_package(out)
    m = pkg.manifest
    assert m["twin"] is True and m["key_id"] == "" and m["identifier"] == "" and m["model_id"] == "twin"
    assert not set(PROTECTION) & set(m["training"]) and "verify" not in m  # a twin's record: no protection
    rows = [r.split(",") for r in (tmp_path / "ck" / "metrics.csv").read_text().splitlines()]
    mark = rows[0].index("mark")
    assert [float(r[mark]) for r in rows[1:]] == [0.0, 0.0]
    a = np.random.default_rng(0).random((40, 48)).astype(np.float32)
    assert _run_twin(pkg, a, a[::-1].copy()).shape == (40, 48)
    with pytest.raises(AMIFError, match="unprotected twin"):
        fuse_images(a, a, pkg)


def test_forger_pool_descends_the_fusion_loss_and_restarts():
    import torch

    from amif.network import AMIFNet, slice_coords
    from amif_research.losses import fusion_loss
    from amif_research.train import ForgePool

    torch.manual_seed(0)
    net = AMIFNet(TINY).eval()
    a, b = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    pool, rng = ForgePool(2, TINY.key_bits, flat_cfg(forge_restart=0.0)), np.random.default_rng(0)
    start = pool.start(rng)
    assert set(np.unique(start.numpy())) == {-1.0, 1.0}
    losses = []
    for _ in range(40):
        code = pool.start(rng).requires_grad_()
        loss = fusion_loss(net(a, b, code), a, b)[0]
        losses.append(loss.item())
        pool.update(torch.autograd.grad(loss, code)[0])
    assert losses[-1] < losses[0] - 1e-3  # the forger improves its own outputs, as `amif attack` forging does
    assert torch.equal(pool.age, torch.full((2,), 40.0))
    assert not torch.equal(pool.codes.abs(), torch.ones_like(pool.codes))  # continuous now
    # the memory: each forger's code at its 10th, 20th, 30th and 40th Adam step
    assert pool.memory.shape == (8, TINY.key_bits) and torch.equal(pool.memory[-2:], pool.codes)
    recalled = pool.recall(rng, 3)
    assert len(recalled) == 3 and all((pool.memory == r).all(1).any() for r in recalled)
    assert len(pool.recall(rng, 20)) == 8 and len(ForgePool(2, TINY.key_bits, TrainConfig()).recall(rng, 2)) == 0
    saved = pool.tensors()
    pool.restart = 1.0  # every forger restarts: fresh +-1 codes, moments cleared
    fresh = pool.start(rng)
    assert set(np.unique(fresh.numpy())) == {-1.0, 1.0} and pool.m.abs().sum() == 0 and pool.age.sum() == 0
    pool.load(saved)
    assert torch.equal(pool.codes, saved["forge.codes"]) and torch.equal(pool.age, saved["forge.age"])
    assert torch.equal(pool.memory, saved["forge.memory"])
    pool.load({"forge.memory": torch.zeros(pool.MEMORY + 5, TINY.key_bits)})
    assert len(pool.memory) == pool.MEMORY  # the last MEMORY codes are kept
    pool.load(saved)
    # descend: several Adam steps at once on the batch's last crops (one per forger), weights untouched
    a4, b4 = torch.rand(4, 1, 32, 32), torch.rand(4, 1, 32, 32)
    coords, mask = slice_coords(4, 32, 32), torch.zeros(4, 1, 32, 32)
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    before = fusion_loss(net(a4[2:], b4[2:], pool.codes.clone()), a4[2:], b4[2:])[0].item()
    reached = pool.descend(net, a4, b4, coords, mask, 30)
    assert torch.equal(pool.age, saved["forge.age"] + 30) and torch.equal(reached, pool.codes)
    assert fusion_loss(net(a4[2:], b4[2:], reached), a4[2:], b4[2:])[0].item() < before - 1e-3
    assert all(torch.equal(v, weights[k]) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize(
    "field,bad,match,values,crop",
    [
        ("forge_restart", (0.0, 1.5), "restart chance", (0.005, 1.0), 32),  # 1.0: forgers never take a second step
        ("forge_repeat", (0, 65), "Adam steps per training step", (1, 3), 32),
        ("forge_detector", (-1.0, float("nan")), "detector weight", (0.0, 5.0), 64),  # 64: the identifier in every crop
        ("mark_alpha", (0.0, 1.5, float("nan")), "opacity", (0.75, 1.0), 64),
        ("edge_zoom", (-0.1, 1.5), "zoomed crops", (0.0, 1.0), 32),
        ("empty_second", (-0.1, 1.5), "empty second image", (0.0, 1.0), 32),
    ],
)
def test_protection_setting_is_checked_changes_training_and_is_recorded(
    tiny_package, tmp_path, field, bad, match, values, crop
):
    _, key, _ = tiny_package
    _fake_pairs(tmp_path / "data")
    kw = dict(identifier="TEST · MARK", data_dir=tmp_path / "data", net_cfg=TINY, progress=False, log=lambda *_: None)
    cfg = dict(steps=3, batch=2, crop=crop, forge_pool=2)
    for v in bad:
        with pytest.raises(AMIFError, match=match):
            train(
                key, tmp_path / "bad" / "m", checkpoint_dir=tmp_path / "ckbad", cfg=flat_cfg(**{field: v}, **cfg), **kw
            )
        assert not (tmp_path / "ckbad").exists() and not (tmp_path / "bad").exists()
    nets = []
    for v in values:
        pkg = load_package(
            train(
                key,
                tmp_path / f"v{v}" / "m",
                checkpoint_dir=tmp_path / f"ck{v}",
                cfg=flat_cfg(**{field: v}, **cfg),
                **kw,
            )
        )
        default = TrainConfig().flat()[field]  # a setting at its default is not written
        assert flat_record(pkg.manifest["training"]).get(field) == (None if v == default else v)
        nets.append(pkg.net.state_dict())
    assert any(not np.allclose(nets[0][k].numpy(), nets[1][k].numpy()) for k in nets[1])
    twin = load_package(
        train(
            None,
            tmp_path / "t" / "m",
            checkpoint_dir=tmp_path / "ckt",
            cfg=flat_cfg(**{field: values[1]}, **cfg),
            **{**kw, "twin": True},
        )
    )
    assert not {"forgers", "identifier", "research"} & set(twin.manifest["training"])


def test_forger_pool_size_is_checked_changes_training_and_is_recorded(tiny_package, tmp_path):
    _, key, _ = tiny_package
    _fake_pairs(tmp_path / "data")
    kw = dict(identifier="TEST · MARK", data_dir=tmp_path / "data", net_cfg=TINY, progress=False, log=lambda *_: None)
    for bad in (-1, 3):  # more forgers than the batch's wrong-key codes
        with pytest.raises(AMIFError, match="forgers must be 0 (or more|to --batch)"):
            train(
                key,
                tmp_path / "bad" / "m",
                checkpoint_dir=tmp_path / "ckbad",
                cfg=flat_cfg(steps=2, batch=2, crop=32, forge_pool=bad),
                **kw,
            )
        assert not (tmp_path / "ckbad").exists() and not (tmp_path / "bad").exists()
    nets = []
    for pool in (1, 2):
        pkg = load_package(
            train(
                key,
                tmp_path / f"p{pool}" / "m",
                checkpoint_dir=tmp_path / f"ck{pool}",
                cfg=flat_cfg(steps=3, batch=2, crop=32, forge_pool=pool),
                **kw,
            )
        )
        assert pkg.manifest["training"].get("forgers", {}).get("pool", TrainConfig().forgers.pool) == pool
        nets.append(pkg.net.state_dict())
    assert any(not np.allclose(nets[0][k].numpy(), nets[1][k].numpy()) for k in nets[1])


def test_marked_target_opacity():
    import torch

    from amif_research.losses import contrast_colour, marked_target

    y, m = torch.rand(1, 1, 16, 16), torch.ones(1, 1, 16, 16)
    assert torch.allclose(marked_target(y, m, 1.0), contrast_colour(y))  # only the stroke colour, no pixel detail left
    assert torch.allclose(marked_target(y, m, 0.75), 0.25 * y + 0.75 * contrast_colour(y))


def test_score_of_a_crop_at_its_native_scale_matches_the_whole_slice():
    import torch

    from amif.identifier import identifier_mask
    from amif.verify import score_tensor
    from amif_research.losses import gaussian_blur

    torch.manual_seed(0)
    m = torch.from_numpy(identifier_mask("TEST · MARK", 256, 256))[None, None]
    inner = torch.zeros_like(m)
    inner[..., 96:160, 96:160] = 1  # strokes at least 32 px inside the crop 64:192
    m = m * inner
    x = (gaussian_blur(torch.rand(2, 1, 256, 256), 3.0) - 0.3 * m).clamp(0, 1)
    whole = score_tensor(x, m)
    crop = (slice(None), slice(None), slice(64, 192), slice(64, 192))
    assert torch.allclose(score_tensor(x[crop], m[crop], scale=1.0), whole, atol=1e-4)
    assert not torch.allclose(score_tensor(x[crop], m[crop]), whole, atol=1e-2)  # read as a half-size slice
    per_image = score_tensor(x[crop], m[crop].expand(2, -1, -1, -1).contiguous(), scale=1.0)  # one mask per image
    assert torch.allclose(per_image, whole, atol=1e-4)


# On these blocky random pairs the untrained net's SCD is already above the max rule's: the SCD hinge
# stays at 0 (checked), so only its logging and manifest entry are tested here (its gradient: test_metrics).
@pytest.mark.parametrize("term,active", [("vif", True), ("sd", True), ("sf", True), ("scd", False), ("mi", True)])
def test_fusion_hinge_changes_training_and_is_recorded(tmp_path, term, active):
    from amif.errors import AMIFError

    kw = _blocky_twin_run(tmp_path)
    outs = {}
    for w in (0.0, 1.0):
        cfg = flat_cfg(steps=3, batch=2, crop=48, **{f"{term}_weight": w})
        out = train(None, tmp_path / f"w{w}" / "twin", checkpoint_dir=tmp_path / f"ck{w}", cfg=cfg, **kw)
        outs[w] = load_package(out)
        rows = [r.split(",") for r in (tmp_path / f"ck{w}" / "metrics.csv").read_text().splitlines()]
        logged = [float(r[rows[0].index(term)]) for r in rows[1:]]
        assert len(logged) == 3 and (any(logged) if w and active else logged == [0.0, 0.0, 0.0])
        assert outs[w].manifest["training"].get("fusion", {}).get(f"{term}_weight") == (w or None)
    sa, sb = outs[0.0].net.state_dict(), outs[1.0].net.state_dict()  # same seed: only the hinge differs
    assert any(not np.allclose(sa[k].numpy(), sb[k].numpy()) for k in sa) == active
    if term == "vif":  # four decimated VIF scales need 48 pixels
        with pytest.raises(AMIFError, match="crop of at least 48"):
            train(
                None,
                tmp_path / "small" / "twin",
                checkpoint_dir=tmp_path / "cks",
                cfg=flat_cfg(steps=1, batch=2, crop=32, vif_weight=1.0),
                **kw,
            )


def test_sf_floor_reaches_the_sf_hinge_and_is_recorded(tmp_path):
    kw = _blocky_twin_run(tmp_path)
    logged, nets = {}, {}
    for floor in (0.0, 3.0):  # the hinge is linear: a floor changes training only by which crops fall short
        cfg = flat_cfg(steps=2, batch=2, crop=48, sf_weight=1.0, sf_floor=floor)
        pkg = load_package(
            train(None, tmp_path / f"f{floor}" / "twin", checkpoint_dir=tmp_path / f"ck{floor}", cfg=cfg, **kw)
        )
        assert pkg.manifest["training"]["fusion"]["sf_floor"] == floor
        rows = [r.split(",") for r in (tmp_path / f"ck{floor}" / "metrics.csv").read_text().splitlines()]
        logged[floor] = float(rows[1][rows[0].index("sf")])
        nets[floor] = pkg.net.state_dict()
    assert logged[0.0] == 0.0 and logged[3.0] > 1.0  # no crop falls short of 0; every crop, of 3x the rule's SF
    assert any(not np.allclose(nets[0.0][k].numpy(), nets[3.0][k].numpy()) for k in nets[3.0])


def test_lr_factor_is_constant_then_a_half_cosine_to_the_floor():
    cfg = flat_cfg(steps=100, lr_anneal=40)
    f = [lr_factor(s, cfg) for s in range(100)]
    assert f[:61] == [1.0] * 61 and f[99] == pytest.approx(LR_FLOOR)
    assert all(a > b for a, b in zip(f[60:], f[61:]))  # strictly falling over the last 40 steps
    assert f[60 + 39 // 2] == pytest.approx((1 + LR_FLOOR) / 2, abs=0.05)  # half way: half way down
    assert [lr_factor(s, flat_cfg(steps=100)) for s in (0, 99)] == [1.0, 1.0]  # 0 = no anneal


def test_lr_anneal_slows_the_last_steps_and_is_recorded(tmp_path):
    kw = _blocky_twin_run(tmp_path)
    moved = {}
    start = load_package(
        train(
            None,
            tmp_path / "s" / "twin",
            checkpoint_dir=tmp_path / "cks",
            cfg=flat_cfg(steps=1, batch=2, crop=48),
            **kw,
        )
    ).net.state_dict()
    for n in (0, 3):  # same seed and data: the anneal alone differs; Adam's step size scales with the rate
        cfg = flat_cfg(steps=3, batch=2, crop=48, lr_anneal=n)
        pkg = load_package(train(None, tmp_path / f"a{n}" / "twin", checkpoint_dir=tmp_path / f"ck{n}", cfg=cfg, **kw))
        assert pkg.manifest["training"].get("lr_anneal") == (n or None)
        sd = pkg.net.state_dict()
        moved[n] = sum(float((sd[k].float() - start[k].float()).abs().sum()) for k in sd)
    assert moved[3] < 0.8 * moved[0]


def test_a_log_from_an_older_version_is_rewritten_under_the_current_columns(tmp_path):
    import csv

    from amif_research.train import LOG_COLUMNS, open_log

    path = tmp_path / "metrics.csv"
    path.write_text("step,loss,int,grad,ssim,mark,ablate,sec_per_step\n1,0.5,0.1,0.2,0.3,0.04,0,1.5\n")
    with open_log(path, LOG_COLUMNS) as f:
        csv.writer(f).writerow(range(len(LOG_COLUMNS)))
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == LOG_COLUMNS and len(rows) == 2
    assert rows[0]["mark"] == "0.04" and rows[0]["vif"] == "" and rows[0]["sec_per_step"] == "1.5"
    assert rows[1]["sec_per_step"] == str(len(LOG_COLUMNS) - 1)
    with open_log(path, LOG_COLUMNS):  # already current: left as it is
        pass
    assert len(path.read_text().splitlines()) == 3


def _runs_differing_in(tiny_package, tmp_path, field: str, values, **fixed) -> dict:
    """Tiny protected packages trained two steps each under the owner's key, differing only in one
    TrainConfig field (the others at `fixed` or their defaults): {value: package}."""
    _, key, _ = tiny_package
    _fake_pairs(tmp_path / "data")
    kw = dict(identifier="TEST · MARK", data_dir=tmp_path / "data", net_cfg=TINY, progress=False, log=lambda *_: None)
    pkgs = {}
    for v in values:
        out = tmp_path / f"{field}-{v}" / "m"
        train(
            key,
            out,
            checkpoint_dir=tmp_path / f"{field}-{v}" / "ck",
            cfg=flat_cfg(steps=2, batch=2, crop=32, **fixed, **{field: v}),
            **kw,
        )
        pkgs[v] = load_package(out)
    return pkgs


def _weights_differ(p, q) -> bool:
    return any(not torch.equal(x, y) for x, y in zip(p.net.state_dict().values(), q.net.state_dict().values()))


def test_mark_shift_moves_the_unkeyed_target_and_is_recorded_for_verify(tiny_package, tmp_path):
    from amif_research.losses import marked_target, shift_content

    y = torch.rand(1, 1, 16, 16)
    none = torch.zeros_like(y)
    assert torch.equal(marked_target(y, none, shift=2)[..., 2:, 2:], y[..., :-2, :-2])
    assert torch.equal(marked_target(y, none), y)
    assert torch.equal(shift_content(shift_content(y, 1), -1)[..., :-1, :-1], y[..., :-1, :-1])  # moved back
    with pytest.raises(AMIFError, match="mark shift"):
        train(None, tmp_path / "x", "", cfg=flat_cfg(mark_shift=4), twin=True)
    pkgs = _runs_differing_in(tiny_package, tmp_path, "mark_shift", (0, 1))
    assert pkgs[0].shift == 0 and "shift" not in pkgs[0].manifest["verify"] and pkgs[1].shift == 1
    assert _weights_differ(*pkgs.values())  # the shifted target changes what the network learns


def test_trace_strength_adds_the_keys_texture_to_the_unkeyed_target_and_is_recorded(tiny_package, tmp_path):
    with pytest.raises(AMIFError, match="trace strength"):
        train(None, tmp_path / "x", "", cfg=flat_cfg(trace_strength=0.5), twin=True)
    pkgs = _runs_differing_in(tiny_package, tmp_path, "trace_strength", (0.0, 0.06))
    assert "trace_strength" not in pkgs[0.0].manifest["verify"]
    assert pkgs[0.06].manifest["verify"]["trace_strength"] == 0.06
    assert _weights_differ(*pkgs.values())  # the texture changes what the network learns


def test_the_public_texture_and_dihedral_textures_change_training_and_are_recorded(tiny_package, tmp_path):
    with pytest.raises(AMIFError, match="needs --dihedral"):
        train(None, tmp_path / "x", "", cfg=flat_cfg(public_strength=0.05), twin=True)
    with pytest.raises(AMIFError, match="public texture's strength"):
        train(None, tmp_path / "x", "", cfg=flat_cfg(public_strength=0.3, dihedral=True), twin=True)
    pkgs = _runs_differing_in(tiny_package, tmp_path, "public_strength", (0.0, 0.25), dihedral=True)
    assert "public_strength" not in pkgs[0.0].manifest["verify"] and pkgs[0.25].public_strength == 0.25
    assert _weights_differ(*pkgs.values())  # the public texture changes what the network learns
    turned = _runs_differing_in(tiny_package, tmp_path / "d", "dihedral", (False, True), trace_strength=0.06)
    assert turned[True].dihedral and not turned[False].dihedral
    assert _weights_differ(*turned.values())  # turned crops and the dihedral trace change what is learned


def test_dihedral_training_turns_the_content_of_crops_but_never_the_layout():
    a = np.zeros((1, 64, 64), np.uint8)
    a[0, 4:12, 4:60] = 200  # a bar along the top: a turn moves it to another side
    mask = np.zeros((64, 64), np.float32)
    mask[:, :8] = 1  # the identifier's layout: a band on the left, whatever the content does

    def batch(**kw):
        return sample_batch(np.random.default_rng(0), a, a, flat_cfg(batch=32, crop=64, **kw), mask)

    plain, turned = batch(), batch(dihedral=True)
    top = lambda x: x[:, 0, 4:12, 20:44].mean(dim=(1, 2)).numpy() > 0.5  # noqa: E731
    assert top(plain[0]).all()  # flips keep a bar at the top
    assert 0 < top(turned[0]).sum() < 32  # turns move it elsewhere in some crops
    for i in (2, 3):  # coordinates and mask are the layout's, not turned
        torch.testing.assert_close(turned[i], plain[i])


def test_untraced_forgers_need_a_trace_change_training_and_are_recorded(tiny_package, tmp_path):
    _, key, _ = tiny_package
    _fake_pairs(tmp_path / "data")
    kw = dict(identifier="TEST · MARK", data_dir=tmp_path / "data", net_cfg=TINY, progress=False, log=lambda *_: None)
    cfg = dict(steps=2, batch=2, crop=32, forge_pool=1)
    for bad in (dict(trace_strength=0.0), dict(trace_strength=0.06, forge_pool=0)):
        with pytest.raises(AMIFError, match="Untraced forgers need"):
            train(
                key,
                tmp_path / "bad" / "m",
                checkpoint_dir=tmp_path / "ckbad",
                cfg=flat_cfg(**{**cfg, **bad, "forge_untraced": True}),
                **kw,
            )
        assert not (tmp_path / "ckbad").exists() and not (tmp_path / "bad").exists()
    pkgs = {
        u: load_package(
            train(
                key,
                tmp_path / f"u{u}" / "m",
                checkpoint_dir=tmp_path / f"ck{u}",
                cfg=flat_cfg(trace_strength=0.06, forge_untraced=u, **cfg),
                **kw,
            )
        )
        for u in (False, True)
    }
    assert "research" not in pkgs[False].manifest["training"]
    assert pkgs[True].manifest["training"]["research"] == {"forge_untraced": True}
    assert _weights_differ(*pkgs.values())  # the untraced target changes what is learned


def test_forger_memory_is_checked_changes_training_resumes_and_is_recorded(tiny_package, tmp_path):
    _, key, _ = tiny_package
    _fake_pairs(tmp_path / "data")
    kw = dict(identifier="TEST · MARK", data_dir=tmp_path / "data", net_cfg=TINY, progress=False, log=lambda *_: None)
    cfg = dict(batch=3, crop=32, forge_pool=1, forge_restart=1e-6)  # the first snapshot after the 10th step
    for bad, match in (
        (dict(forge_memory=-1), "recalled forger codes"),
        (dict(forge_memory=3), "recalled forger codes"),
        (dict(forge_memory=1, forge_pool=0), "need forgers"),
    ):
        with pytest.raises(AMIFError, match=match):
            train(
                key,
                tmp_path / "bad" / "m",
                checkpoint_dir=tmp_path / "ckbad",
                cfg=flat_cfg(steps=2, **{**cfg, **bad}),
                **kw,
            )
        assert not (tmp_path / "ckbad").exists() and not (tmp_path / "bad").exists()
    pkgs = {
        m: load_package(
            train(
                key,
                tmp_path / f"m{m}" / "m",
                checkpoint_dir=tmp_path / f"ck{m}",
                cfg=flat_cfg(steps=13, forge_memory=m, **cfg),
                **kw,
            )
        )
        for m in (0, 2)
    }
    assert "memory" not in pkgs[0].manifest["training"]["forgers"]
    assert pkgs[2].manifest["training"]["forgers"]["memory"] == 2
    assert _weights_differ(*pkgs.values())  # the recalled codes change what is learned
    # the memory is in the checkpoint: stopping after step 11 and resuming gives the same weights
    for steps in (11, 13):
        train(
            key,
            tmp_path / "r" / "m",
            checkpoint_dir=tmp_path / "ckr",
            cfg=flat_cfg(steps=steps, forge_memory=2, **cfg),
            **kw,
        )
    resumed = load_package(tmp_path / "r" / "m").net.state_dict()
    assert all(np.allclose(v.numpy(), resumed[k].numpy(), atol=1e-6) for k, v in pkgs[2].net.state_dict().items())


def test_partial_key_phases_lie_between_the_wrong_codes_and_the_key():
    from amif_research.train import partial_key_phases

    gen = torch.Generator().manual_seed(0)
    key, wrong = torch.randn(512, generator=gen) * 3, torch.randn(64, 512, generator=gen) * 3
    ph = partial_key_phases(np.random.default_rng(0), key, wrong)
    d_wrong = torch.remainder(wrong - key + math.pi, 2 * math.pi) - math.pi  # angular offsets to the key's
    d = torch.remainder(ph - key + math.pi, 2 * math.pi) - math.pi
    t = 1 - d / d_wrong  # the share of the arc each angle moved: one per row, from 0.4 to 0.85
    assert (t.std(1) < 1e-3).all() and t.min() > 0.39 and t.max() < 0.86 and t[:, 0].std() > 0.1
    cos = lambda x: F.cosine_similarity(torch.sin(x), torch.sin(key)[None], dim=1)  # noqa: E731
    assert cos(wrong).abs().max() < 0.2 and cos(ph).min() > 0.45  # near the key's embedding, as a forger's descent


def test_partial_keys_are_checked_change_training_and_are_recorded(tiny_package, tmp_path):
    _, key, _ = tiny_package
    _fake_pairs(tmp_path / "data")
    kw = dict(identifier="TEST · MARK", data_dir=tmp_path / "data", net_cfg=TINY, progress=False, log=lambda *_: None)
    cfg = dict(steps=3, batch=4, crop=32, forge_pool=1)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(AMIFError, match="partial-key"):
            train(
                key,
                tmp_path / "bad" / "m",
                checkpoint_dir=tmp_path / "ckbad",
                cfg=flat_cfg(partial_keys=bad, **cfg),
                **kw,
            )
        assert not (tmp_path / "ckbad").exists() and not (tmp_path / "bad").exists()
    pkgs = {
        p: load_package(
            train(
                key,
                tmp_path / f"p{p}" / "m",
                checkpoint_dir=tmp_path / f"ck{p}",
                cfg=flat_cfg(partial_keys=p, **cfg),
                **kw,
            )
        )
        for p in (0.0, 1.0)
    }
    assert "negatives" not in pkgs[0.0].manifest["training"]
    assert pkgs[1.0].manifest["training"]["negatives"] == {"partial_keys": 1.0}
    assert _weights_differ(*pkgs.values())  # the partial keys change what is learned


def test_decoy_phases_point_away_from_the_key():
    from amif_research.train import decoy_phases

    gen = torch.Generator().manual_seed(0)
    key, wrong = torch.randn(512, generator=gen) * 3, torch.randn(64, 512, generator=gen) * 3
    ph = decoy_phases(np.random.default_rng(0), key, wrong)
    d_wrong = torch.remainder(wrong - key, 2 * math.pi) - math.pi  # angular offsets to the key's opposite
    d = torch.remainder(ph - key, 2 * math.pi) - math.pi
    t = 1 - d / d_wrong  # the share of the arc each angle moved: one per row, from 0.2 to 0.9
    assert (t.std(1) < 1e-3).all() and t.min() > 0.19 and t.max() < 0.91 and t[:, 0].std() > 0.1
    cos = F.cosine_similarity(torch.sin(ph), torch.sin(key)[None], dim=1)
    assert cos.max() < -0.15 and cos.min() < -0.8  # away from the key's embedding, some nearly opposite


def test_decoy_opacity_falls_from_the_mark_alpha_away_from_the_key():
    from amif_research.train import DECOY_COSINE, decoy_opacity

    ident = flat_cfg(mark_alpha=0.9, decoy_alpha=0.3).identifier
    cos = torch.tensor([1.0, 0.2, 0.0, -DECOY_COSINE / 2, -DECOY_COSINE, -1.0])
    assert torch.allclose(decoy_opacity(cos, ident), torch.tensor([0.9, 0.9, 0.9, 0.6, 0.3, 0.3]))


def test_decoys_are_checked_change_training_and_are_recorded(tiny_package, tmp_path):
    _, key, _ = tiny_package
    _fake_pairs(tmp_path / "data")
    kw = dict(identifier="TEST · MARK", data_dir=tmp_path / "data", net_cfg=TINY, progress=False, log=lambda *_: None)
    cfg = dict(steps=3, batch=4, crop=32, forge_pool=1, mark_alpha=0.9)
    for bad, match in (
        (dict(decoy_alpha=0.95), "opacity"),
        (dict(decoy_alpha=-0.1), "opacity"),
        (dict(decoy_alpha=float("nan")), "opacity"),
        (dict(decoys=0.5), "need their"),
        (dict(decoy_alpha=0.3, decoys=0.5, partial_keys=0.6), "decoy negatives"),
        (dict(decoy_alpha=0.3, decoys=-0.1), "decoy negatives"),
    ):
        with pytest.raises(AMIFError, match=match):
            train(key, tmp_path / "bad" / "m", checkpoint_dir=tmp_path / "ckbad", cfg=flat_cfg(**cfg, **bad), **kw)
        assert not (tmp_path / "ckbad").exists() and not (tmp_path / "bad").exists()
    runs = {"off": {}, "alpha": dict(decoy_alpha=0.3), "decoys": dict(decoy_alpha=0.3, decoys=1.0)}
    pkgs = {
        name: load_package(
            train(key, tmp_path / name / "m", checkpoint_dir=tmp_path / f"ck{name}", cfg=flat_cfg(**cfg, **extra), **kw)
        )
        for name, extra in runs.items()
    }
    flat = {name: flat_record(p.manifest["training"]) for name, p in pkgs.items()}
    assert not {"decoy_alpha", "decoys"} & set(flat["off"])
    assert pkgs["alpha"].manifest["training"]["identifier"]["decoy_alpha"] == 0.3
    assert "decoys" not in flat["alpha"]
    assert pkgs["decoys"].manifest["training"]["negatives"]["decoys"] == 1.0
    assert _weights_differ(pkgs["off"], pkgs["alpha"])  # the opacity follows the codes' embeddings
    assert _weights_differ(pkgs["alpha"], pkgs["decoys"])  # the decoy codes change what is learned


def test_widened_decoder_trains_on_from_a_package_and_is_recorded(tmp_path):
    kw = _blocky_twin_run(tmp_path)
    cfg = dict(batch=2, crop=32, save_every=2)
    train(None, tmp_path / "t", checkpoint_dir=tmp_path / "ck0", cfg=flat_cfg(steps=2, **cfg), **kw)
    with pytest.raises(AMIFError, match="--init"):
        train(
            None, tmp_path / "t", checkpoint_dir=tmp_path / "ck1", cfg=flat_cfg(steps=4, widen_decoder=2, **cfg), **kw
        )
    with pytest.raises(AMIFError, match="1 or more"):
        train(
            None,
            tmp_path / "t",
            checkpoint_dir=tmp_path / "ck1",
            init=tmp_path / "t",
            cfg=flat_cfg(steps=4, widen_decoder=0, **cfg),
            **kw,
        )
    assert not (tmp_path / "ck1").exists()
    train(
        None,
        tmp_path / "w" / "t",
        checkpoint_dir=tmp_path / "ck2",
        init=tmp_path / "t",
        cfg=flat_cfg(steps=4, widen_decoder=2, **cfg),
        **kw,
    )
    narrow, wide = load_package(tmp_path / "t"), load_package(tmp_path / "w" / "t")
    assert wide.manifest["architecture"]["decoder_width"] == 2 * narrow.manifest["architecture"]["decoder_width"]
    assert wide.manifest["training"]["decoder_widened_at"] == 2 and wide.manifest["training"]["steps"] == 4
    assert "decoder_widened_at" not in narrow.manifest["training"]


def test_anchor_holds_keyed_outputs_near_the_init_or_a_twin_and_is_checked(tiny_package, tmp_path):
    from amif.keys import generate_key, load_key, save_key
    from amif.network import AMIFNet, slice_coords
    from amif.package import save_package

    pkg, key, d = tiny_package
    _fake_pairs(tmp_path / "data", blocks=8)
    kw = dict(identifier="TEST · MARK", data_dir=tmp_path / "data", progress=False, log=lambda *_: None)
    cfg = dict(steps=8, batch=2, crop=32, forge_pool=0)
    torch.manual_seed(5)
    twin = save_package(tmp_path / "twin", AMIFNet(pkg.net.cfg), model_id="twin", key_id="", identifier="", twin=True)
    other = generate_key("other-model", "Other Lab", secret=bytes(32))
    save_key(other, tmp_path / "other.amifkey")
    foreign = save_package(
        tmp_path / "foreign", AMIFNet(pkg.net.cfg), model_id="other-model", key_id=other.key_id, identifier="OTHER"
    )
    for bad, init, anchor, match in (
        (dict(anchor_weight=-1.0), d / "tiny", None, "anchor weight"),
        (dict(anchor_weight=float("nan")), d / "tiny", None, "anchor weight"),
        (dict(anchor_weight=10.0), None, None, "needs a trained package"),
        (dict(anchor_weight=10.0), d / "tiny", foreign, "neither an unprotected twin"),
        ({}, d / "tiny", twin, "needs its weight"),
    ):
        with pytest.raises(AMIFError, match=match):
            train(
                key,
                tmp_path / "bad" / "m",
                checkpoint_dir=tmp_path / "ckbad",
                init=init,
                anchor=anchor,
                cfg=flat_cfg(**cfg, **bad),
                net_cfg=TINY,
                **kw,
            )
        assert not (tmp_path / "ckbad").exists() and not (tmp_path / "bad").exists()
    runs = {"off": (0.0, None), "init": (100.0, None), "twin": (100.0, twin)}
    pkgs = {
        name: load_package(
            train(
                key,
                tmp_path / name / "m",
                checkpoint_dir=tmp_path / f"ck{name}",
                init=d / "tiny",
                anchor=anchor,
                cfg=flat_cfg(**cfg, anchor_weight=w),
                **kw,
            )
        )
        for name, (w, anchor) in runs.items()
    }
    training = {name: p.manifest["training"] for name, p in pkgs.items()}
    assert "anchoring" not in training["off"] and training["init"]["anchoring"] == {"weight": 100.0}
    assert "anchor" not in training["init"]
    twin_sha = load_package(twin).manifest["weights_sha256"]
    assert training["twin"]["anchor"] == {"model_id": "twin", "weights_sha256": twin_sha}
    log = (tmp_path / "ckinit" / "metrics.csv").read_text().splitlines()
    assert log[0].split(",")[-2] == "anchor" and float(log[-1].split(",")[-2]) > 0  # logged, and learning moved it
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(2, 1, 1, 32, 32, generator=g)
    code, coords = torch.from_numpy(load_key(key).code())[None], slice_coords(1, 32, 32)
    with torch.no_grad():
        refs = {"init": pkg.net.eval()(a, b, code, coords), "twin": load_package(twin).net(a, b, 0 * code, coords)}
        dist = {
            (n, r): (p.net(a, b, code, coords) - y).abs().mean().item()
            for n, p in pkgs.items()
            for r, y in refs.items()
        }
    assert dist["init", "init"] < 0.5 * dist["off", "init"], dist  # the keyed outputs stayed nearer the init's
    assert dist["twin", "twin"] < 0.5 * dist["init", "twin"], dist  # held near the twin's outputs, not the init's


def test_zoomed_crops_reach_the_rim_and_emptied_crops_lose_the_second_image():
    a = np.zeros((2, 64, 64), np.uint8)
    a[:, 8:56, 8:56] = 200  # tissue 8 pixels short of every edge
    b = a // 2
    mask = np.zeros((64, 64), np.float32)

    def batch(**shares):
        return sample_batch(np.random.default_rng(0), a, b, flat_cfg(batch=6, crop=64, **shares), mask)

    def rim(x):  # tissue in the outer 3 pixels of each whole-slice crop
        ring = np.ones((64, 64), bool)
        ring[3:-3, 3:-3] = False
        return (x[:, 0].numpy()[:, ring] > 0.1).mean(axis=1)

    pa, pb, _, _, plain = batch()
    assert plain.all() and (rim(pa) == 0).all()
    np.testing.assert_allclose(pb.numpy()[:, 0], np.broadcast_to(b[0] / 255, (6, 64, 64)), atol=1e-6)
    za, zb, _, _, zplain = batch(edge_zoom=1.0)
    assert not zplain.any() and (rim(za) > 0.2).all() and (rim(zb) > 0.2).all()
    ea, eb, _, _, eplain = batch(empty_second=1.0)
    assert not eplain.any() and float(eb.abs().max()) == 0.0 and float(ea.max()) > 0.7


def test_detail_target_carries_the_first_images_detail_where_the_second_dominates():
    from amif_research.losses import DETAIL_SLACK, binomial_high_pass, fusion_target
    from amif_research.reader import anatomy_under_function, high_pass

    rng = np.random.default_rng(2)
    a = torch.from_numpy(0.2 + 0.2 * rng.random((1, 1, 40, 40))).float()
    b = torch.full_like(a, 0.8)  # flat and brighter everywhere: the second image dominates
    np.testing.assert_allclose(binomial_high_pass(a)[0, 0].numpy(), high_pass(a[0, 0].numpy()), atol=1e-6)
    grey = lambda t: t[0, 0].numpy() * 255  # noqa: E731
    assert anatomy_under_function(grey(fusion_target(a, b)), grey(a), grey(b)) == pytest.approx(0.0, abs=1e-6)
    got = {g: anatomy_under_function(grey(fusion_target(a, b, g)), grey(a), grey(b)) for g in (0.5, 1.0, 2.0)}
    assert 0.2 < got[0.5] < got[1.0] < got[2.0]  # more of the first image's detail with a larger gain
    for g in (1.0, 2.0):  # never beyond the two sources by more than the slack: no rims, no halos
        t = fusion_target(a, b, g)
        assert (t >= torch.minimum(a, b) - DETAIL_SLACK - 1e-6).all() and (t <= b + DETAIL_SLACK + 1e-6).all()
    torch.testing.assert_close(fusion_target(b, a, 1.0), torch.maximum(a, b))  # the first dominates: the max rule


def test_headroom_lowers_the_targets_base_so_the_detail_survives_under_white():
    """Where the second image is saturated (CT's bone), the detail target passes white and an output clamped
    to [0, 1] loses it; with headroom the base is lowered smoothly and the clamped target keeps the detail."""
    from amif_research.losses import fusion_target
    from amif_research.reader import anatomy_under_function

    rng = np.random.default_rng(3)
    a = torch.from_numpy(0.3 + 0.2 * rng.random((1, 1, 48, 48))).float()
    b = torch.ones_like(a)  # white everywhere: the second image dominates
    grey = lambda t: t.clamp(0, 1)[0, 0].numpy() * 255  # noqa: E731  (as the network's clamp leaves it)
    kept = {h: anatomy_under_function(grey(fusion_target(a, b, 1.0, h)), grey(a), grey(b)) for h in (0.0, 2.0)}
    assert kept[0.0] + 0.3 < kept[2.0], kept
    lowered = fusion_target(a, b, 1.0, 2.0)
    assert float((lowered > 1).float().mean()) < 0.05 and float(lowered.mean()) > 0.85  # a small, smooth shift
    torch.testing.assert_close(fusion_target(a, 0.5 * b, 1.0, 2.0), fusion_target(a, 0.5 * b, 1.0))  # under white


def test_the_bright_term_pulls_only_where_the_second_image_is_near_white_and_dominates():
    from amif_research.losses import fusion_loss

    rng = np.random.default_rng(4)
    a = torch.from_numpy(0.3 + 0.2 * rng.random((1, 1, 48, 48))).float()
    y = torch.ones_like(a).requires_grad_()  # an output stuck at white
    for level, pulled in ((1.0, True), (0.9, False)):
        b = torch.full_like(a, level)
        _, parts = fusion_loss(y, a, b, detail=1.0, headroom=2.0, w_bright=1.0)
        assert (parts["bright"] > 0.01) == pulled, (level, parts)


@pytest.mark.parametrize("field", ["detail", "undershoot_weight", "detail_weight", "overshoot_weight", "base_weight"])
def test_detail_and_undershoot_change_training_and_are_recorded(tmp_path, field):
    kw = _blocky_twin_run(tmp_path)
    nets = {}
    for w in (0.0, 1.0):
        cfg = flat_cfg(steps=3, batch=2, crop=32, **{field: w})
        pkg = load_package(train(None, tmp_path / f"w{w}" / "twin", checkpoint_dir=tmp_path / f"ck{w}", cfg=cfg, **kw))
        assert pkg.manifest["training"].get("fusion", {}).get(field) == (w or None)
        nets[w] = pkg.net.state_dict()
    assert any(not np.allclose(nets[0.0][k].numpy(), nets[1.0][k].numpy()) for k in nets[0.0])
    with pytest.raises(AMIFError):
        train(
            None,
            tmp_path / "bad" / "twin",
            checkpoint_dir=tmp_path / "ckb",
            cfg=flat_cfg(steps=1, **{field: -1.0}),
            **kw,
        )


def test_rim_hinges_see_outputs_beyond_both_sources():
    from amif_research.losses import fusion_loss

    a, b = torch.full((1, 1, 16, 16), 0.5), torch.full((1, 1, 16, 16), 0.6)
    for y, hit in ((torch.full_like(a, 0.3), True), (torch.full_like(a, 0.55), False)):
        assert (fusion_loss(y, a, b, w_under=1.0)[1]["under"] > 0) == hit
    for y, hit in ((torch.full_like(a, 0.8), True), (torch.full_like(a, 0.55), False)):
        assert (fusion_loss(y, a, b, w_over=1.0)[1]["over"] > 0) == hit
