"""Orientation: the unkeyed identifier reads upright, left to right, in the radiological axial view (Slicer's
axial view: screen up = anterior, screen right = patient left), whatever the volume's direction matrix.

The check is made in world coordinates: the fused output is resampled onto a grid of identity direction
(ITK's LPS world: x towards patient left, y towards posterior), whose array rows then run anterior to
posterior (screen top to bottom) and whose columns run patient right to left (screen left to right), and
the identifier mask must match that frame better than any of its flips."""

import numpy as np
import pytest
import SimpleITK as sitk

# array layouts the same 3 x 128 x 128 volume is stored in (sitk.DICOMOrient codes: index i, j, k increase
# towards these directions): identity, flipped axes, permuted axes; all oblique-free
LAYOUTS = ("LPS", "RAS", "RAI", "LAI", "PLS", "ARI", "SLP", "IRA")


@pytest.fixture(scope="module")
def pair():
    from amif.sample import sample_volumes

    mri, pet = sample_volumes()
    size = mri.GetSize()
    index = [(size[0] - 128) // 2, (size[1] - 128) // 2, int(0.55 * size[2])]
    return tuple(sitk.RegionOfInterest(v, [128, 128, 3], index) for v in (mri, pet))


@pytest.fixture(scope="module")
def package():
    from amif.package import bundled_model_path, load_package

    return load_package(bundled_model_path())


def radiological_slice(img) -> np.ndarray:
    """The middle axial slice of `img` in the radiological frame, by world coordinates (resampled onto an
    identity-direction grid covering the same voxels)."""
    lo = np.min(
        [
            img.TransformIndexToPhysicalPoint([int(c) for c in k * (np.array(img.GetSize()) - 1)])
            for k in map(np.array, np.ndindex(2, 2, 2))
        ],
        axis=0,
    )
    spacing = sorted(img.GetSpacing())  # isotropic here
    ref = sitk.Image([128, 128, 3], sitk.sitkFloat32)
    ref.SetSpacing(spacing)
    ref.SetOrigin(lo.tolist())
    world = sitk.GetArrayFromImage(sitk.Resample(img, ref, sitk.Transform(), sitk.sitkNearestNeighbor, np.nan))
    assert np.isfinite(world).all()  # the grid covers the volume voxel for voxel
    return world[1]  # rows: anterior -> posterior, columns: patient right -> left


def reading_scores(y: np.ndarray, text: str) -> dict[str, float]:
    """verify's identifier score of the slice as it is and turned over each way: the identifier reads upright
    in the slice's frame when the slice as it is scores highest."""
    from amif.verify import identifier_scores

    y = (y - y.min()) / (y.max() - y.min())
    turned = {"upright": y, "rotated 180": y[::-1, ::-1], "mirrored": y[:, ::-1], "upside down": y[::-1]}
    return dict(zip(turned, identifier_scores(np.stack(list(turned.values())), text).tolist()))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_identifier_reads_upright_in_radiological_view(pair, package, layout):
    from amif.fusion import fuse_volumes

    a, b = (sitk.DICOMOrient(v, layout) for v in pair)
    assert a.GetSize() != pair[0].GetSize() or a.GetDirection() != pair[0].GetDirection() or layout == "RAS"
    out = fuse_volumes(a, b, package, None, device="cpu").image
    scores = reading_scores(radiological_slice(out), package.identifier)
    best = max(scores, key=scores.get)
    assert best == "upright", f"{layout}: the identifier reads {best} in the radiological axial view: {scores}"
    assert scores["upright"] > max(v for k, v in scores.items() if k != "upright") + 0.05, scores
