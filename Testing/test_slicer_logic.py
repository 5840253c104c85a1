"""AMIFFusionLib against real MRML (the `slicer-core` wheel: scene, volume, display and transform
nodes; no qt, no application). Synthetic volumes use the tiny model for speed; the key states and
the equality with `amif fuse` use the bundled model on the bundled sample."""

import math

import numpy as np
import pytest
import slicer  # slicer-core: a missing wheel must fail loudly, not skip
import vtk

from amif.errors import AMIFError, Cancelled
from amif.keys import generate_key, save_key
from AMIFFusionLib import dependencies, logic, sampledata
from conftest import ROOT

SAMPLE = ROOT / "AMIFFusion" / "Resources" / "SampleData"
MODELS = ROOT / "AMIFFusion" / "Resources" / "Models"


def matrix(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), angle=0.0) -> np.ndarray:
    """IJK-to-RAS: rotation by `angle` about S, then spacing per axis, then origin."""
    c, s = math.cos(angle), math.sin(angle)
    m = np.eye(4)
    m[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag(spacing)
    m[:3, 3] = origin
    return m


def add_volume(scene, arr, name, ijk_to_ras=None, cls=None):
    cls = cls or ("vtkMRMLVectorVolumeNode" if arr.ndim == 4 else "vtkMRMLScalarVolumeNode")
    node = scene.AddNewNodeByClass(cls, name)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(matrix() if ijk_to_ras is None else ijk_to_ras))
    slicer.util.updateVolumeFromArray(node, arr)
    return node


def read_volume(scene, path):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", path.stem)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    return node


def ijk_to_ras(node):
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)


def snapshot(scene):
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def blobs(shape, seed):
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    vol = np.zeros(shape, np.float32)
    for _ in range(6):
        c, r = rng.uniform(-0.6, 0.6, 3), rng.uniform(0.2, 0.5)
        vol += rng.uniform(50, 200) * np.exp(-((k - c[0]) ** 2 + (j - c[1]) ** 2 + (i - c[2]) ** 2) / r**2)
    return vol


SHAPE = (12, 32, 40)  # k, j, i: 12 axial slices of 32 x 40


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture
def tiny(tiny_package):
    pkg, key_path, folder = tiny_package
    return folder / "tiny.json", key_path


def test_geometry_attributes_and_display(scene, tiny):
    model, key = tiny
    m = matrix((1.2, 0.9, 2.5), (-20.0, 13.0, 4.0), angle=0.3)
    a = add_volume(scene, blobs(SHAPE, 0), "mri", m)
    b = add_volume(scene, blobs(SHAPE, 1), "pet", m)
    a.CreateDefaultDisplayNodes()
    a.GetDisplayNode().AutoWindowLevelOff()
    a.GetDisplayNode().SetWindowLevel(100.0, 60.0)
    seen = []
    fused = logic.fuse(a, b, key_path=key, model_path=model, progress=lambda d, n: seen.append((d, n)))
    out = fused.node
    assert out.IsA("vtkMRMLScalarVolumeNode") and out.GetScene() is scene
    np.testing.assert_allclose(ijk_to_ras(out), m)
    assert slicer.util.arrayFromVolume(out).shape == SHAPE
    assert fused.windows[0] == (10.0, 110.0)  # the display window of the first volume
    assert seen[-1] == (SHAPE[0], SHAPE[0])
    attrs = {k: out.GetAttribute(k) for k in logic.ATTRIBUTES}
    assert attrs["AMIF.ModelId"] == "test-model" and attrs["AMIF.KeyState"] == "match"
    assert attrs["AMIF.KeyId"] == fused.key.key_id and attrs["AMIF.Watermark"] == fused.verdict.state
    assert attrs["AMIF.Score"] == f"{fused.verdict.score:.4f}"
    secret = (key.read_text().split('"secret": "')[1]).split('"')[0]
    assert all(secret not in out.GetAttribute(k) for k in out.GetAttributeNames())
    d = out.GetDisplayNode()
    assert d is not None and (d.GetWindow(), d.GetLevel()) == (1.0, 0.5)


def test_resampling_matches_a_pre_shifted_array(scene, tiny):
    model, _ = tiny
    mri, pet = blobs(SHAPE, 2), blobs(SHAPE, 3)
    pet[..., :3] = pet.min()  # the first grid's voxels outside the moved volume get its minimum
    shifted = np.full_like(pet, pet.min())
    shifted[..., :-3] = pet[..., 3:]
    m = matrix((1.5, 1.0, 2.0), (5.0, -7.0, 1.0))
    a = add_volume(scene, mri, "mri", m)
    same_grid = add_volume(scene, pet, "pet", m)
    m_shift = m.copy()
    m_shift[:3, 3] += 3 * m[:3, 0]  # origin moved by three voxels along i
    moved = add_volume(scene, shifted, "pet-moved", m_shift)
    for node in (same_grid, moved):  # one window: the moved volume's own would leave out its fill (test_coverage)
        node.CreateDefaultDisplayNodes()
        node.GetDisplayNode().AutoWindowLevelOff()
        node.GetDisplayNode().SetWindowLevelMinMax(float(pet.min()), float(pet.max()))
    ref = logic.fuse(a, same_grid, model_path=model)
    out = logic.fuse(a, moved, model_path=model)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(out.node), slicer.util.arrayFromVolume(ref.node), atol=1e-5)


def test_parent_transform_hardened_into_sampling_only(scene, tiny):
    model, _ = tiny
    mri, pet = blobs(SHAPE, 4), blobs(SHAPE, 5)
    m = matrix((1.0, 1.0, 2.0), (0.0, 0.0, 0.0), angle=-0.2)
    a = add_volume(scene, mri, "mri", m)
    ref = logic.fuse(a, add_volume(scene, pet, "pet", m), model_path=model)
    # The same PET stored 10 mm to the left and 4 mm down, put back in place by a linear transform.
    local = m.copy()
    local[:3, 3] -= (10.0, 0.0, 4.0)
    b = add_volume(scene, pet, "pet-local", local)
    t = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    t.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix(origin=(10.0, 0.0, 4.0))))
    b.SetAndObserveTransformNodeID(t.GetID())
    before = (ijk_to_ras(b), slicer.util.arrayFromVolume(b).copy(), b.GetTransformNodeID())
    out = logic.fuse(a, b, model_path=model)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(out.node), slicer.util.arrayFromVolume(ref.node), atol=1e-5)
    np.testing.assert_array_equal(ijk_to_ras(b), before[0])
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(b), before[1])
    assert b.GetTransformNodeID() == before[2] and t.GetMatrixTransformToParent().GetElement(0, 3) == 10.0


def test_output_follows_first_volume_transform(scene, tiny):
    model, _ = tiny
    m = matrix((1.0, 1.0, 2.0))
    a = add_volume(scene, blobs(SHAPE, 6), "mri", m)
    b = add_volume(scene, blobs(SHAPE, 7), "pet", m)
    t = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "both")
    t.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix(origin=(3.0, 2.0, 1.0), angle=0.4)))
    a.SetAndObserveTransformNodeID(t.GetID())
    b.SetAndObserveTransformNodeID(t.GetID())
    out = logic.fuse(a, b, model_path=model).node
    assert out.GetTransformNodeID() == t.GetID()
    np.testing.assert_allclose(ijk_to_ras(out), m)


def test_colour_second_volume(scene, tiny):
    model, _ = tiny
    a = add_volume(scene, blobs(SHAPE, 8), "mri")
    rgb = np.stack([blobs(SHAPE, s) for s in (9, 10, 11)], -1)
    b = add_volume(scene, np.clip(rgb, 0, 255).astype(np.uint8), "pet-rgb")
    out = logic.fuse(a, b, model_path=model).node
    assert out.IsA("vtkMRMLVectorVolumeNode")
    arr = slicer.util.arrayFromVolume(out)
    assert arr.shape == SHAPE + (3,) and arr.dtype == np.uint8


def failing_cases(scene, tmp_path, tiny):
    model, _ = tiny
    a = add_volume(scene, blobs(SHAPE, 12), "mri")
    b = add_volume(scene, blobs(SHAPE, 13), "pet")
    nan = blobs(SHAPE, 14)
    nan[3, 4, 5] = np.nan
    other = tmp_path / "other.amifkey"
    save_key(generate_key("another-model", "Someone"), other)
    damaged = tmp_path / "damaged.amifkey"
    damaged.write_text("{not json")
    far = matrix(origin=(1000.0, 0.0, 0.0))
    grid = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
    warped = add_volume(scene, blobs(SHAPE, 15), "warped")
    warped.SetAndObserveTransformNodeID(grid.GetID())
    rgb_out = add_volume(scene, np.zeros(SHAPE + (3,), np.uint8), "rgb-out")
    return {
        "NaN": dict(first_node=a, second_node=add_volume(scene, nan, "nan"), model_path=model),
        "no overlap": dict(first_node=a, second_node=add_volume(scene, blobs(SHAPE, 16), "far", far), model_path=model),
        "key of another model": dict(first_node=a, second_node=b, key_path=other, model_path=model),
        "damaged key": dict(first_node=a, second_node=b, key_path=damaged, model_path=model),
        "missing model": dict(first_node=a, second_node=b, model_path=tmp_path / "none.json"),
        "non-linear transform": dict(first_node=a, second_node=warped, model_path=model),
        "grey into a colour output": dict(first_node=a, second_node=b, output_node=rgb_out, model_path=model),
        "output is an input": dict(first_node=a, second_node=b, output_node=b, model_path=model),
    }


@pytest.mark.parametrize(
    "case",
    [
        "NaN",
        "no overlap",
        "key of another model",
        "damaged key",
        "missing model",
        "non-linear transform",
        "grey into a colour output",
        "output is an input",
    ],
)
def test_errors_leave_the_scene_unchanged(scene, tmp_path, tiny, case):
    kwargs = failing_cases(scene, tmp_path, tiny)[case]
    existing = kwargs.get("output_node") or add_volume(scene, np.zeros(SHAPE, np.float32), "existing-output")
    kwargs.setdefault("output_node", existing)
    before_array, before_matrix = slicer.util.arrayFromVolume(existing).copy(), ijk_to_ras(existing)
    ids = snapshot(scene)
    with pytest.raises(AMIFError):
        logic.fuse(**kwargs)
    if case not in ("grey into a colour output", "output is an input"):  # the same error with a new output
        with pytest.raises(AMIFError):
            logic.fuse(**{**kwargs, "output_node": None})
    assert snapshot(scene) == ids
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(existing), before_array)
    np.testing.assert_array_equal(ijk_to_ras(existing), before_matrix)
    assert existing.GetAttribute("AMIF.Watermark") is None


def test_cancel_leaves_the_scene_unchanged(scene, tiny):
    model, _ = tiny
    a = add_volume(scene, blobs(SHAPE, 17), "mri")
    b = add_volume(scene, blobs(SHAPE, 18), "pet")
    existing = add_volume(scene, np.zeros(SHAPE, np.float32), "existing-output")
    ids, calls = snapshot(scene), []

    def cancel():
        calls.append(1)
        return len(calls) > 1  # mid-run: after the first batch of slices

    for out in (None, existing):
        calls.clear()
        with pytest.raises(Cancelled):
            logic.fuse(a, b, out, model_path=model, cancel=cancel)
        assert len(calls) == 2
    assert snapshot(scene) == ids
    assert not slicer.util.arrayFromVolume(existing).any() and existing.GetAttribute("AMIF.Watermark") is None


def test_key_state_needs_only_the_manifest(tmp_path):
    assert logic.key_state(None).state == "none"
    demo = logic.key_state(MODELS / "amif-demo.amifkey")
    assert demo.state == "match" and demo.key_id == "11b7-a3ec-a753-2b92" and demo.expected == "clean"
    other = tmp_path / "other.amifkey"
    save_key(generate_key("another-model", "Someone"), other)
    assert logic.key_state(other).state == "other-model"
    (tmp_path / "bad.amifkey").write_text("x")
    assert logic.key_state(tmp_path / "bad.amifkey").state == "unreadable"
    with pytest.raises(AMIFError):
        logic.key_state(None, tmp_path / "none.json")


# ---------------------------------------------------------------- bundled model on the bundled sample


@pytest.fixture(scope="module")
def sample_runs(tmp_path_factory):
    from amif.cli import fuse_files

    scene = slicer.vtkMRMLScene()
    mri, pet = read_volume(scene, SAMPLE / "AMIFSample-MRI.nrrd"), read_volume(scene, SAMPLE / "AMIFSample-PET.nrrd")
    keyed = logic.fuse(mri, pet, key_path=MODELS / "amif-demo.amifkey")
    unkeyed = logic.fuse(mri, pet)
    cli = tmp_path_factory.mktemp("cli") / "fused.nrrd"
    fuse_files(SAMPLE / "AMIFSample-MRI.nrrd", SAMPLE / "AMIFSample-PET.nrrd", cli, progress=False)
    return scene, keyed, unkeyed, cli


def test_sample_key_states_checked_by_verify(sample_runs):
    from amif.fusion import display_array
    from amif.verify import verify_volume

    pkg = logic.load_model()
    _, keyed, unkeyed, _ = sample_runs
    for fused, key_state, watermark in ((keyed, "match", "clean"), (unkeyed, "none", "marked")):
        assert fused.key.state == key_state and fused.node.GetAttribute("AMIF.KeyState") == key_state
        assert fused.verdict.state == watermark and fused.node.GetAttribute("AMIF.Watermark") == watermark
        img = logic.image_from_node(fused.node, "output")
        assert verify_volume(display_array(img), pkg.identifier, pkg.threshold).state == watermark


def test_sample_matches_amif_fuse_voxel_for_voxel(sample_runs):
    import SimpleITK as sitk

    scene, _, unkeyed, cli = sample_runs
    ref = sitk.ReadImage(str(cli))
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(unkeyed.node), sitk.GetArrayFromImage(ref))
    mri = scene.GetFirstNodeByName("AMIFSample-MRI")
    np.testing.assert_allclose(ijk_to_ras(unkeyed.node), ijk_to_ras(mri))
    assert unkeyed.node.GetAttribute("AMIF.Score") == ref.GetMetaData("AMIF_score")


# ---------------------------------------------------------------- dependencies and sample data (no qt)


class FakePyTorchUtils:
    """PyTorchUtils as the PyTorch extension has it: PyTorchUtilsLogic().installTorch(...)."""

    def __init__(self, succeed=True, on_install=None):
        self.calls, self.succeed, self.on_install = [], succeed, on_install
        fake = self

        class PyTorchUtilsLogic:
            def installTorch(
                self,
                askConfirmation=False,
                forceComputationBackend=None,
                torchVersionRequirement=None,
                torchvisionVersionRequirement=None,
            ):
                fake.calls.append(
                    {"askConfirmation": askConfirmation, "torchVersionRequirement": torchVersionRequirement}
                )
                if fake.on_install:
                    fake.on_install()
                return object() if fake.succeed else None

        self.PyTorchUtilsLogic = PyTorchUtilsLogic


class Machine:
    """What is installed: distribution versions; install steps change it."""

    def __init__(self, torch=None, safetensors=True):
        self.torch, self.safetensors = torch, safetensors
        self.pip, self.asked, self.status = [], [], []

    def plan(self):
        return dependencies.plan(
            version=lambda name: self.torch if name == "torch" else None,
            find_spec=lambda name: (self.torch if name == "torch" else self.safetensors) or None,
        )

    def confirm(self, answer):
        return lambda text: self.asked.append(text) or answer

    def install(self, reqs):
        self.pip.append(list(reqs))
        self.safetensors = True

    def run(self, answer=True, utils=None, loaded=False):
        return dependencies.ensure_dependencies(
            self.confirm(answer),
            self.install,
            lambda: utils,
            self.status.append,
            check=self.plan,
            torch_loaded=lambda: loaded,
        )


def test_dependencies_nothing_to_do():
    m = Machine(torch="2.13.0+cpu")
    utils = FakePyTorchUtils()
    assert m.run(utils=utils) and not m.asked and not m.pip and not utils.calls


def test_dependencies_one_confirmation_names_everything_then_installs_without_asking():
    m = Machine(torch=None, safetensors=False)
    utils = FakePyTorchUtils(on_install=lambda: setattr(m, "torch", "2.13.0"))
    assert m.run(utils=utils)
    assert len(m.asked) == 1 and "PyTorch" in m.asked[0] and "safetensors" in m.asked[0]
    assert "tqdm" not in m.asked[0] and "SimpleITK" not in m.asked[0] and "pillow" not in m.asked[0].lower()
    assert utils.calls == [{"askConfirmation": False, "torchVersionRequirement": dependencies.TORCH_REQUIREMENT}]
    assert m.pip == [["safetensors>=0.4,<1"]]
    assert any("PyTorch" in s for s in m.status) and any("safetensors" in s for s in m.status)


def test_dependencies_declined_installs_nothing():
    m = Machine(torch=None, safetensors=False)
    utils = FakePyTorchUtils()
    assert m.run(answer=False, utils=utils) is False
    assert len(m.asked) == 1 and not utils.calls and not m.pip


def test_dependencies_old_torch_is_upgraded_after_asking():
    m = Machine(torch="1.13.1")
    assert m.plan().torch == "upgrade"
    utils = FakePyTorchUtils(on_install=lambda: setattr(m, "torch", "2.13.0"))
    assert m.run(utils=utils)
    assert "1.13.1" in m.asked[0] and utils.calls and not m.pip
    m = Machine(torch="1.13.1")  # the old torch is already imported in this process: a restart is needed
    with pytest.raises(AMIFError, match="restart"):
        m.run(utils=FakePyTorchUtils(on_install=lambda: setattr(m, "torch", "2.13.0")), loaded=True)


def test_dependencies_failures_are_one_clear_error():
    with pytest.raises(AMIFError, match="PyTorch"):  # no PyTorch extension: said before asking anything
        m = Machine(torch=None)

        def no_extension():
            raise ImportError("No module named 'PyTorchUtils'")

        dependencies.ensure_dependencies(
            m.confirm(True), m.install, no_extension, check=m.plan, torch_loaded=lambda: False
        )
    assert not m.asked
    with pytest.raises(AMIFError, match="could not be installed"):
        Machine(torch=None).run(utils=FakePyTorchUtils(succeed=False))
    m = Machine(torch="2.13.0", safetensors=False)

    def pip_fails(reqs):
        raise RuntimeError("pip exited with 1\nERROR: could not reach the package index")

    m.install = pip_fails  # pip itself failed: one message, the status line cleared
    with pytest.raises(AMIFError, match="could not reach the package index"):
        m.run(utils=FakePyTorchUtils())
    assert m.status[-1] == ""
    m = Machine(torch="2.13.0", safetensors=False)
    m.install = lambda reqs: None  # pip ran but nothing appeared
    with pytest.raises(AMIFError, match="safetensors"):
        m.run(utils=FakePyTorchUtils())


def test_version_tuple():
    assert dependencies.version_tuple("2.13.0+cpu") == (2, 13, 0)
    assert dependencies.version_tuple("2.1.0a0") == (2, 1, 0)
    assert dependencies.version_tuple("1.13.1") < dependencies.TORCH_MINIMUM <= dependencies.version_tuple("2.0.0")


def test_sample_data_registration():
    import hashlib
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    got = []
    sampledata.register_sample_data(ROOT / "AMIFFusion" / "Resources", lambda **kw: got.append(kw))
    (src,) = got
    assert src["category"] == "AMIF" and src["nodeNames"] == ["AMIFSample-MRI", "AMIFSample-PET"]
    for uri, checksum in zip(src["uris"], src["checksums"]):
        path = url2pathname(urlparse(uri).path)
        assert uri.startswith("file://") and checksum == "SHA256:" + hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert (ROOT / "AMIFFusion" / "Resources" / "Icons" / "AMIFSample.png").samefile(src["thumbnailFileName"])


def test_adapter_never_imports_qt():
    for path in (ROOT / "AMIFFusion" / "AMIFFusionLib").glob("*.py"):
        text = path.read_text()
        assert "import qt" not in text and "from qt" not in text and "import ctk" not in text, path.name
