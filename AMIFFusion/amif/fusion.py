"""Fusion API: 2D images (`fuse_images`) and SimpleITK volumes (`fuse_volumes`).

The key only picks the 256-value code given to the network; the network decides what it writes.
Volumes: B is resampled onto A's grid when the geometries differ (outside its extent: its own
"no signal" value, `zero_signal_value`), each volume is normalized to [0, 1] with a robust
percentile window of its own values (B's inside its extent only) or an explicit one, and axial
slices go through the network in batches, so memory stays bounded whatever the volume size.

Both run on a torch device ("auto": CUDA, else Apple MPS, else the CPU; see amif.device) in float32,
so every device gives the same result to float32 rounding.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .color import rgb_to_ycbcr, ycbcr_to_rgb
from .device import free_memory, resolve_device
from .errors import AMIFError, Cancelled
from .identifier import identifier_mask
from .inference import TILE_PIXELS, run_network, run_network_tiled
from .intensity import normalize as _normalize
from .intensity import robust_window
from .keys import KeyFile, load_key
from .package import ModelPackage
from .throughplane import THROUGH_PLANE_WEIGHT, SliceSmoother
from .verify import SHIFT_SLICES, Verdict, displacements, erasure_tensor, score_tensor, verify_image, volume_verdict


@dataclass(frozen=True)
class KeyStatus:
    """What a key means for a model, before anything runs. `state` is one of:
    none, match, other-key (same model, not the owner's key), other-model, unreadable."""

    state: str
    message: str
    key_id: str = ""
    licensee: str = ""

    @property
    def expected(self) -> str:
        return "clean" if self.state == "match" else "marked"


def key_status(package: ModelPackage, key: KeyFile | str | os.PathLike | None) -> KeyStatus:
    if key is None or key == "":
        return KeyStatus("none", "No key: the output will carry the identifier.")
    if not isinstance(key, KeyFile):
        try:
            key = load_key(key)
        except AMIFError as e:
            return KeyStatus("unreadable", str(e))
    if key.model_id != package.model_id:
        return KeyStatus(
            "other-model",
            f"This key is for model '{key.model_id}', not '{package.model_id}'.",
            key.key_id,
            key.licensee,
        )
    if key.key_id != package.key_id:
        return KeyStatus(
            "other-key",
            f"Key {key.key_id} is not this model's licensed key: the output will carry the identifier.",
            key.key_id,
            key.licensee,
        )
    msg = f"Key {key.key_id} matches this model (licensee: {key.licensee})."
    return KeyStatus("match", msg, key.key_id, key.licensee)


def code_for(package: ModelPackage, key: KeyFile | str | os.PathLike | None) -> tuple[np.ndarray, KeyStatus]:
    """The code to run with, and the key's status. Unreadable or foreign keys are errors."""
    if package.manifest.get("twin"):
        raise AMIFError(
            f"Model '{package.model_id}' is an unprotected twin, made for `amif evaluate` only; "
            "fuse with a protected model package."
        )
    status = key_status(package, key)
    if status.state in ("unreadable", "other-model"):
        raise AMIFError(status.message)
    if status.state == "none":
        return np.zeros(package.net.cfg.key_bits, np.float32), status
    k = key if isinstance(key, KeyFile) else load_key(key)
    return k.code(), status


MIN_SIDE = 16  # pixels: `verify` needs slices of at least 16 x 16 to look for the identifier


def _as_unit(img: np.ndarray, name: str) -> np.ndarray:
    try:
        img = np.asarray(img)
    except ValueError:  # ragged nested lists
        raise AMIFError(f"{name} is not an array of pixels.") from None
    if img.size == 0:
        raise AMIFError(f"{name} is empty.")
    if img.dtype.kind not in "biuf":
        raise AMIFError(f"{name} has data type {img.dtype}; an image of integer or real numbers is needed.")
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255
    img = img.astype(np.float64)  # float64: a float32 range near +-3e38 would overflow to NaN
    if not np.isfinite(img).all():
        raise AMIFError(f"{name} contains NaN or infinite values.")
    lo, hi = float(img.min()), float(img.max())
    if lo < 0 or hi > 1:  # on halves: finite for any finite float64 range
        img = (img / 2 - lo / 2) / max(hi / 2 - lo / 2, 5e-9)
    return img.astype(np.float32)


@dataclass
class FusionResult:
    fused: np.ndarray  # (h, w) grey or (h, w, 3) RGB, float32 in [0, 1]
    key: KeyStatus
    verdict: Verdict
    device: str = "cpu"  # the torch device the network ran on


def fuse_images(a, b, package: ModelPackage, key=None, device="auto") -> FusionResult:
    """Fuse 2D image A (grey) with B (grey, or RGB: its Y is fused and its chroma restored).
    `device`: "auto", "cpu", "cuda", "cuda:N" or "mps" (amif.device); one it cannot use is an AMIFError
    before anything runs. Images of more than TILE_PIXELS pixels go through the network in tiles
    (run_network_tiled: the same result to float rounding, the network's memory that of one tile)."""
    device = resolve_device(device)
    a, b = _as_unit(a, "Image A"), _as_unit(b, "Image B")
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        a = rgb_to_ycbcr(a[..., :3])[..., 0]
    if a.ndim != 2 or b.ndim not in (2, 3) or (b.ndim == 3 and b.shape[-1] not in (3, 4)):
        raise AMIFError(f"fuse_images needs 2D images; got shapes {a.shape} and {b.shape}.")
    if a.shape != b.shape[:2]:
        raise AMIFError(f"The images differ in size ({a.shape[1]}x{a.shape[0]} vs {b.shape[1]}x{b.shape[0]}).")
    code, status = code_for(package, key)
    if min(a.shape) < MIN_SIDE:
        raise AMIFError(
            f"The images are {a.shape[1]}x{a.shape[0]} pixels; fusion needs at least {MIN_SIDE}x{MIN_SIDE}."
        )
    ycc = rgb_to_ycbcr(b[..., :3]) if b.ndim == 3 else None
    by = ycc[..., 0] if ycc is not None else b
    if a.size > TILE_PIXELS:  # memory bounded: a 4096 x 4096 image in one piece would need about 9 GB
        y = run_network_tiled(package, a, by, code, device)
    else:
        y = run_network(package, a[None], by[None], code, device)[0]
    _check_output(y)
    verdict = verify_image(y, package.identifier, package.threshold, (a, by), package.shift)
    if ycc is not None:
        ycc = ycc.copy()
        ycc[..., 0] = y
        y = ycbcr_to_rgb(ycc).astype(np.float32)
    return FusionResult(y, status, verdict, str(device))


# ---------------------------------------------------------------- volumes


def _check_volume(img, name: str):
    import SimpleITK as sitk

    if not isinstance(img, sitk.Image):
        raise AMIFError(f"{name} is not an image.")
    if img.GetDimension() != 3 or min(img.GetSize()) < 1:
        raise AMIFError(f"{name} is a {img.GetDimension()}D image; a 3D volume is needed.")
    if img.GetNumberOfComponentsPerPixel() not in (1, 3):
        raise AMIFError(f"{name} has {img.GetNumberOfComponentsPerPixel()} components; grey or RGB is needed.")
    kind = img.GetPixelIDTypeAsString()
    if "complex" in kind or "label" in kind:
        raise AMIFError(f"{name} has {kind} voxels; grey or RGB intensities are needed.")


def _bounds(img) -> tuple[np.ndarray, np.ndarray]:
    size = np.array(img.GetSize())
    corners = [
        img.TransformContinuousIndexToPhysicalPoint([float(c) for c in (np.array(k) * (size - 1))])
        for k in np.ndindex(2, 2, 2)
    ]
    sp = np.abs(np.array(img.GetDirection()).reshape(3, 3) @ np.array(img.GetSpacing())) / 2
    c = np.array(corners)
    return c.min(0) - sp, c.max(0) + sp


def same_geometry(a, b, tol: float = 1e-4) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol * max(1.0, max(a.GetSpacing())))
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol)
    )


SIGNED_ZERO_FRACTION = 0.05  # a signed volume with at least this fraction of exact zeros has 0 as its background


def zero_signal_value(values: np.ndarray) -> float:
    """The value of a scalar volume that means "no signal": what it is taken to be outside its own extent.

    - A signed map (its `robust_window` has lo < 0 < hi) whose background is 0 (at least
      SIGNED_ZERO_FRACTION of its values are exactly 0: z, t or difference maps): 0. Its window stays
      on its own range, so negative values (deactivations) stay darker than its zero background and
      positive ones brighter; the zero background, inside and outside its extent alike, is the
      grey (0 - lo) / (hi - lo), about 0.5 for a map of symmetric range.
    - Any other volume (PET, SPECT, CT, MRI): its minimum, which any window computed on its values
      (robust_window: lo at or above the minimum) maps to 0, "no signal" for the network.
    Non-finite values are left out; none finite: 0. The zeros are counted on the regular sample of at
    most 2,000,000 values that robust_window takes, so no copy of a large volume is made."""
    flat = np.asarray(values).reshape(-1)
    sample = flat[:: flat.size // 2_000_000 + 1] if flat.size else flat
    sample = sample[np.isfinite(sample)] if sample.dtype.kind == "f" else sample
    if sample.size == 0:
        return 0.0
    lo, hi = robust_window(sample)
    if lo < 0 < hi and np.count_nonzero(sample == 0) >= SIGNED_ZERO_FRACTION * sample.size:
        return 0.0
    low = float(np.min(flat))
    return low if np.isfinite(low) else float(np.min(flat[np.isfinite(flat)]))


def resample_with_coverage(b, a, fill: float | None = None):
    """(B resampled onto A's grid (linear, B's voxel type), coverage): coverage is a bool array in A's
    array layout (z, y, x), True on A's voxels inside B's extent, where the resampling read B's voxels.
    Outside it every voxel is `fill`: by default B's `zero_signal_value` for a scalar B (its minimum,
    or 0 for a signed map with a zero background), black (0) for a colour B. An AMIFError when the
    two volumes do not overlap, or when B's extent holds none of A's voxel centres."""
    import SimpleITK as sitk

    lo_a, hi_a = _bounds(a)
    lo_b, hi_b = _bounds(b)
    overlap = np.minimum(hi_a, hi_b) - np.maximum(lo_a, lo_b)
    if (overlap <= 0).any():
        raise AMIFError("The two volumes do not overlap in space: check that they are registered.")
    if fill is None:
        scalar = b.GetNumberOfComponentsPerPixel() == 1
        fill = zero_signal_value(sitk.GetArrayViewFromImage(b)) if scalar else 0.0
    resampled = sitk.Resample(b, a, sitk.Transform(), sitk.sitkLinear, float(fill), b.GetPixelID())
    # Nearest neighbour and linear interpolation take the same voxels as inside B (ITK's IsInsideBuffer:
    # within half a voxel of B's outer voxel centres), so B's extent resampled as ones is the coverage.
    ones = sitk.Image(b.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(b)
    inside = sitk.Resample(ones, a, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, sitk.sitkUInt8)
    covered = sitk.GetArrayViewFromImage(inside).astype(bool)
    if not covered.any():
        raise AMIFError(
            "The second volume's extent holds none of the first volume's voxels: check that they are registered."
        )
    return resampled, covered


def resample_onto(b, a, fill: float | None = None):
    """B resampled onto A's grid (linear); outside B's extent, `fill` (default: B's zero_signal_value,
    see resample_with_coverage); an AMIFError when the two do not overlap."""
    return resample_with_coverage(b, a, fill)[0]


def colour_window(values: np.ndarray) -> tuple[float, float]:
    """The window that maps a colour (RGB) volume's values to [0, 1], by its type and range, never by
    clipping a range it does not have: uint8, and any values all within [0, 255] of which some exceed 1
    (colours stored as float 0-255): (0, 255); values all within [0, 1]: (0, 1); otherwise the
    `robust_window` of all channels together."""
    if values.dtype == np.uint8:
        return 0.0, 255.0
    lo, hi = float(np.min(values)), float(np.max(values))
    if lo >= 0 and hi <= 1:
        return 0.0, 1.0
    if lo >= 0 and hi <= 255:
        return 0.0, 255.0
    return robust_window(values)


def _check_output(y: np.ndarray) -> None:
    """A network output that is not finite everywhere is an AMIFError: it is never returned or written."""
    if not np.isfinite(y).all():
        raise AMIFError(
            "The network produced NaN or infinite values (is the model package damaged?); nothing was written."
        )


# sitk.DICOMOrient's code: the directions in which the indices i, j, k increase (in ITK's LPS world "LPS" is
# the identity). Array rows (j) run anterior to posterior and columns (i) patient right to left: the
# radiological axial view (Slicer's: anterior up, patient right on the screen's left), so the identifier
# reads upright there; slices (k) run superior to inferior.
DISPLAY_ORIENTATION = "LPI"


def display_array(img) -> np.ndarray:
    """A SimpleITK image as a float32 array of axial slices in display orientation (the layout
    in which fuse_volumes writes the identifier: arr[k] is an axial slice, superior to inferior, as the
    radiological view shows it, row 0 most anterior, column 0 patient right); colour images give their
    luminance."""
    import SimpleITK as sitk

    arr = sitk.GetArrayViewFromImage(img)
    if img.GetDimension() == 3:
        arr = display_view(img)(arr)
    arr = arr.astype(np.float32)
    if img.GetNumberOfComponentsPerPixel() > 1:
        arr = rgb_to_ycbcr(arr[..., :3])[..., 0]
    return arr


def display_axes(img) -> tuple[list[int], tuple[int, int, int]]:
    """(perm, flips) of a 3D image: its (z, y, x) array transposed by `perm` and reversed along the axes
    where `flips` is -1 is the layout of sitk.DICOMOrient(img, DISPLAY_ORIENTATION)."""
    import itertools

    import SimpleITK as sitk

    src = np.arange(24, dtype=np.float32).reshape(4, 3, 2)  # distinct sizes identify the permutation
    probe = sitk.GetImageFromArray(src)
    probe.SetDirection(img.GetDirection())
    target = sitk.GetArrayFromImage(sitk.DICOMOrient(probe, DISPLAY_ORIENTATION))
    perm = [src.shape.index(n) for n in target.shape]
    moved = np.transpose(src, perm)
    for flips in itertools.product((1, -1), repeat=3):
        if np.array_equal(moved[tuple(slice(None, None, f) for f in flips)], target):
            return perm, flips
    raise AMIFError("Could not orient the volume for display.")  # unreachable for valid direction cosines


def display_view(img) -> Callable[[np.ndarray], np.ndarray]:
    """For a 3D image, a function taking an array in its (z, y, x[, c]) layout to a view in display
    orientation: the same layout as sitk.DICOMOrient(img, DISPLAY_ORIENTATION), without a copy."""
    perm, flips = display_axes(img)
    index = tuple(slice(None, None, f) for f in flips)
    return lambda arr: np.transpose(arr, perm + list(range(3, arr.ndim)))[index]


CPU_BATCH = 2  # 256x256 slices per network call on the CPU: the fastest per slice on 2 threads (tools/benchmark.py)
MAX_GPU_BATCH = 64  # a cap: still larger calls would mostly delay progress reports and cancel checks
SLICE_BYTES = 32 << 20  # peak memory of one 256x256 slice through the bundled model's forward pass (float32,
#                         inference); `tools/benchmark.py --gpu-only` measures it on CUDA (peak_bytes_per_256_slice)
REFERENCE_WIDTH = 44  # _width() of the bundled model's architecture, for which SLICE_BYTES holds
GPU_MEMORY_SAFETY = 2.0  # the estimate is multiplied by this before it is fitted into free memory
GPU_RESERVE = 512 << 20  # bytes left free on the GPU (cuDNN workspaces, allocator fragmentation)


def _width(cfg) -> int:
    """Full-resolution channels that are live together in the forward pass, roughly: encoder, decoder, memory."""
    return cfg.c1 * (1 + cfg.decoder_width) + cfg.mem_channels


def slice_bytes(h: int, w: int, cfg=None) -> float:
    """Estimated peak memory of one h x w slice through the network: SLICE_BYTES scaled by the pixels and,
    for an architecture `cfg` wider than the bundled model's, by its full-resolution channels."""
    scale = max(1.0, _width(cfg) / REFERENCE_WIDTH) if cfg is not None else 1.0
    return SLICE_BYTES * scale * h * w / (256 * 256)


def choose_batch(
    device, h: int, w: int, free_bytes: int | None = None, per_slice: float | None = None, batch: int | None = None
) -> int:
    """Slices of h x w per network call. Pure: the caller gives the free memory.

    `batch` given: it wins, counted in 256x256 slices (proportionally fewer slices when they are larger).
    Otherwise on the CPU (or where `free_bytes` is None): CPU_BATCH, counted the same way. On a GPU
    (`device` a torch.device or name of type cuda or mps) with `free_bytes`: as many slices as fit in
    free_bytes - GPU_RESERVE at GPU_MEMORY_SAFETY x `per_slice` bytes each (default slice_bytes(h, w)),
    at least 1 and at most MAX_GPU_BATCH."""
    kind = getattr(device, "type", None) or str(device).split(":")[0]
    if batch is not None or kind == "cpu" or free_bytes is None:
        batch = CPU_BATCH if batch is None else batch
        return max(1, min(batch, batch * 256 * 256 // (h * w)))
    per_slice = slice_bytes(h, w) if per_slice is None else per_slice
    fit = int((free_bytes - GPU_RESERVE) // (per_slice * GPU_MEMORY_SAFETY))
    return max(1, min(MAX_GPU_BATCH, fit))


@dataclass
class VolumeResult:
    image: object  # SimpleITK image, A's geometry
    key: KeyStatus
    verdict: Verdict
    windows: tuple
    device: str = "cpu"  # the torch device the network ran on


def fuse_volumes(
    a,
    b,
    package: ModelPackage,
    key=None,
    window_a: tuple[float, float] | None = None,
    window_b: tuple[float, float] | None = None,
    batch: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    device="auto",
    through_plane: float = THROUGH_PLANE_WEIGHT,
) -> VolumeResult:
    """Fuse registered volumes slice by slice (axial slices in display orientation); output on A's grid.
    `device`: "auto", "cpu", "cuda", "cuda:N" or "mps" (amif.device); one it cannot use is an AMIFError
    before anything runs. `batch`: slices per network call, counted in 256x256 slices (proportionally
    fewer when slices are larger); None picks it (choose_batch: CPU_BATCH on the CPU, from the free
    memory on a GPU).

    Intensity: B on another grid is resampled onto A's (resample_with_coverage); A's voxels outside B's
    extent take B's zero_signal_value, as if B's own background went on there. `window_a` /
    `window_b` given (e.g. a viewer's display window) are used as they are; a window not given is the
    robust_window of the volume's values, for B only those inside its extent (the fill is no part of
    it). So outside its extent B is "no signal" (0) for an ordinary volume under its own window, and
    a signed map (negative and positive values, zero background) keeps its sign: its window is on its
    own range, and its zero background is the same grey inside and outside its extent (no box).

    Through-plane: the network's residual from the max rule of each slice is filtered along the slice
    axis with weight `through_plane` (amif.throughplane; 0: off), so the sliced axis is no rougher than
    the in-plane ones.

    Memory: beyond the inputs (and B resampled, when it is), the output image (float32, A's size), one
    batch's work and one slice held back for the through-plane filter: slices are normalized, fused,
    written into the output image and verified batch by batch; no whole float copy of an input or of the
    output is made (B resampled: its values inside its extent are gathered once, in its own type, for its
    window)."""
    import SimpleITK as sitk

    device = resolve_device(device)
    _check_volume(a, "The first volume")
    _check_volume(b, "The second volume")
    if a.GetNumberOfComponentsPerPixel() != 1:
        raise AMIFError("The first volume (MRI) must be a grey (scalar) volume.")
    code, status = code_for(package, key)
    covered = None  # None: B covers every voxel of A
    if not same_geometry(a, b):
        b, covered = resample_with_coverage(b, a)
        if covered.all():
            covered = None
    # Work in the radiological display orientation (axial slices, anterior up, patient right on
    # the left), so the identifier reads upright in viewers. The display layout is a numpy view
    # (axes permuted and flipped) of A's own array layout: no reoriented copies of the volumes.
    axes = display_axes(a)
    to_display = display_view(a)
    va, vb = sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b)
    for v, name in ((va, "The first volume"), (vb, "The second volume")):
        if np.issubdtype(v.dtype, np.floating) and not all(np.isfinite(s).all() for s in _slabs(v)):
            raise AMIFError(f"{name} contains NaN or infinite values.")
    colour = vb.ndim == 4
    window_a = window_a or robust_window(va)
    inside = vb if covered is None else vb[covered]  # the fill outside B's extent is no part of its window
    window_rgb = colour_window(inside) if colour else None
    if not colour:
        window_b = window_b or robust_window(inside)
    del inside
    for window in (window_a, window_b) if window_b else (window_a,):
        if not (np.isfinite(window).all() and window[1] > window[0]):
            raise AMIFError("An intensity window must be two finite values, the upper above the lower.")
    da, db = to_display(va), to_display(vb)
    n, h, w = da.shape[:3]
    # the mark shift (verify) is measured against the sources on every stride-th slice (NaN: not measured)
    moved, stride = np.full(n, np.nan, np.float32) if package.shift else None, max(1, n // SHIFT_SLICES)
    if min(h, w) < MIN_SIDE:
        raise AMIFError(
            f"The first volume's axial slices are {w}x{h} voxels; fusion needs at least "
            f"{MIN_SIDE}x{MIN_SIDE} (a single sagittal or coronal slice cannot be fused)."
        )
    per_slice = slice_bytes(h, w, package.net.cfg)
    batch = choose_batch(device, h, w, None if batch is not None else free_memory(device), per_slice, batch)
    # the output is written into its image slab by slab: no whole copy of it is ever made
    img = sitk.Image(a.GetSize(), sitk.sitkVectorFloat32 if colour else sitk.sitkFloat32, 3 if colour else 1)
    img.CopyInformation(a)
    scores = np.full((2, n), np.nan)  # verify's score and erasure ratio of each slice with content
    mask = _identifier_tensor(package.identifier, h, w)  # drawn once: verify draws it at every call
    smoother = SliceSmoother(through_plane)

    def write(residuals, items) -> None:  # slices the smoother has made final: into the output, and scored
        if not items:
            return
        sl = slice(items[0][0], items[-1][0] + 1)
        y = np.clip(np.stack([base for _, base, _ in items]) + residuals, 0.0, 1.0).astype(np.float32)
        if colour:
            ycc = np.stack([c for _, _, c in items])
            ycc[..., 0] = y
            y = ycbcr_to_rgb(ycc).astype(np.float32)
        _paste(img, y, sl, axes, va.shape)
        grey = rgb_to_ycbcr(y)[..., 0] if colour else y
        keep = np.flatnonzero(grey.std(axis=(1, 2)) > MIN_CONTENT)
        if keep.size:
            scores[:, sl.start + keep] = _scores(grey[keep], mask)

    for start in range(0, n, batch):
        if cancel and cancel():
            raise Cancelled("Fusion cancelled.")
        sl = slice(start, min(n, start + batch))
        sa = _normalize(da[sl], window_a)
        ycc = None
        if colour:
            ycc = rgb_to_ycbcr(_normalize(db[sl][..., :3], window_rgb))
            sb = ycc[..., 0]
        else:
            sb = _normalize(db[sl], window_b)
        y = run_network(package, sa, sb, code, device)
        _check_output(y)
        probe = [i - sl.start for i in range(sl.start, sl.stop) if i % stride == stride // 2] if package.shift else []
        if probe:
            moved[sl.start + np.array(probe)] = displacements(y[probe], sa[probe], sb[probe], package.identifier)
        base = np.maximum(sa, sb)
        items = [(sl.start + i, base[i], None if ycc is None else ycc[i]) for i in range(len(y))]
        write(*smoother.push(y - base, items))
        if progress and sl.stop < n:  # one report per batch; the last once every slice is written
            progress(sl.stop, n)
    write(*smoother.finish())
    if progress:
        progress(n, n)
    del da, db
    verdict = _volume_verdict(scores, moved, package)
    for k, v in output_metadata(package, status, verdict).items():
        img.SetMetaData(k, v)
    return VolumeResult(img, status, verdict, (window_a, window_b), str(device))


MIN_CONTENT = 0.02  # verify_volume's min_content: slices of a smaller standard deviation are not scored
SLAB_VALUES = 1 << 24  # values per slab where a whole volume is checked slab by slab (64 MB of float32)


def _slabs(arr: np.ndarray):
    """Views of `arr` along its first axis, each of about SLAB_VALUES values (at least one index)."""
    step = max(1, SLAB_VALUES // max(1, arr[:1].size))
    return (arr[i : i + step] for i in range(0, arr.shape[0], step))


def _paste(img, y: np.ndarray, sl: slice, axes, shape) -> None:
    """Write display slices `sl` (y: (k, h, w[, 3]) in display layout) into `img`, a SimpleITK image of
    array layout `shape` whose display_axes are `axes`, in place: only a slab of y's size is copied."""
    import SimpleITK as sitk

    perm, flips = axes
    axis = perm[0]  # the array axis along which display slices run
    lo = shape[axis] - sl.stop if flips[0] == -1 else sl.start
    slab_shape = list(shape[:3])
    slab_shape[axis] = sl.stop - sl.start
    slab = np.empty(slab_shape + list(y.shape[3:]), np.float32)
    np.transpose(slab, perm + list(range(3, slab.ndim)))[tuple(slice(None, None, f) for f in flips)] = y
    region = [slice(None)] * 3
    region[2 - axis] = slice(lo, lo + slab_shape[axis])  # SimpleITK indexes (x, y, z)
    img[tuple(region)] = sitk.GetImageFromArray(slab, isVector=y.ndim == 4)


def _identifier_tensor(identifier: str, h: int, w: int):
    import torch

    return torch.from_numpy(identifier_mask(identifier, h, w))[None, None]


def _scores(grey: np.ndarray, mask) -> np.ndarray:
    """verify's (scores, erasure ratios) of finite slices (n, h, w) in [0, 1], shape (2, n); `mask` is
    _identifier_tensor's (verify.scores_and_erasure without drawing the mask again)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(grey, np.float32))[:, None]
    return np.stack([score_tensor(x, mask).numpy(), erasure_tensor(x, mask).numpy()])


def _volume_verdict(scores: np.ndarray, moved, package: ModelPackage) -> Verdict:
    """verify_volume's verdict (verify.volume_verdict) from the per-slice scores and erasure ratios (NaN: a
    slice without content, not scored) and displacements (None: the model has no mark shift) that
    fuse_volumes measured slab by slab."""
    keep = np.isfinite(scores[0])
    return volume_verdict(
        scores[0, keep], scores[1, keep], package.threshold, None if moved is None else moved[keep], package.shift
    )


def output_metadata(package: ModelPackage, status: KeyStatus, verdict: Verdict) -> dict[str, str]:
    """What goes into an output's metadata (never the secret)."""
    return {
        "AMIF_model_id": package.model_id,
        "AMIF_key_id": status.key_id or "none",
        "AMIF_key_state": status.state,
        "AMIF_watermark": verdict.state,
        "AMIF_score": f"{verdict.score:.4f}",
        "AMIF_threshold": f"{verdict.threshold:.4f}",
    }
