"""The device fusion runs on (amif.device, `device=` of fuse_images/fuse_volumes, `--device`, the adapter)
and the batch chosen for it. CPU only: a GPU is simulated where the logic is pure, never needed."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from amif import fusion, inference
from amif.cli import build_parser, main
from amif.device import check_device_name, full_float32, mps_available, resolve_device
from amif.errors import AMIFError
from amif.fusion import (
    CPU_BATCH,
    GPU_MEMORY_SAFETY,
    GPU_RESERVE,
    MAX_GPU_BATCH,
    choose_batch,
    fuse_images,
    fuse_volumes,
    slice_bytes,
)
from amif.inference import network_on
from conftest import load_tool

SHAPE = (12, 32, 40)  # k, j, i: 12 axial slices of 32 x 40


def _volume(seed: int):
    img = sitk.GetImageFromArray(np.random.default_rng(seed).random(SHAPE, dtype=np.float32) * 100)
    img.SetSpacing((1.0, 1.0, 2.0))
    return img


def _state(net) -> dict:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _same_state(net, state) -> bool:
    now = net.state_dict()
    return now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)


@pytest.fixture
def no_cuda(monkeypatch):
    """torch sees no CUDA GPU, whatever the machine has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch sees two CUDA GPUs (only the calls resolve_device makes are simulated)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


# ---------------------------------------------------------------- resolving a device


def test_auto_resolves_to_what_torch_sees():
    expected = "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device().type == expected  # "auto" is the default
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_auto_prefers_cuda_then_mps(fake_cuda, monkeypatch):
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)  # one GPU, one name
    assert resolve_device(" CUDA:1 ") == torch.device("cuda", 1)
    with pytest.raises(AMIFError, match="CUDA GPU 2 was requested but torch sees 2"):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    assert resolve_device("mps") == torch.device("mps")


def test_unavailable_accelerators_are_one_clear_error(no_cuda, monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(AMIFError, match="CUDA was requested but torch sees no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(AMIFError, match="CUDA was requested"):
        resolve_device("cuda:0")
    with pytest.raises(AMIFError, match="MPS was requested"):
        resolve_device("mps")
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize("bad", ["gpu", "cuda:", "cuda:x", "cuda 0", "", "tpu", "cpu,cuda", 0, None])
def test_unknown_device_names(bad):
    with pytest.raises(AMIFError, match="Unknown device"):
        check_device_name(bad)
    with pytest.raises(AMIFError, match="Unknown device"):
        resolve_device(bad)


# ---------------------------------------------------------------- fusion on a device


def test_cpu_gives_the_default_output(tiny_package):
    pkg, key, _ = tiny_package
    a, b = _volume(0), _volume(1)
    default, cpu = fuse_volumes(a, b, pkg, key), fuse_volumes(a, b, pkg, key, device="cpu")
    assert cpu.device == "cpu" and default.device == str(resolve_device("auto"))
    exact = resolve_device("auto").type == "cpu"
    x, y = sitk.GetArrayFromImage(default.image), sitk.GetArrayFromImage(cpu.image)
    assert x.dtype == y.dtype == np.float32
    np.testing.assert_allclose(x, y, rtol=0, atol=0 if exact else 1e-4)
    assert default.verdict.state == cpu.verdict.state
    rng = np.random.default_rng(2)
    ia, ib = rng.random((40, 36)), rng.random((40, 36, 3))
    x, y = fuse_images(ia, ib, pkg, key).fused, fuse_images(ia, ib, pkg, key, device="cpu").fused
    np.testing.assert_allclose(x, y, rtol=0, atol=0 if exact else 1e-4)
    assert fuse_images(ia, ib, pkg, device="cpu").device == "cpu"


def test_cuda_without_a_gpu_fails_first_and_changes_nothing(tiny_package, no_cuda, tmp_path, capsys):
    pkg, key, d = tiny_package
    state = _state(pkg.net)
    seen = []
    with pytest.raises(AMIFError, match="CUDA was requested but torch sees no CUDA GPU"):
        fuse_volumes(_volume(0), _volume(1), pkg, key, progress=lambda n, total: seen.append(n), device="cuda")
    with pytest.raises(AMIFError, match="CUDA was requested"):  # before the inputs are even looked at
        fuse_volumes(None, None, pkg, device="cuda")
    with pytest.raises(AMIFError, match="CUDA was requested"):
        fuse_images(np.zeros((20, 20)), np.zeros((20, 20)), pkg, device="cuda:0")
    assert seen == []
    assert _same_state(pkg.net, state) and all(p.device.type == "cpu" for p in pkg.net.parameters())
    assert pkg.net not in inference._DEVICE_NETS
    sitk.WriteImage(_volume(0), str(tmp_path / "a.nrrd"))
    sitk.WriteImage(_volume(1), str(tmp_path / "b.nrrd"))
    out = tmp_path / "fused.nrrd"
    capsys.readouterr()
    args = ["fuse", str(tmp_path / "a.nrrd"), str(tmp_path / "b.nrrd"), "-o", str(out), "-q"]
    assert main([*args, "-m", str(d / "tiny"), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "CUDA was requested" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main([*args, "-m", str(tmp_path / "no-such-model"), "--device", "cuda"]) == 2  # before the model
    assert "CUDA was requested" in capsys.readouterr().err
    assert not out.exists()


def test_network_copy_per_device_leaves_the_package_alone(tiny_package):
    pkg, _, _ = tiny_package
    net = pkg.net
    assert network_on(pkg, torch.device("cpu")) is net  # where it already is: the net itself
    meta = torch.device("meta")  # a second device every torch has: the copy's logic without a GPU
    state = _state(net)
    moved = network_on(pkg, meta)
    assert moved is not net and next(moved.parameters()).device == meta
    assert not any(p.requires_grad for p in moved.parameters()) and not moved.training
    assert network_on(pkg, meta) is moved  # kept
    assert _same_state(net, state) and next(net.parameters()).device.type == "cpu" and pkg.net is net
    first = next(net.parameters())
    try:
        with torch.no_grad():
            first.add_(1.0)  # an in-place edit of the package's net...
        again = network_on(pkg, meta)
        assert again is not moved and network_on(pkg, meta) is again  # ...makes a new copy, kept in turn
    finally:
        with torch.no_grad():
            first.copy_(state[next(iter(state))])
        inference._DEVICE_NETS.pop(net, None)
    assert _same_state(net, state)


def test_full_float32_only_on_cuda_and_restored():
    b = torch.backends
    new_api = hasattr(b.cuda.matmul, "fp32_precision") and hasattr(getattr(b.cudnn, "conv", None), "fp32_precision")

    def flags():
        if new_api:
            return b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision
        return b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32

    before = flags()
    with full_float32(torch.device("cpu")):
        assert flags() == before
    with pytest.raises(RuntimeError, match="inside"):
        with full_float32(torch.device("cuda", 0)):  # only flags are set: no GPU is touched
            assert flags() == (("ieee", "ieee") if new_api else (False, False))
            raise RuntimeError("inside")
    assert flags() == before


# ---------------------------------------------------------------- batch


def test_batch_on_the_cpu(tiny_package):
    assert choose_batch("cpu", 256, 256) == CPU_BATCH
    assert choose_batch(torch.device("cpu"), 256, 256, free_bytes=1 << 40) == CPU_BATCH  # memory is no matter
    assert 1 <= choose_batch("cpu", 1024, 1024) <= choose_batch("cpu", 512, 512) <= CPU_BATCH
    assert choose_batch("cuda", 256, 256, free_bytes=None) == CPU_BATCH  # free memory unknown
    pkg, _, _ = tiny_package
    seen = []
    fuse_volumes(_volume(0), _volume(1), pkg, progress=lambda done, n: seen.append(done), device="cpu")
    assert seen[0] == choose_batch("cpu", *SHAPE[1:]) and seen[-1] == SHAPE[0]
    seen.clear()
    fuse_volumes(_volume(0), _volume(1), pkg, progress=lambda done, n: seen.append(done), device="cpu", batch=5)
    assert seen == [5, 10, 12]  # an explicit batch wins


def test_batch_on_a_gpu_fits_free_memory():
    per = slice_bytes(256, 256)
    frees = [0, GPU_RESERVE, *(int(GPU_RESERVE + k * per) for k in (1, 2, 3, 5, 9, 17, 40, 100, 300)), 1 << 44]
    batches = [choose_batch("cuda:0", 256, 256, f) for f in frees]
    assert batches == sorted(batches)  # monotone in free memory
    assert min(batches) >= 1 and max(batches) == MAX_GPU_BATCH  # at least one slice; capped
    assert len(set(batches)) > 3  # and it does follow the memory between the two
    for f, n in zip(frees, batches):
        if 1 < n < MAX_GPU_BATCH:
            assert GPU_RESERVE + n * per * GPU_MEMORY_SAFETY <= f < GPU_RESERVE + (n + 1) * per * GPU_MEMORY_SAFETY
    free = GPU_RESERVE + 20 * per * GPU_MEMORY_SAFETY
    assert choose_batch("cuda", 512, 512, free) < choose_batch("cuda", 256, 256, free)  # larger slices, fewer
    assert choose_batch("cuda", 256, 256, free, per_slice=2 * per) < choose_batch("cuda", 256, 256, free)
    assert choose_batch(torch.device("mps"), 256, 256, free) == choose_batch("cuda", 256, 256, free)
    assert choose_batch("cuda", 256, 256, 1 << 44, batch=3) == 3  # an explicit batch wins


def test_slice_estimate_scales_and_matches_the_bundled_architecture():
    from amif.network import NetConfig
    from amif.package import bundled_model_path, read_manifest

    assert slice_bytes(512, 512) == pytest.approx(4 * slice_bytes(256, 256))
    bundled = NetConfig.from_dict(read_manifest(bundled_model_path())[0]["architecture"])
    assert fusion._width(bundled) == fusion.REFERENCE_WIDTH  # SLICE_BYTES was measured for this architecture
    assert slice_bytes(256, 256, bundled) == slice_bytes(256, 256)
    wide = NetConfig.from_dict({**bundled.to_dict(), "decoder_width": 2 * bundled.decoder_width})
    assert slice_bytes(256, 256, wide) > slice_bytes(256, 256)
    assert slice_bytes(256, 256, NetConfig(c1=4, mem_channels=4)) == slice_bytes(256, 256)  # never below


# ---------------------------------------------------------------- command line, adapter, benchmark


def test_cli_device(tiny_package, tmp_path, capsys):
    _, _, d = tiny_package
    sitk.WriteImage(_volume(0), str(tmp_path / "a.nrrd"))
    sitk.WriteImage(_volume(1), str(tmp_path / "b.nrrd"))
    out = tmp_path / "fused.nrrd"
    args = ["fuse", str(tmp_path / "a.nrrd"), str(tmp_path / "b.nrrd"), "-o", str(out), "-m", str(d / "tiny"), "-q"]
    assert main([*args, "--device", "cpu"]) == 0
    assert out.stat().st_size > 0 and "fused on cpu" in capsys.readouterr().out
    ref = fuse_volumes(_volume(0), _volume(1), tiny_package[0], device="cpu").image
    np.testing.assert_allclose(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), sitk.GetArrayFromImage(ref), atol=1e-6)
    with pytest.raises(SystemExit) as e:
        main([*args, "--device", "gpu"])
    assert e.value.code == 2 and "Unknown device 'gpu'" in capsys.readouterr().err
    parser = build_parser()
    assert parser.parse_args(["fuse", "a", "b", "-o", "c"]).device == "auto"
    assert parser.parse_args(["demo", "--device", "CUDA:1"]).device == "cuda:1"
    assert parser.parse_args(["demo"]).device == "auto"


def test_adapter_fuse_takes_a_device(tiny_package, no_cuda):
    import slicer  # slicer-core: a missing wheel must fail loudly, not skip

    from AMIFFusionLib import logic

    _, key, d = tiny_package
    scene = slicer.vtkMRMLScene()
    nodes = []
    for seed, name in ((0, "mri"), (1, "pet")):
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        slicer.util.updateVolumeFromArray(node, np.random.default_rng(seed).random(SHAPE).astype(np.float32) * 100)
        nodes.append(node)
    model = d / "tiny.json"
    before = scene.GetNumberOfNodes()
    with pytest.raises(AMIFError, match="CUDA was requested"):
        logic.fuse(*nodes, key_path=key, model_path=model, device="cuda")
    assert scene.GetNumberOfNodes() == before  # the scene is left as it was
    cpu = logic.fuse(*nodes, key_path=key, model_path=model, device="cpu")
    default = logic.fuse(*nodes, key_path=key, model_path=model)
    assert cpu.key.state == "match" and cpu.verdict.state == default.verdict.state
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(cpu.node), slicer.util.arrayFromVolume(default.node))


def test_benchmark_gpu_line_without_a_gpu(tiny_package, no_cuda, capsys):
    tool = load_tool("benchmark")
    g = tool.gpu_comparison(tiny_package[0])
    assert g["device"] == "cpu" and g["skipped"] and "ms_per_slice_gpu" not in g
    assert "skipped" in tool.gpu_line(g) and g["skipped"] in tool.gpu_line(g)
    threads = torch.get_num_threads()
    try:
        tool.main(["--gpu-only", "-m", str(tiny_package[2] / "tiny")])
    finally:
        torch.set_num_threads(threads)
    assert json.loads(capsys.readouterr().out) == g
