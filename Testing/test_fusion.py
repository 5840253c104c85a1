import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from amif.color import rgb_to_ycbcr, ycbcr_to_rgb
from amif.errors import AMIFError, Cancelled
from amif.fusion import fuse_images, fuse_volumes, key_status
from amif.identifier import identifier_mask
from amif.keys import generate_key, save_key
from amif.network import NetConfig
from amif.package import ModelPackage
from amif.verify import displacements, verify_image, verify_volume
from amif_research.losses import marked_target


def _vol(size=(40, 36, 6), spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0), seed=0):
    arr = np.random.default_rng(seed).random(size[::-1]).astype(np.float32) * 100
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    return img


def _chroma_scale(ycc_out: np.ndarray, ycc_in: np.ndarray, atol: float) -> np.ndarray:
    """The factor by which each pixel's chroma (Cb, Cr) was scaled, after checking it only was scaled (same hue)."""
    c_out, c_in = ycc_out[..., 1:] - 0.5, ycc_in[..., 1:] - 0.5
    scale = (c_out * c_in).sum(-1) / (c_in**2).sum(-1)
    np.testing.assert_allclose(c_out, scale[..., None] * c_in, atol=atol)
    return scale


def test_ycbcr_roundtrip():
    rgb = np.random.default_rng(1).random((8, 8, 3))
    np.testing.assert_allclose(ycbcr_to_rgb(rgb_to_ycbcr(rgb)), rgb, atol=1e-6)


def test_a_new_luminance_is_kept_by_scaling_the_chroma_not_by_clipping():
    rng = np.random.default_rng(2)
    ycc = rgb_to_ycbcr(rng.random((40, 50, 3)))
    ycc[..., 0] = rng.random((40, 50))  # a fused Y under the source's chroma: many colours leave the RGB cube
    out = ycbcr_to_rgb(ycc)
    assert out.min() >= 0 and out.max() <= 1
    np.testing.assert_allclose(rgb_to_ycbcr(out)[..., 0], ycc[..., 0], atol=1e-6)  # the grey shows the fused Y
    scale = _chroma_scale(rgb_to_ycbcr(out), ycc, atol=1e-6)  # same hue
    # less saturated where the colour did not fit (a fifth of the pixels or more), never more saturated
    assert scale.min() >= -1e-6 and scale.max() <= 1 + 1e-6 and (scale < 0.99).mean() > 0.2


def test_fuse_images_grey_and_rgb(tiny_package):
    pkg, key, _ = tiny_package
    rng = np.random.default_rng(0)
    a, b = rng.random((30, 41)).astype(np.float32), rng.random((30, 41, 3)).astype(np.float32)
    r = fuse_images(a, b, pkg, key)
    assert r.fused.shape == (30, 41, 3) and r.key.state == "match"
    # the output's grey is the fusion of A with B's luminance; its hue is B's (chroma scaled by 0..1)
    ycc_out, ycc_in = rgb_to_ycbcr(r.fused), rgb_to_ycbcr(b)
    grey = fuse_images(a, ycc_in[..., 0], pkg, key).fused
    np.testing.assert_allclose(ycc_out[..., 0], grey, atol=1e-5)
    scale = _chroma_scale(ycc_out, ycc_in, atol=1e-5)
    assert scale.min() > -1e-4 and scale.max() < 1 + 1e-4 and np.median(scale) > 0.5
    g = fuse_images(a, b[..., 0], pkg, None)
    assert g.fused.shape == (30, 41) and g.key.state == "none"


def test_fuse_images_bad_inputs(tiny_package):
    pkg = tiny_package[0]
    a = np.zeros((20, 20), np.float32)
    with pytest.raises(AMIFError, match="differ in size"):
        fuse_images(a, np.zeros((21, 20)), pkg)
    with pytest.raises(AMIFError, match="NaN"):
        fuse_images(a, np.full((20, 20), np.nan), pkg)
    with pytest.raises(AMIFError, match="empty"):
        fuse_images(np.zeros((0, 0)), np.zeros((0, 0)), pkg)


def test_key_states(tiny_package, tmp_path):
    pkg, key, _ = tiny_package
    assert key_status(pkg, key).state == "match"
    assert key_status(pkg, None).state == "none"
    save_key(generate_key("test-model", "Someone"), tmp_path / "other.amifkey")
    assert key_status(pkg, tmp_path / "other.amifkey").state == "other-key"
    save_key(generate_key("another-model", "Someone"), tmp_path / "foreign.amifkey")
    st = key_status(pkg, tmp_path / "foreign.amifkey")
    assert st.state == "other-model" and "another-model" in st.message
    (tmp_path / "junk.amifkey").write_text("junk")
    assert key_status(pkg, tmp_path / "junk.amifkey").state == "unreadable"
    with pytest.raises(AMIFError, match="another-model"):
        fuse_images(np.zeros((8, 8)), np.zeros((8, 8)), pkg, tmp_path / "foreign.amifkey")


def test_fuse_volumes_geometry_progress_metadata(tiny_package):
    pkg, key, _ = tiny_package
    a = _vol(origin=(5.0, -3.0, 10.0))
    b = _vol(origin=(5.0, -3.0, 10.0), seed=1)
    seen = []
    r = fuse_volumes(a, b, pkg, key, batch=4, progress=lambda d, n: seen.append((d, n)))
    assert r.image.GetSize() == a.GetSize() and r.image.GetOrigin() == a.GetOrigin()
    assert r.image.GetSpacing() == a.GetSpacing() and r.image.GetDirection() == a.GetDirection()
    assert seen == [(4, 6), (6, 6)]
    assert r.image.GetMetaData("AMIF_key_state") == "match"
    assert r.image.GetMetaData("AMIF_key_id") == pkg.key_id
    import json

    secret = json.loads(open(key).read())["secret"]
    assert all(secret not in r.image.GetMetaData(k) for k in r.image.GetMetaDataKeys())
    assert all(k.startswith("AMIF_") for k in r.image.GetMetaDataKeys())


def test_resampling_onto_first_grid(tiny_package):
    """B on a shifted, coarser grid: the fused result equals fusing A with B resampled by hand."""
    pkg = tiny_package[0]
    a = _vol()
    b = _vol(size=(20, 18, 6), spacing=(2.0, 2.0, 2.0), origin=(1.0, 0.0, 0.0), seed=3)
    r = fuse_volumes(a, b, pkg, None, window_a=(0, 100), window_b=(0, 100))
    bmin = float(sitk.GetArrayViewFromImage(b).min())
    b_on_a = sitk.Resample(b, a, sitk.Transform(), sitk.sitkLinear, bmin)
    r2 = fuse_volumes(a, b_on_a, pkg, None, window_a=(0, 100), window_b=(0, 100))
    np.testing.assert_allclose(sitk.GetArrayFromImage(r.image), sitk.GetArrayFromImage(r2.image), atol=1e-5)


def test_volume_errors(tiny_package):
    pkg = tiny_package[0]
    a = _vol()
    with pytest.raises(AMIFError, match="do not overlap"):
        fuse_volumes(a, _vol(origin=(500.0, 0.0, 0.0)), pkg)
    bad = sitk.GetArrayFromImage(a)
    bad[0, 0, 0] = np.nan
    nan_img = sitk.GetImageFromArray(bad)
    nan_img.CopyInformation(a)
    with pytest.raises(AMIFError, match="NaN"):
        fuse_volumes(a, nan_img, pkg)
    flat = sitk.GetImageFromArray(np.zeros((20, 20), np.float32))
    with pytest.raises(AMIFError, match="3D volume"):
        fuse_volumes(flat, a, pkg)
    with pytest.raises(Cancelled):
        fuse_volumes(a, a, pkg, cancel=lambda: True)


def test_verify_tells_marked_from_clean():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:256] / 256
    img = (0.5 + 0.4 * np.sin(6 * xx) * np.cos(4 * yy) + 0.02 * rng.standard_normal((256, 256))).astype(np.float32)
    img = img.clip(0, 1)
    mask = identifier_mask("AMIF DEMO · UNLICENSED", 256, 256)
    marked = marked_target(torch.from_numpy(img)[None, None], torch.from_numpy(mask)[None, None])[0, 0].numpy()
    assert verify_image(marked, "AMIF DEMO · UNLICENSED", 0.12).marked
    assert not verify_image(img, "AMIF DEMO · UNLICENSED", 0.12).marked
    assert not verify_image(marked, "OTHER TEXT · HERE", 0.12).marked


def test_verify_flags_the_identifier_wiped_off_but_not_clean_or_blurred_images():
    from amif.verify import ERASED, Verdict, scores_and_erasure
    from amif_research.attack import gaussian_blur, identifier_region, inpaint

    ident = "AMIF DEMO · UNLICENSED"
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:256, 0:256] / 256
    img = (0.5 + 0.3 * np.sin(6 * xx) * np.cos(4 * yy) + 0.05 * rng.standard_normal((256, 256))).astype(np.float32)
    img = img.clip(0, 1)
    mask = identifier_mask(ident, 256, 256)
    marked = marked_target(torch.from_numpy(img)[None, None], torch.from_numpy(mask)[None, None])[0, 0].numpy()
    wiped = inpaint(marked[None], identifier_region(ident, 256, 256, 1))[0]
    v = verify_image(wiped, ident, 0.12)
    assert not v.marked and v.erased and v.flagged and v.state == "erased" and "erasure ratio" in str(v)
    assert v.erasure < 0.1 * ERASED
    clean = verify_image(img, ident, 0.12)
    assert clean.state == "clean" and not clean.flagged and abs(clean.erasure - 1) < 0.2
    assert verify_image(marked, ident, 0.12).state == "marked" and verify_image(marked, ident, 0.12).erasure > 1
    # blurring the whole image keeps the ratio; an empty or flat image gives no evidence (ratio 1)
    _, ratios = scores_and_erasure(
        np.stack([gaussian_blur(img[None], 1.5)[0], np.zeros_like(img), np.full_like(img, 0.5)]), ident
    )
    assert abs(ratios[0] - 1) < 0.2 and ratios[1] == ratios[2] == 1.0
    # painting texture back into the strokes defeats the check (documented in docs/security.md)
    textured = np.where(identifier_region(ident, 256, 256, 1), wiped + 0.05 * rng.standard_normal(wiped.shape), wiped)
    assert not verify_image(textured.astype(np.float32), ident, 0.12).flagged
    assert Verdict(0.5, 0.12, 0.0).state == "marked"  # the identifier itself outranks the erasure check


def _textured_sources(seed=3, n=256):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:n, 0:n] / n
    a = 0.5 + 0.3 * np.sin(9 * xx + 2) * np.cos(7 * yy) + 0.2 * ((xx - 0.4) ** 2 + (yy - 0.5) ** 2 < 0.06)
    b = 0.4 * (np.abs(xx - 0.6) + np.abs(yy - 0.45) < 0.25) + 0.05 * rng.standard_normal((n, n))
    return a.clip(0, 1).astype(np.float32), b.clip(0, 1).astype(np.float32)


def test_verify_measures_the_mark_shift_against_the_sources():
    from amif.verify import is_shifted
    from amif_research.attack import inpaint_textured
    from amif_research.losses import shift_content

    ident = "AMIF DEMO · UNLICENSED"
    a, b = _textured_sources()
    fused = np.maximum(a, b)
    t = torch.from_numpy(fused)[None, None]
    moved = [shift_content(t, s)[0, 0].numpy() for s in (1, 2)]
    left = np.roll(fused, -1, axis=1)  # content moved left: the other way
    d = displacements(np.stack([fused, *moved, left]), np.stack([a] * 4), np.stack([b] * 4))
    assert abs(d[0]) < 0.15 and abs(d[1] - 1) < 0.15 and abs(d[2] - 2) < 0.15 and d[3] < -0.3
    assert list(is_shifted(d, 1)) == [False, True, True, False] and not is_shifted(d, 0).any()
    # the identifier wiped off with texture painted back: only the shift still tells
    mask = torch.from_numpy(identifier_mask(ident, 256, 256))[None, None]
    marked = marked_target(t, mask, shift=1)[0, 0].numpy()
    wiped = inpaint_textured(marked[None], ident, 1)[0]
    assert not verify_image(wiped, ident, 0.12).flagged  # without the sources: clean
    v = verify_image(wiped, ident, 0.12, (a, b), shift=1)
    assert v.state == "shifted" and v.flagged and abs(v.displacement - 1) < 0.2 and "moved" in str(v)
    assert verify_image(fused, ident, 0.12, (a, b), shift=1).state == "clean"
    assert verify_image(wiped, ident, 0.12, (a, b), shift=0).state == "clean"  # a model without the channel
    assert verify_image(marked, ident, 0.12, (a, b), shift=1).state == "marked"
    # sources that are not quite registered: an image is measured against the reference it matches best,
    # so a source itself sits at 0, and a fusion of them moved by 1 px is still found
    b_off = np.roll(b, (2, 2), axis=(0, 1))
    both = np.maximum(a, b_off)
    d = displacements(
        np.stack([b_off, both, np.roll(both, (1, 1), axis=(0, 1))]), np.stack([a] * 3), np.stack([b_off] * 3)
    )
    assert abs(d[0]) < 0.05 and abs(d[1]) < 0.15 and abs(d[2] - 1) < 0.15
    # an empty image has no edges: no displacement
    assert displacements(np.zeros((1, 64, 64), np.float32), a[None, :64, :64], b[None, :64, :64])[0] == 0
    with pytest.raises(AMIFError, match="same shape"):
        displacements(fused[None], a[None, :128], b[None])


class _MaxShiftNet(torch.nn.Module):
    """A stand-in network: the element-wise max of the sources, moved one pixel right and down."""

    cfg = NetConfig()

    def forward(self, a, b, code):
        from amif_research.losses import shift_content

        return shift_content(torch.maximum(a, b), 1)


def test_volumes_and_images_are_checked_for_the_shift_of_a_model_that_has_one(tiny_package):
    pkg = tiny_package[0]
    manifest = lambda shift: {**pkg.manifest, "verify": {"threshold": pkg.threshold, "shift": shift}}  # noqa: E731
    shifting, unaware = (ModelPackage(manifest(s), _MaxShiftNet()) for s in (1, 0))
    a, b = _textured_sources(n=64)
    r = fuse_images(a, b, shifting)
    assert r.verdict.state == "shifted" and abs(r.verdict.displacement - 1) < 0.2
    assert fuse_images(a, b, unaware).verdict.state == "clean"
    assert fuse_images(a, b, pkg).verdict.shift == 0  # the tiny package has no shift channel
    va, vb = _vol(size=(96, 80, 40)), _vol(size=(96, 80, 40), seed=4)  # 40 slices: every other one measured
    v = fuse_volumes(va, vb, shifting).verdict
    assert v.state == "shifted" and abs(v.displacement - 1) < 0.2
    assert fuse_volumes(va, vb, unaware).verdict.state == "clean"
    # unmeasured slices (NaN) do not count; none measured: no displacement
    vol = np.stack([np.maximum(a, b)] * 3)
    assert verify_volume(vol, "TEST · MARK", 0.12, displacement=np.array([np.nan, 1.0, np.nan]), shift=1).shifted
    assert verify_volume(vol, "TEST · MARK", 0.12, displacement=np.full(3, np.nan), shift=1).state == "clean"


def test_colour_second_volume_keeps_chroma(tiny_package):
    pkg = tiny_package[0]
    a = _vol(size=(24, 20, 3))
    rgb = (96 + np.random.default_rng(2).random((3, 20, 24, 3)) * 64).astype(np.uint8)  # mild colours
    b = sitk.GetImageFromArray(rgb, isVector=True)
    b.CopyInformation(a)
    r = fuse_volumes(a, b, pkg)
    out = sitk.GetArrayFromImage(r.image)
    assert r.image.GetNumberOfComponentsPerPixel() == 3 and out.shape == (3, 20, 24, 3)
    cr_in, cr_out = rgb_to_ycbcr(rgb / 255.0)[..., 2], rgb_to_ycbcr(out)[..., 2]
    inside = ((out > 1e-6) & (out < 1 - 1e-6)).all(-1)  # where no channel was clipped to the gamut
    assert inside.mean() > 0.5 and np.abs(cr_in - cr_out)[inside].max() < 1e-4
    rgba = sitk.GetImageFromArray(np.zeros((3, 20, 24, 4), np.uint8), isVector=True)
    with pytest.raises(AMIFError, match="4 components"):
        fuse_volumes(a, rgba, pkg)


def test_orientation_does_not_change_the_physical_result(tiny_package):
    """The same physical volume stored with flipped axes gives the same fused image in space."""
    pkg = tiny_package[0]
    a, b = _vol(seed=4), _vol(seed=5)
    r1 = fuse_volumes(a, b, pkg, window_a=(0, 100), window_b=(0, 100)).image

    def flipped(img):
        f = sitk.Flip(img, [False, True, True])  # ITK keeps the physical content, changes the layout
        assert f.GetDirection() != img.GetDirection()
        return f

    r2 = fuse_volumes(flipped(a), flipped(b), pkg, window_a=(0, 100), window_b=(0, 100)).image
    assert r2.GetDirection() == flipped(a).GetDirection()
    back = sitk.Resample(r2, r1, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0)
    np.testing.assert_allclose(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(r1), atol=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_display_view_matches_dicom_orient(seed):
    """The copy-free display layout equals what sitk.DICOMOrient makes, for permuted and flipped axes."""
    from amif.fusion import DISPLAY_ORIENTATION, display_view

    rng = np.random.default_rng(seed)
    perm, signs = rng.permutation(3), rng.choice([-1.0, 1.0], 3)
    direction = np.zeros((3, 3))
    direction[perm, np.arange(3)] = signs
    rot = 0.1 * rng.standard_normal((3, 3))  # slightly oblique, as scanners write it
    q, _ = np.linalg.qr(np.eye(3) + rot - rot.T)
    img = _vol(size=(5, 6, 7), seed=seed)
    img.SetDirection((q @ direction).ravel().tolist())
    expected = sitk.GetArrayFromImage(sitk.DICOMOrient(img, DISPLAY_ORIENTATION))
    view = display_view(img)(sitk.GetArrayViewFromImage(img))
    np.testing.assert_array_equal(view, expected)
    rgb = sitk.Compose(img, img * 2, img * 3)
    rgb.CopyInformation(img)
    colour = display_view(rgb)(sitk.GetArrayViewFromImage(rgb))
    np.testing.assert_array_equal(colour[..., 1], expected * 2)


VOLUME_MEMORY = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import numpy as np, SimpleITK as sitk, torch
from amif.fusion import fuse_volumes
from amif.network import AMIFNet, NetConfig
from amif.package import ModelPackage

def status(field):
    return next(int(x.split()[1]) << 10 for x in Path("/proc/self/status").read_text().splitlines()
                if x.startswith(field + ":"))

torch.set_num_threads(1)
torch.manual_seed(0)
net = AMIFNet(NetConfig(c1=4, c2=8, c3=8, mem_channels=4, mem_size=32, key_features=64, key_hidden=16)).eval()
pkg = ModelPackage({"model_id": "m", "key_id": "k", "identifier": "TEST"}, net)
d, h, w = 96, 128, 128
rng = np.random.default_rng(0)
a, b = (sitk.GetImageFromArray(rng.random((d, h, w), dtype=np.float32)) for _ in range(2))
fuse_volumes(sitk.RegionOfInterest(a, [w, h, 2]), sitk.RegionOfInterest(b, [w, h, 2]), pkg, device="cpu")
Path("/proc/self/clear_refs").write_text("5")  # the peak from here on (torch's set-up not counted)
before = status("VmRSS")
fuse_volumes(a, b, pkg, device="cpu")
print((status("VmHWM") - before) / (d * h * w * 4))
"""


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's resettable peak RSS")
def test_fuse_volumes_peak_memory_is_the_output_plus_slabs():
    """fuse_volumes writes its output into the image slab by slab and verifies it slab by slab: the process
    grows by about the output (float32, A's size) plus one batch's work, not by whole copies of it (a numpy
    output copied into an image, a float copy for verify and verify's 128-slice batches, whole-volume NaN
    masks: 18x the output at 128x128x96 with this small network; now 5x, most of it one batch's work)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", VOLUME_MEMORY, str(root / "AMIFFusion")], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.split()[-1]) < 8, done.stdout


@pytest.mark.parametrize("colour", [False, True])
def test_slab_verdict_is_verify_volumes(colour):
    """The verdict fuse_volumes builds slab by slab is verify_volume's on the whole output."""
    from amif.fusion import display_array
    from amif.package import bundled_model_path, load_package

    pkg = load_package(bundled_model_path())
    a = _vol(size=(48, 5, 40))
    b = _vol(size=(48, 5, 40), seed=3)
    for img in (a, b):
        img.SetDirection((-1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0))  # permuted and flipped
    if colour:
        b = sitk.Compose(b, b * 0.5, b * 0.2)
        b.CopyInformation(a)
    r = fuse_volumes(a, b, pkg, device="cpu", batch=2)
    whole = verify_volume(display_array(r.image), pkg.identifier, pkg.threshold)
    assert r.verdict.score == pytest.approx(whole.score, abs=1e-6)
    assert r.verdict.erasure == pytest.approx(whole.erasure, abs=1e-6)
    assert r.verdict.state == whole.state
