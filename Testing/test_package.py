import copy
import json

import pytest
import torch

from amif.errors import AMIFError
from amif.package import load_package, package_paths, read_manifest


def _copy(src_dir, dst_dir):
    for f in src_dir.glob("tiny.*"):
        (dst_dir / f.name).write_bytes(f.read_bytes())
    return dst_dir / "tiny"


def test_roundtrip_same_outputs(tiny_package, tmp_path):
    pkg, _, d = tiny_package
    p = _copy(d, tmp_path)
    again = load_package(str(p) + ".safetensors")
    a = torch.rand(1, 1, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(pkg.net(a, a, torch.ones(256)), again.net(a, a, torch.ones(256)))
    m, _ = read_manifest(p)
    assert m["parameters"] > 0 and m["flops_per_256_slice"] > 0 and m["identifier"] == "TEST · MARK"


def test_tampered_weights_refused(tiny_package, tmp_path):
    p = _copy(tiny_package[2], tmp_path)
    _, w = package_paths(p)
    data = bytearray(w.read_bytes())
    data[-10] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(AMIFError, match="does not match the hash"):
        load_package(p)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: {**m, "format_version": 99}, "format version"),
        (lambda m: {**m, "format": "x"}, "not an AMIF model"),
        (lambda m: {**m, "weights": "../x.safetensors"}, "outside"),
        (lambda m: {**m, "weights": "gone.safetensors"}, "missing"),
        (lambda m: {**m, "architecture": {**m["architecture"], "c1": 5}}, "do not fit"),
        (lambda m: {**m, "verify": {"threshold": 0.12, "shift": -1}}, "'shift'"),
        (lambda m: {**m, "verify": {"threshold": 0.12, "shift": 1.5}}, "'shift'"),
        (lambda m: {**m, "verify": {"threshold": 0.12, "shift": True}}, "'shift'"),
        (lambda m: {**m, "verify": {"threshold": 0.12, "shift": 9}}, "'shift'"),
        (lambda m: {**m, "verify": {"threshold": 0.12, "trace_strength": "0.06"}}, "'trace_strength'"),
        (lambda m: {**m, "verify": {"threshold": 0.12, "trace_strength": 2.0}}, "'trace_strength'"),
        (lambda m: {**m, "verify": {"threshold": 0.12, "trace_strength": True}}, "'trace_strength'"),
        (lambda m: {**m, "verify": {"threshold": 0.12, "public_strength": 0.5}}, "'public_strength'"),
        (lambda m: {**m, "verify": {"threshold": 0.12, "dihedral": "yes"}}, "'dihedral'"),
    ],
)
def test_bad_manifests(tiny_package, tmp_path, edit, message):
    p = _copy(tiny_package[2], tmp_path)
    mp, _ = package_paths(p)
    mp.write_text(json.dumps(edit(json.loads(mp.read_text()))))
    with pytest.raises(AMIFError, match=message):
        load_package(p)


def test_the_mark_shift_and_texture_settings_are_read_from_the_manifest(tiny_package, tmp_path):
    p = _copy(tiny_package[2], tmp_path)
    assert load_package(p).shift == 0
    mp, _ = package_paths(p)
    m = json.loads(mp.read_text())
    mp.write_text(json.dumps({**m, "verify": {"threshold": 0.12, "shift": 2}}))
    assert load_package(p).shift == 2 and load_package(p).trace_strength == 0
    mp.write_text(json.dumps({**m, "verify": {"threshold": 0.12, "trace_strength": 0.06}}))
    assert load_package(p).trace_strength == 0.06 and not load_package(p).dihedral
    assert load_package(p).public_strength == 0
    mp.write_text(json.dumps({**m, "verify": {"threshold": 0.12, "public_strength": 0.05, "dihedral": True}}))
    assert load_package(p).public_strength == 0.05 and load_package(p).dihedral


def test_not_json_and_pickle_never_loaded(tmp_path):
    (tmp_path / "m.json").write_text("{")
    with pytest.raises(AMIFError, match="not readable JSON"):
        load_package(tmp_path / "m")
    net = torch.nn.Linear(2, 2)
    torch.save(net.state_dict(), tmp_path / "p.safetensors")  # a pickle posing as weights
    import hashlib

    h = hashlib.sha256((tmp_path / "p.safetensors").read_bytes()).hexdigest()
    (tmp_path / "p.json").write_text(
        json.dumps(
            {
                "format": "amif-model",
                "format_version": 1,
                "model_id": "x",
                "key_id": "y",
                "identifier": "X",
                "architecture": {"name": "AMIFNet"},
                "weights": "p.safetensors",
                "weights_sha256": h,
            }
        )
    )
    with pytest.raises(AMIFError, match="not a valid safetensors"):
        load_package(tmp_path / "p")


def _checkpoints(pkg, d, n=3):
    """n packages of one model whose parameters differ (as checkpoints of one run do), steps 100, 200, ..."""
    from amif.package import save_package

    paths = []
    for i in range(n):
        net = copy.deepcopy(pkg.net)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.1 * (i + 1))
        m = pkg.manifest
        paths.append(
            save_package(
                d / f"ck{i}",
                net,
                model_id=m["model_id"],
                key_id=m["key_id"],
                identifier=m["identifier"],
                verify=m["verify"],
                training={"steps": 100 * (i + 1), "seed": 0},
            )
        )
    return paths


def test_average_of_checkpoints_is_the_mean_of_their_weights(tiny_package, tmp_path):
    from amif.package import training_steps
    from amif_research.averaging import average_packages

    pkg, _, _ = tiny_package
    paths = _checkpoints(pkg, tmp_path)
    nets = [load_package(p).net for p in paths]
    out = average_packages(paths, tmp_path / "avg")
    avg = load_package(out)
    for name, p in avg.net.named_parameters():
        mean = sum(dict(n.named_parameters())[name] for n in nets) / len(nets)
        torch.testing.assert_close(p, mean)
        assert not torch.equal(p, dict(nets[0].named_parameters())[name])
    for name, b in avg.net.named_buffers():
        assert torch.equal(b, dict(nets[0].named_buffers())[name])
    m = avg.manifest
    assert (m["model_id"], m["key_id"], m["identifier"], m["verify"]) == (
        pkg.model_id,
        pkg.key_id,
        pkg.identifier,
        pkg.manifest["verify"],
    )
    assert m["training"]["steps"] == 300
    assert training_steps(m) == "300 training steps, weights averaged over steps 100/200/300"
    assert training_steps(pkg.manifest) == "? training steps"
    on = {"training": {"steps": 340, "init": {"weights_sha256": m["weights_sha256"], "training": m["training"]}}}
    assert training_steps(on) == "340 training steps (from 300 training steps, weights averaged over steps 100/200/300)"
    on["training"]["init"]["training"] = {"steps": 300}  # trained on from a plain package: nothing to add
    assert training_steps(on) == "340 training steps"
    assert m["training"]["averaged"] == [
        {"steps": 100 * (i + 1), "weights_sha256": read_manifest(p)[0]["weights_sha256"]} for i, p in enumerate(paths)
    ]


@pytest.mark.parametrize(
    "edit, message",
    [
        ("identifier", "differ in 'identifier'"),
        ("architecture", "differ in 'architecture'"),
        ("buffer", "fixed tensor"),
        ("one", "at least two"),
        ("twice", "given twice"),
    ],
)
def test_average_refuses_packages_of_different_models_and_writes_nothing(tiny_package, tmp_path, edit, message):
    from amif.network import AMIFNet, NetConfig
    from amif.package import save_package
    from amif_research.averaging import average_packages

    pkg, _, _ = tiny_package
    paths = _checkpoints(pkg, tmp_path, 2)
    m = pkg.manifest
    if edit == "identifier":
        save_package(
            tmp_path / "ck1",
            pkg.net,
            model_id=m["model_id"],
            key_id=m["key_id"],
            identifier="OTHER · MARK",
            verify=m["verify"],
            training={"steps": 5},
        )
    elif edit == "architecture":
        other = AMIFNet(NetConfig(**{**pkg.net.cfg.to_dict(), "c1": 6}))
        save_package(
            tmp_path / "ck1",
            other,
            model_id=m["model_id"],
            key_id=m["key_id"],
            identifier=m["identifier"],
            verify=m["verify"],
            training={"steps": 5},
        )
    elif edit == "buffer":
        net = copy.deepcopy(pkg.net)
        next(iter(net.buffers())).mul_(-1)
        save_package(
            tmp_path / "ck1",
            net,
            model_id=m["model_id"],
            key_id=m["key_id"],
            identifier=m["identifier"],
            verify=m["verify"],
            training={"steps": 5},
        )
    elif edit == "one":
        paths = paths[:1]
    elif edit == "twice":
        paths = [paths[0], paths[1], paths[0]]
    with pytest.raises(AMIFError, match=message):
        average_packages(paths, tmp_path / "avg")
    assert not list(tmp_path.glob("avg*"))
