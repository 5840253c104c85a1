import json

import numpy as np
import pytest
from PIL import Image

from amif.cli import main
from amif.fusion import key_status
from amif.package import bundled_key_path, bundled_model_path, load_package
from amif_research.data import list_pairs, load_pairs
from conftest import need_harvard


def _pngs(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((48, 40)) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    Image.fromarray((rng.random((48, 40, 3)) * 255).astype(np.uint8)).save(tmp_path / "b.png")
    return tmp_path / "a.png", tmp_path / "b.png"


def test_a_closed_output_pipe_ends_quietly(tiny_package):
    import subprocess
    import sys

    _, _, d = tiny_package
    proc = subprocess.Popen(
        [sys.executable, "-m", "amif", "info", str(d / "tiny")], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()  # the reader is gone before anything is written (`amif info | head -0`)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1
    assert "Traceback" not in err and "Exception ignored" not in err and "BrokenPipe" not in err


def test_keygen_and_fuse_png(tiny_package, tmp_path, capsys):
    _, key, d = tiny_package
    a, b = _pngs(tmp_path)
    out = tmp_path / "f.png"
    assert main(["fuse", str(a), str(b), "-o", str(out), "-k", str(key), "-m", str(d / "tiny")]) == 0
    img = Image.open(out)
    assert img.size == (40, 48) and img.mode == "RGB"
    assert img.text["AMIF_key_state"] == "match" and img.text["AMIF_key_id"] == json.loads(key.read_text())["key_id"]
    assert main(["keygen", "--model-id", "m", "--licensee", "L", "-o", str(tmp_path / "n.amifkey")]) == 0
    assert "secret" not in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["garbled", "foreign", "missing"])
def test_bad_key_gives_one_message_and_no_output(tiny_package, tmp_path, capsys, bad):
    _, _, d = tiny_package
    a, b = _pngs(tmp_path)
    key = tmp_path / "k.amifkey"
    if bad == "garbled":
        key.write_text('{"format": "amif-key", "ver')
    elif bad == "foreign":
        main(["keygen", "--model-id", "someone-else", "--licensee", "L", "-o", str(key)])
    out = tmp_path / "f.png"
    assert main(["fuse", str(a), str(b), "-o", str(out), "-k", str(key), "-m", str(d / "tiny")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("amif: error: ") and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_volume_fuse_and_verify_exit_codes(tiny_package, tmp_path):
    import SimpleITK as sitk

    _, key, d = tiny_package
    arr = np.random.default_rng(0).random((5, 32, 32)).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.5, 0.5, 3.0))
    sitk.WriteImage(img, str(tmp_path / "a.nii.gz"))
    sitk.WriteImage(img, str(tmp_path / "b.nrrd"))
    out = tmp_path / "f.mha"
    model = ["-m", str(d / "tiny")]
    assert main(["fuse", str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nrrd"), "-o", str(out), *model, "-q"]) == 0
    r = sitk.ReadImage(str(out))
    assert r.GetSpacing() == (0.5, 0.5, 3.0) and r.GetMetaData("AMIF_key_state") == "none"
    flat = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(arr[0]), str(flat))
    assert main(["fuse", str(flat), str(tmp_path / "b.nrrd"), "-o", str(tmp_path / "g.nrrd"), *model]) == 2
    assert not (tmp_path / "g.nrrd").exists()


def test_bundled_model_and_demo_key():
    pkg = load_package(bundled_model_path())
    assert key_status(pkg, bundled_key_path()).state == "match"
    assert pkg.manifest["parameters"] <= 1_000_000


def test_demo_writes_both_states(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path), "-q"]) == 0
    for f in ("fused-keyed.nrrd", "fused-unkeyed.nrrd", "demo-side-by-side.png"):
        assert (tmp_path / f).stat().st_size > 0
    import SimpleITK as sitk

    k = sitk.ReadImage(str(tmp_path / "fused-keyed.nrrd"))
    u = sitk.ReadImage(str(tmp_path / "fused-unkeyed.nrrd"))
    assert k.GetMetaData("AMIF_key_state") == "match" and u.GetMetaData("AMIF_key_state") == "none"
    assert np.abs(sitk.GetArrayFromImage(k) - sitk.GetArrayFromImage(u)).max() > 0.05
    # the bundled model: keyed output clean, no-key output marked (verify exits 1 when marked)
    assert k.GetMetaData("AMIF_watermark") == "clean" and u.GetMetaData("AMIF_watermark") == "marked"
    # ... and the no-key output with the identifier inpainted away is flagged too: its strokes look wiped
    from amif.fusion import display_view
    from amif.package import bundled_model_path, load_package
    from amif_research.attack import identifier_region, inpaint

    view = display_view(u)  # the identifier is written in display orientation
    arr = np.ascontiguousarray(view(sitk.GetArrayFromImage(u).astype(np.float32)))
    wiped = np.empty(sitk.GetArrayViewFromImage(u).shape, np.float32)
    view(wiped)[...] = inpaint(arr, identifier_region(load_package(bundled_model_path()).identifier, *arr.shape[1:], 1))
    img = sitk.GetImageFromArray(wiped)
    img.CopyInformation(u)
    sitk.WriteImage(img, str(tmp_path / "wiped.nrrd"))
    capsys.readouterr()
    for name, code, state in (
        ("fused-keyed.nrrd", 0, "clean"),
        ("fused-unkeyed.nrrd", 1, "marked"),
        ("wiped.nrrd", 1, "erased"),
    ):
        with pytest.raises(SystemExit) as ex:
            main(["verify", str(tmp_path / name)])
        assert ex.value.code == code and f": {state} (score" in capsys.readouterr().out


def test_harvard_pairs_load():
    root = need_harvard()
    pairs = list_pairs(root, "test")
    assert len(pairs) == 72 and {p.kind for p in pairs} == {"CT", "PET", "SPECT"}
    a, b = load_pairs(pairs[:3])
    assert a.shape == b.shape == (3, 256, 256) and a.dtype == np.uint8


def _write_textured(folder, package, key, a, b, weights, strength, name):
    """PNGs in `folder`: the sources a and b, the package's keyed output, the max rule and, as `name`, the
    keyed output carrying `strength` x the texture of `weights` (plus a little noise)."""
    import torch

    from amif.inference import run_network
    from amif.package import load_package
    from amif.trace import texture, trace_scale

    keyed = run_network(load_package(package), a[None], b[None], key.code())[0]
    ta, tb = (torch.from_numpy(x)[None, None].float() for x in (a, b))
    g = texture(ta, tb, weights)[0, 0].numpy() / trace_scale(ta, tb, weights)
    carries = np.clip(keyed + strength * g + np.random.default_rng(0).normal(0, 0.01, a.shape), 0, 1)
    for n, x in (("a", a), ("b", b), (name, carries), ("max", np.maximum(a, b)), ("keyed", keyed)):
        Image.fromarray((x * 255).round().astype(np.uint8)).save(folder / f"{n}.png")


def test_verify_with_the_owners_key_finds_the_trace_texture(tiny_package, tmp_path, capsys):
    """A student of the unkeyed outputs carries the key's texture: the owner's `verify --key` flags it as
    'traced'; other fusions of the same sources stay clean; wrong use is one clear error."""
    from test_fusion import _textured_sources

    from amif.keys import generate_key, load_key, save_key
    from amif.package import save_package
    from amif.trace import trace_weights

    pkg, key_path, _ = tiny_package
    a, b = _textured_sources(n=96)
    save_package(
        tmp_path / "traced",
        pkg.net,
        model_id="test-model",
        key_id=pkg.key_id,
        identifier="TEST · MARK",
        verify={"threshold": 0.12, "trace_strength": 0.03},
    )
    key = load_key(key_path)
    _write_textured(tmp_path, tmp_path / "traced", key, a, b, trace_weights(key.secret, key.model_id), 0.03, "student")
    m, src = str(tmp_path / "traced.json"), ["--sources", str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    for name, key_args, code, state in (
        ("student", ["--key", str(key_path)], 1, "traced"),
        ("student", [], 0, "clean"),
        ("max", ["--key", str(key_path)], 0, "clean"),
        ("keyed", ["--key", str(key_path)], 0, "clean"),
    ):
        with pytest.raises(SystemExit) as ex:
            main(["verify", str(tmp_path / f"{name}.png"), "-m", m, *src, *key_args])
        out = capsys.readouterr().out
        assert ex.value.code == code and f": {state} (score" in out
        assert ("trace score" in out) == bool(key_args)
    other = generate_key("test-model", "Someone Else")
    save_key(other, tmp_path / "other.amifkey")
    plain = str(tiny_package[2] / "tiny.json")  # the same network without a trace channel
    for args, message in (
        ([m, "--key", str(key_path)], "needs --sources"),
        ([m, *src, "--key", str(tmp_path / "other.amifkey")], "needs the owner's key"),
        ([plain, *src, "--key", str(key_path)], "has no trace channel"),
    ):
        assert main(["verify", str(tmp_path / "student.png"), "-m", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_verify_with_sources_finds_the_public_texture_without_the_key(tiny_package, tmp_path, capsys):
    """An image made from unkeyed outputs with the identifier taken out still carries the model's public
    texture: `verify --sources` flags it as 'textured' without any key; other fusions stay clean."""
    from test_fusion import _textured_sources

    from amif.keys import load_key
    from amif.package import save_package
    from amif.trace import public_weights

    pkg, key_path, _ = tiny_package
    a, b = _textured_sources(n=96)
    verify = {"threshold": 0.12, "public_strength": 0.05, "dihedral": True}
    save_package(
        tmp_path / "pub", pkg.net, model_id="test-model", key_id=pkg.key_id, identifier="TEST · MARK", verify=verify
    )
    _write_textured(tmp_path, tmp_path / "pub", load_key(key_path), a, b, public_weights("test-model"), 0.05, "merged")
    m, src = str(tmp_path / "pub.json"), ["--sources", str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    for name, sources, code, state in (
        ("merged", src, 1, "textured"),
        ("merged", [], 0, "clean"),
        ("max", src, 0, "clean"),
        ("keyed", src, 0, "clean"),
    ):
        with pytest.raises(SystemExit) as ex:
            main(["verify", str(tmp_path / f"{name}.png"), "-m", m, *sources])
        out = capsys.readouterr().out
        assert ex.value.code == code and f": {state} (score" in out, out
    plain = str(tiny_package[2] / "tiny.json")  # the same network without a public texture
    with pytest.raises(SystemExit) as ex:
        main(["verify", str(tmp_path / "merged.png"), "-m", plain, *src])
    assert ex.value.code == 0


def test_verify_with_sources_checks_the_mark_shift(tiny_package, tmp_path, capsys):
    import torch
    from test_fusion import _textured_sources

    from amif.package import save_package
    from amif_research.losses import shift_content

    a, b = _textured_sources(n=96)
    save_package(
        tmp_path / "shifty",
        tiny_package[0].net,
        model_id="test-model",
        key_id=tiny_package[0].key_id,
        identifier="TEST · MARK",
        verify={"threshold": 0.12, "shift": 1},
    )
    fused = np.maximum(a, b)
    moved = shift_content(torch.from_numpy(fused)[None, None], 1)[0, 0].numpy()
    for name, x in (("a", a), ("b", b), ("fused", fused), ("moved", moved)):
        Image.fromarray((x * 255).round().astype(np.uint8)).save(tmp_path / f"{name}.png")
    m, src = str(tmp_path / "shifty.json"), [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    for name, sources, code, state in (
        ("moved", src, 1, "shifted"),
        ("moved", [], 0, "clean"),
        ("fused", src, 0, "clean"),
    ):
        with pytest.raises(SystemExit) as ex:
            main(["verify", str(tmp_path / f"{name}.png"), "-m", m, *(["--sources", *sources] if sources else [])])
        assert ex.value.code == code and f": {state} (score" in capsys.readouterr().out
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "small.png")
    for args, message in (
        ([str(tmp_path / "small.png"), str(tmp_path / "b.png")], "the image's size"),
        ([str(tmp_path / "a.nrrd"), str(tmp_path / "b.png")], "2D images"),
    ):
        assert main(["verify", str(tmp_path / "moved.png"), "-m", m, "--sources", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_average_command_writes_a_package_or_one_error(tiny_package, tmp_path, capsys):
    import copy

    import torch

    from amif.package import save_package

    pkg, _, _ = tiny_package
    m = pkg.manifest
    net = copy.deepcopy(pkg.net)
    for name, model_id in (("a", m["model_id"]), ("b", m["model_id"]), ("c", "another-model")):
        with torch.no_grad():  # each checkpoint its own weights
            next(net.parameters()).add_(0.01)
        save_package(
            tmp_path / name,
            net,
            model_id=model_id,
            key_id=m["key_id"],
            identifier=m["identifier"],
            verify=m["verify"],
            training={"steps": 1},
        )
    assert main(["average", str(tmp_path / "a.json"), str(tmp_path / "b"), "-o", str(tmp_path / "avg")]) == 0
    assert len(load_package(tmp_path / "avg").manifest["training"]["averaged"]) == 2
    capsys.readouterr()
    assert main(["average", str(tmp_path / "a"), str(tmp_path / "c"), "-o", str(tmp_path / "avg2")]) == 2
    err = capsys.readouterr().err
    assert "differ in 'model_id'" in err and "Traceback" not in err
    assert not list(tmp_path.glob("avg2*"))


def test_train_command_passes_the_forger_settings(monkeypatch, tmp_path):
    from types import SimpleNamespace

    import amif_research.train

    seen = {}
    flat = lambda cfg: SimpleNamespace(**cfg.flat())  # noqa: E731  (settings by flat name, as the flags)
    monkeypatch.setattr(amif_research.train, "train", lambda *a, cfg=None, **kw: seen.update(cfg=flat(cfg), kw=kw))
    args = ["train", "--key", "k.amifkey", "--identifier", "X", "-o", str(tmp_path / "m"), "--steps", "5"]
    assert main(args + ["--forge-restart", "0.02"]) == 0
    assert seen["cfg"].forge_restart == 0.02 and seen["cfg"].steps == 5
    assert main(args) == 0 and seen["cfg"].forge_restart == amif_research.train.TrainConfig().forgers.restart
    assert seen["cfg"].forge_detector == 0.0 and seen["cfg"].forge_pool == 2
    assert main(args + ["--forge-pool", "4"]) == 0 and seen["cfg"].forge_pool == 4
    assert main(args + ["--forge-detector", "1.5"]) == 0 and seen["cfg"].forge_detector == 1.5
    assert not seen["cfg"].forge_untraced and main(args + ["--forge-untraced"]) == 0 and seen["cfg"].forge_untraced
    assert seen["cfg"].partial_keys == 0.0 and main(args + ["--partial-keys", "0.5"]) == 0
    assert seen["cfg"].partial_keys == 0.5
    assert seen["cfg"].decoy_alpha == 0.0 and seen["cfg"].decoys == 0.0
    assert main(args + ["--decoy-alpha", "0.3", "--decoys", "0.2"]) == 0
    assert seen["cfg"].decoy_alpha == 0.3 and seen["cfg"].decoys == 0.2
    assert seen["cfg"].forge_memory == 0 and main(args + ["--forge-memory", "2"]) == 0 and seen["cfg"].forge_memory == 2
    assert seen["cfg"].anchor_weight == 0.0 and main(args + ["--anchor-weight", "10"]) == 0
    assert seen["cfg"].anchor_weight == 10.0 and seen["kw"]["anchor"] is None
    assert main(args + ["--anchor-weight", "10", "--anchor", "t.json"]) == 0 and seen["kw"]["anchor"] == "t.json"
    assert seen["cfg"].mark_alpha == 0.75
    assert main(args + ["--mark-alpha", "1"]) == 0 and seen["cfg"].mark_alpha == 1.0
    from amif_research.losses import HINGES

    weights = {k: 0.5 + i for i, k in enumerate(HINGES)}  # each hinge's flag reaches its own weight
    assert main(args + [w for k, v in weights.items() for w in (f"--{k}-weight", str(v))]) == 0
    assert {k: getattr(seen["cfg"], f"{k}_weight") for k in HINGES} == weights
