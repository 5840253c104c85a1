"""Bounded resources: key files and manifests are read with a size cap and only from regular files
(a named pipe, a device, a huge sparse file or a folder is refused unread, quickly and without memory
growth); large 2D images go through the network in tiles (the one-piece result to float rounding,
bounded memory, the identifier kept); the Slicer adapter honours a late cancel and undoes its scene
changes on any exception.

Reads that could hang or exhaust memory run in a child process with a timeout and an address-space
cap, so a regression fails the test instead of hanging the suite or the machine."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import slicer
import vtk

import amif.fusion as fusion
import amif.inference as inference
from amif.errors import AMIFError, Cancelled
from amif.keys import generate_key, load_key
from amif.package import bundled_key_path, bundled_model_path, package_paths, read_manifest
from AMIFFusionLib import logic
from conftest import ROOT

GB = 1 << 30

CHILD = textwrap.dedent("""
    import json, resource, sys
    sys.path.insert(0, sys.argv[1])
    from amif.errors import AMIFError
    from amif.keys import load_key
    from amif.package import read_manifest
    what, path = sys.argv[2], sys.argv[3]
    if what.startswith("key_") or what.endswith("_label"):  # loaded before measuring
        from AMIFFusionLib import logic
    if what.endswith("_label"):
        from AMIFFusionLib import panel
    size = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize"))
    resource.setrlimit(resource.RLIMIT_AS, (size + (512 << 20), resource.RLIM_INFINITY))  # a runaway read fails
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {}
    try:
        if what == "key":
            load_key(path)
        elif what == "manifest":
            read_manifest(path)
        elif what == "key_state":
            out["state"] = logic.key_state(path).state
        elif what == "key_label":
            out["state"] = panel.key_label(path, "").state
        elif what == "model_label":
            out["state"] = panel.key_label("", path).state
    except AMIFError as e:
        out["error"] = str(e)
    except BaseException as e:  # MemoryError and the like: a failure of the bound
        out["crash"] = repr(e)[:300]
    out["grown"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    print(json.dumps(out))
""")


def in_child(what: str, path) -> dict:
    """Run one read (`what`: key, manifest, key_state, key_label, model_label) of `path` in a child
    process; its outcome, message and max-RSS growth (bytes). A hang is a failure after 60 s."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(ROOT / "AMIFFusion"), what, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"reading {path} ({what}) did not finish in 60 s: it waits (a named pipe?)")
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def special(tmp_path: Path, kind: str, name: str) -> Path:
    """A path named `name` that is a named pipe, a link to /dev/zero, a sparse 1 GB file or a folder."""
    path = tmp_path / name
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "sparse-1GB":
        with open(path, "wb") as f:
            f.truncate(GB)
    elif kind == "folder":
        path.mkdir()
    return path


KINDS = {  # kind -> what the message says
    "fifo": "is not a regular file (a named pipe)",
    "dev-zero": "is not a regular file (a character device)",
    "sparse-1GB": "is too large",
    "folder": "is not a regular file (a folder)",
}
needs_posix = pytest.mark.skipif(
    not hasattr(os, "mkfifo") or not Path("/proc/self/status").exists(),
    reason="named pipes, /dev/zero and /proc are POSIX (Linux) things",
)


# ---------------------------------------------------------------- key files and manifests


@needs_posix
@pytest.mark.parametrize("kind", list(KINDS))
def test_a_special_or_huge_key_file_is_refused_unread(tmp_path, kind):
    r = in_child("key", special(tmp_path, kind, "lab.amifkey"))
    assert "crash" not in r, r
    assert r["error"].startswith("Key file lab.amifkey ") and KINDS[kind] in r["error"], r
    assert r["grown"] < 32 << 20, r  # nothing of it was read into memory


@needs_posix
@pytest.mark.parametrize("kind", list(KINDS))
def test_a_special_or_huge_manifest_is_refused_unread(tmp_path, kind):
    r = in_child("manifest", special(tmp_path, kind, "model.json"))
    assert "crash" not in r, r
    assert r["error"].startswith("Model package manifest model.json ") and KINDS[kind] in r["error"], r
    assert r["grown"] < 32 << 20, r


@needs_posix
@pytest.mark.parametrize("kind", ["fifo", "sparse-1GB"])
def test_the_panel_shows_such_files_as_states_not_exceptions(tiny_package, tmp_path, kind):
    key = special(tmp_path, kind, "lab.amifkey")
    for what in ("key_state", "key_label"):  # key_state uses the bundled manifest; the label too
        r = in_child(what, key)
        assert r.get("state") == "unreadable" and "error" not in r and "crash" not in r, (what, r)
    r = in_child("model_label", special(tmp_path, kind, "model.json"))
    assert r.get("state") == "model-error" and "crash" not in r, r
    assert r["grown"] < 32 << 20, r


def test_key_files_over_the_cap_are_refused_and_the_bundled_files_fit_well_within_it(tmp_path):
    from amif.keys import KEY_FILE_LIMIT
    from amif.package import MANIFEST_LIMIT

    assert KEY_FILE_LIMIT == 4096 and MANIFEST_LIMIT == 1 << 20
    key = bundled_key_path()
    assert key.stat().st_size * 8 < KEY_FILE_LIMIT and bundled_model_path().stat().st_size * 32 < MANIFEST_LIMIT
    assert load_key(key).key_id == read_manifest(bundled_model_path())[0]["key_id"]
    link = tmp_path / "linked.amifkey"
    link.symlink_to(key)  # a link to a regular file is read
    assert load_key(link).key_id == load_key(key).key_id
    padded = tmp_path / "padded.amifkey"  # a valid key padded with spaces (valid JSON) past the cap
    padded.write_text(key.read_text() + " " * KEY_FILE_LIMIT)
    with pytest.raises(AMIFError, match="padded.amifkey is too large: over 4096 bytes"):
        load_key(padded)
    manifest, _ = package_paths(tmp_path / "big")
    manifest.write_text(bundled_model_path().read_text() + " " * MANIFEST_LIMIT)
    with pytest.raises(AMIFError, match="big.json is too large"):
        read_manifest(manifest)
    with pytest.raises(AMIFError, match="too long for a key file"):  # save_key cannot write what load_key refuses
        generate_key("m", "L" * KEY_FILE_LIMIT)


@needs_posix
def test_a_file_reporting_a_wrong_size_is_read_no_further_than_the_cap():
    from amif.reading import read_small_file

    assert os.stat("/proc/self/status").st_size == 0  # /proc reports 0 bytes, and holds more than 100
    with pytest.raises(AMIFError, match="status file is too large: over 100 bytes"):
        read_small_file("/proc/self/status", 100, "The status file")
    assert b"VmSize" in read_small_file("/proc/self/status", 1 << 16, "The status file")


# ---------------------------------------------------------------- large 2D images in tiles


def _pair(h, w, seed=0):
    """Smooth structured sources (blobs and edges), float32 in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    a = sum(
        rng.uniform(0.3, 1)
        * np.exp(-((yy - rng.uniform(0, 1)) ** 2 + (xx - rng.uniform(0, 1)) ** 2) / rng.uniform(0.005, 0.05))
        for _ in range(8)
    )
    b = (np.sin(17 * xx + 5 * yy) > 0.3) * 0.6 + 0.3 * a
    return (a / a.max()).astype(np.float32), np.clip(b, 0, 1).astype(np.float32)


TOLERANCE = 1e-5  # tiled vs one-piece, absolute, on [0, 1] outputs (measured on the CPU: bitwise equal)


def test_tiles_give_the_one_piece_result(tiny_package):
    pkg, key, _ = tiny_package
    a, b = _pair(301, 263)  # neither side a multiple of the tile or of 4: partial tiles at both edges
    for code in (load_key(key).code(), np.zeros(256, np.float32)):
        one = inference.run_network(pkg, a[None], b[None], code)[0]
        for tile, margin in ((64, 32), (128, 24)):
            tiled = inference.run_network_tiled(pkg, a, b, code, tile=tile, margin=margin)
            assert tiled.shape == one.shape and tiled.dtype == np.float32
            assert np.abs(tiled - one).max() <= TOLERANCE, (tile, margin)
    # without context the tiles' borders differ: the margin is what makes them equal
    assert np.abs(inference.run_network_tiled(pkg, a, b, code, tile=64, margin=0) - one).max() > 1e-3


def test_fuse_images_tiles_images_over_the_budget(tiny_package, monkeypatch):
    pkg, key, _ = tiny_package
    a, b = _pair(200, 180, seed=2)
    rgb = np.stack([b, 1 - b, a], -1)
    one = [fusion.fuse_images(a, src, pkg, k) for src in (b, rgb) for k in (key, None)]
    calls = []
    tiled_run = inference.run_network_tiled
    monkeypatch.setattr(fusion, "TILE_PIXELS", 64 * 64)
    monkeypatch.setattr(inference, "TILE", 64)
    monkeypatch.setattr(fusion, "run_network_tiled", lambda *args, **kw: calls.append(1) or tiled_run(*args, **kw))
    tiled = [fusion.fuse_images(a, src, pkg, k) for src in (b, rgb) for k in (key, None)]
    assert len(calls) == 4
    for t, o in zip(tiled, one):
        assert t.fused.shape == o.fused.shape and np.abs(t.fused - o.fused).max() <= TOLERANCE
        assert t.verdict.state == o.verdict.state and abs(t.verdict.score - o.verdict.score) < 1e-4
    small = fusion.fuse_images(a[:60, :60], b[:60, :60], pkg, key)  # under the budget: one piece, as before
    assert len(calls) == 4
    np.testing.assert_array_equal(
        small.fused, inference.run_network(pkg, a[None, :60, :60], b[None, :60, :60], load_key(key).code())[0]
    )


def test_tiled_outputs_of_the_bundled_model_keep_the_identifier(monkeypatch):
    import torch
    import torch.nn.functional as F

    from amif.package import load_package
    from amif.sample import sample_slices

    pkg = load_package(bundled_model_path())

    def up(x):
        return F.interpolate(torch.from_numpy(x)[None, None], size=(384, 448), mode="bilinear", align_corners=False)[
            0, 0
        ].numpy()

    a, b = (up(s) for s in sample_slices())
    monkeypatch.setattr(fusion, "TILE_PIXELS", 128 * 128)
    monkeypatch.setattr(inference, "TILE", 128)  # 12 tiles, identifier strokes cut across tile borders
    keyed = fusion.fuse_images(a, b, pkg, bundled_key_path(), device="cpu")
    unkeyed = fusion.fuse_images(a, b, pkg, None, device="cpu")
    assert unkeyed.verdict.state == "marked" and keyed.verdict.state == "clean", (unkeyed.verdict, keyed.verdict)
    one = inference.run_network(pkg, a[None], b[None], np.zeros(256, np.float32))[0]
    assert np.abs(unkeyed.fused - one).max() <= TOLERANCE


TILED_MEMORY = textwrap.dedent("""
    import resource, sys
    sys.path.insert(0, sys.argv[1])
    import numpy as np, torch
    import amif.fusion as fusion
    import amif.inference as inference
    from amif.network import AMIFNet, NetConfig
    from amif.package import ModelPackage
    torch.manual_seed(0)
    net = AMIFNet(NetConfig(c1=4, c2=8, c3=8, mem_channels=4, mem_size=32, key_features=64, key_hidden=16)).eval()
    pkg = ModelPackage({"model_id": "m", "key_id": "k", "identifier": "TEST"}, net)
    n = int(sys.argv[2])
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    inference.run_network_tiled(pkg, a[:64, :64], a[:64, :64], np.zeros(256, np.float32))  # torch's set-up not counted
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    inference.run_network_tiled(pkg, a, a, np.zeros(256, np.float32))
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
""")


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KB on Linux")
def test_tiled_memory_does_not_grow_with_the_image():
    """The network's memory is one tile's: a 2048 x 2048 image grows the process by about its output
    array (16 MB) plus one tile's pass, where the one-piece pass of the same network grows it by ~790 MB."""
    done = subprocess.run(
        [sys.executable, "-c", TILED_MEMORY, str(ROOT / "AMIFFusion"), "2048"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) < 250 << 20


def test_the_identifier_mask_of_a_large_image_is_rendered_in_bands():
    """verify draws the identifier at 4x supersampling: for a 2048 x 2048 image a whole canvas would
    be 268 MB; in bands the peak stays near the 16 MB output (the result is unchanged: test_fusion)."""
    import tracemalloc

    from amif.identifier import identifier_mask

    tracemalloc.start()
    try:
        mask = identifier_mask("TEST · MARK", 2048, 2048)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert mask.shape == (2048, 2048) and mask.max() > 0.99
    assert peak < 64 << 20, peak


# ---------------------------------------------------------------- the Slicer adapter


def _add_volume(scene, arr, name):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(np.diag([1.0, 1.0, 2.0, 1.0])))
    slicer.util.updateVolumeFromArray(node, arr)
    return node


def _blobs(shape, seed):
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    return sum(
        rng.uniform(50, 200)
        * np.exp(
            -((k - rng.uniform(-0.5, 0.5)) ** 2 + (j - rng.uniform(-0.5, 0.5)) ** 2 + (i - rng.uniform(-0.5, 0.5)) ** 2)
            / 0.1
        )
        for _ in range(5)
    ).astype(np.float32)


SHAPE = (12, 32, 40)


def _ids(scene):
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def _matrix(node):
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)


@pytest.fixture
def volumes(tiny_package):
    scene = slicer.vtkMRMLScene()
    a = _add_volume(scene, _blobs(SHAPE, 0), "mri")
    b = _add_volume(scene, _blobs(SHAPE, 1), "pet")
    existing = _add_volume(scene, np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE), "existing")
    existing.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(np.diag([3.0, 2.0, 1.0, 1.0])))
    existing.SetAttribute("Mine", "kept")
    existing.CreateDefaultDisplayNodes()
    existing.GetDisplayNode().AutoWindowLevelOff()
    existing.GetDisplayNode().SetWindowLevel(500.0, 250.0)
    return scene, a, b, existing, tiny_package[2] / "tiny.json"


def _state(node):
    d = node.GetDisplayNode()
    return (
        slicer.util.arrayFromVolume(node).copy(),
        _matrix(node),
        {k: node.GetAttribute(k) for k in node.GetAttributeNames()},
        (d.GetWindow(), d.GetLevel()),
    )


def _assert_unchanged(scene, ids, existing, before):
    assert _ids(scene) == ids
    after = _state(existing)
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1], before[1])
    assert after[2:] == before[2:]


def test_a_cancel_during_the_last_batch_writes_nothing(volumes):
    scene, a, b, existing, model = volumes
    batches = []
    logic.fuse(a, b, None, model_path=model, progress=lambda done, total: batches.append(done))
    assert len(batches) >= 2 and batches[-1] == SHAPE[0]
    ids, before, calls = _ids(scene), _state(existing), []

    def cancel():  # True only once every batch has run: pressed during the last one
        calls.append(1)
        return len(calls) > len(batches)

    for out in (None, existing):
        calls.clear()
        with pytest.raises(Cancelled):
            logic.fuse(a, b, out, model_path=model, cancel=cancel)
        assert len(calls) == len(batches) + 1
        _assert_unchanged(scene, ids, existing, before)


class Boom(Exception):
    pass


def test_a_callback_raising_after_the_engine_leaves_the_scene_unchanged(volumes):
    scene, a, b, existing, model = volumes
    ids, before = _ids(scene), _state(existing)

    def log(text):
        if text.startswith("Output"):  # the message after the node was written
            raise Boom(text)

    for out in (None, existing):
        with pytest.raises(Boom):
            logic.fuse(a, b, out, model_path=model, log=log)
        _assert_unchanged(scene, ids, existing, before)
    assert existing.GetAttribute("AMIF.Watermark") is None


@pytest.mark.parametrize("where", ["voxels", "attributes", "show"])
def test_a_failed_write_into_a_chosen_output_restores_it(volumes, monkeypatch, where):
    scene, a, b, existing, model = volumes
    view = scene.AddNode(slicer.vtkMRMLSliceCompositeNode())
    view.SetBackgroundVolumeID(a.GetID())
    ids, before = _ids(scene), _state(existing)
    real_update = slicer.util.updateVolumeFromArray

    def update(node, arr):  # writes the voxels, then fails
        real_update(node, arr)
        if where == "voxels":
            raise Boom("disk full")

    def show(background, fit):  # shows the output, then fails
        view.SetBackgroundVolumeID(background.GetID())
        raise Boom("no views")

    monkeypatch.setattr(slicer.util, "updateVolumeFromArray", update)
    if where == "attributes":  # a KeyError after the first attributes were set
        monkeypatch.setattr(logic, "ATTRIBUTES", {**logic.ATTRIBUTES, "AMIF.Broken": "no such key"})
    if where == "show":
        monkeypatch.setattr(slicer, "app", object(), raising=False)
        monkeypatch.setattr(slicer.util, "setSliceViewerLayers", show)
    for out in (existing, None):  # a new output node is removed again, display node and all
        with pytest.raises((Boom, KeyError)):
            logic.fuse(a, b, out, model_path=model)
        _assert_unchanged(scene, ids, existing, before)
        assert existing.GetAttribute("AMIF.ModelId") is None and existing.GetAttribute("Mine") == "kept"
        assert view.GetBackgroundVolumeID() == a.GetID()
