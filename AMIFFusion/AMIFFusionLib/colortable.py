"""What colour the user sees: a scalar volume's voxels mapped to RGB through its display node.

A PET or SPECT in Slicer is usually a scalar volume shown through a colour node (PET-Heat, Rainbow,
a custom vtkMRMLColorTableNode or vtkMRMLProceduralColorNode). `displayed_rgb(node)` gives the
colours the slice views show for its voxels, computed as vtkMRMLScalarVolumeDisplayNode does:

1. Window/level: each value becomes a byte 0..255, by `window_level_bytes`, in numpy:
   - Slicer >= 5.12 (vtkImageMapToWindowLevelAddon, in double precision): with lower = level -
     window/2 and upper = lower + window, a value at or below `lower` gives 0, at or above `upper`
     255, and one in between int(255 * f(t)), t = (value - lower) / window, where f is the display
     node's window mapping method: t (Linear), log10(1 + 9t) (Logarithmic) or
     1 - log10(1 + 9(1 - t)) (InverseLogarithmic). A negative window swaps the ends and takes
     1 - f(t) (0 and 255 swap too).
   - Slicer <= 5.10 (VTK's vtkImageMapToWindowLevelColors): the same linear map,
     int((value + window/2 - level) * 255/window), but `lower` and `upper` are first clamped to the
     range of the voxel type and cast to it (truncated toward zero for integer voxels), and the
     bytes given at and beyond the two ends are computed from the clamped ends (0 and 255, or 254
     where floating-point rounding of upper - lower falls short of the window).
2. Colour (vtkImageMapToColors, RGBA, then the RGB components): the byte is looked up in the
   display node's lookup table, whose range the display node sets to 0..255. A colour table node
   gives its vtkLookupTable, a procedural colour node (PET-Heat, ...) its colour transfer function
   sampled into a 256-entry vtkLookupTable over the function's range (both are
   vtkMRMLColorNode::GetLookupTable); the display node's "invert" option reverses the entries.
   A vtkLookupTable with N entries maps byte b to entry int(b * N / 255), the last entry for 255:
   byte 0 (values below the window) is the first entry, 255 (above it) the last. The byte -> colour
   step is computed once, as a 256-colour palette, by VTK itself on the display node's own table.

Display nodes whose scalar range mode is "direct mapping" (not offered by the Volumes module) skip
step 1: the table maps the raw values over its own range; that is reproduced too (through VTK).

Decisions, where what the user sees is not a colour:
- No colour (None): no display node, a display node that is not a vtkMRMLScalarVolumeDisplayNode
  (label maps), a vector (RGB) volume (it is already colour), no colour node or table, a non-finite
  window or level, and a table whose every entry has R = G = B (within one 8-bit level). That covers
  Slicer's "Grey" and "InvertedGrey" tables, and "Grey" with the display's invert option: an
  inverted grey display is fused as grey on its display window with bright = high values, not
  inverted, because the network fuses a second image whose signal is bright.
- Tables that are chromatic but of one hue (Red, Green, Warm1, ...) are colour: the fusion then
  works on their displayed luminance (Y of BT.601), which for a saturated single hue spans only
  part of 0..1 (pure red: 0 to 0.299), so the second volume weighs less in the fused image. Fusing
  such a volume as grey on its window is `fuse(..., use_color_table=False)`.
- The display node's threshold (ApplyThreshold, lower/upper threshold) only sets the voxels'
  opacity in the slice views, and the tables' alpha is opacity too: both are ignored, the colour
  is that of an opaque layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import vtk

CHUNK_VOXELS = 1 << 22  # voxels mapped at a time: bounds the float64 temporaries to ~32 MB
DIRECT_MAPPING = 4  # vtkMRMLDisplayNode::UseDirectMapping
LINEAR, LOGARITHMIC, INVERSE_LOGARITHMIC = 0, 1, 2  # vtkImageMapToWindowLevelAddon::WindowMappingMode


@dataclass(frozen=True, eq=False)
class ColorMapping:
    """How a scalar volume's display node colours its values."""

    name: str  # the colour node's name, e.g. "PET-Heat"
    window: float
    level: float
    method: int | None  # window mapping method (LINEAR, ...); None: Slicer <= 5.10's window/level filter
    palette: np.ndarray | None  # (256, 3) uint8: the colour of each window/level byte (None: direct mapping)
    table: object = None  # direct mapping only: the vtkScalarsToColors applied to the raw values

    @property
    def window_range(self) -> tuple[float, float]:
        """The display window as (low, high)."""
        half = abs(self.window) / 2
        return (self.level - half, self.level + half)

    def __call__(self, values: np.ndarray) -> np.ndarray:
        """Scalar values of any shape -> uint8 RGB of shape values.shape + (3,), mapped in chunks."""
        values = np.asarray(values)
        flat = values.reshape(-1)
        out = np.empty((flat.size, 3), np.uint8)
        for start in range(0, flat.size, CHUNK_VOXELS):
            part = flat[start : start + CHUNK_VOXELS]
            if self.palette is None:
                rgb = through_table(self.table, part)
            else:
                rgb = self.palette[window_level_bytes(part, self.window, self.level, self.method)]
            out[start : start + part.size] = rgb
        return out.reshape(values.shape + (3,))


def window_level_bytes(values: np.ndarray, window: float, level: float, method: int | None = LINEAR) -> np.ndarray:
    """Finite values -> the window/level byte 0..255 the display node's first filter gives them.

    method: the display node's window mapping method (Slicer >= 5.12, vtkImageMapToWindowLevelAddon):
    LINEAR, LOGARITHMIC or INVERSE_LOGARITHMIC; None for Slicer <= 5.10's filter, VTK's
    vtkImageMapToWindowLevelColors (luminance output, no lookup table)."""
    values = np.asarray(values)
    if method is None:
        return _vtk_window_level_bytes(values, window, level)
    lower = level - window / 2.0
    upper = lower + window
    invert = lower > upper
    if invert:
        lower, upper = upper, lower
    x = values.astype(np.float64)
    factor = np.where(x <= lower, 0.0, 1.0)
    mid = (x > lower) & (x < upper)
    t = (x[mid] - lower) / (upper - lower)
    if method == LOGARITHMIC:
        t = np.log10(1.0 + 9.0 * t)
    elif method == INVERSE_LOGARITHMIC:
        t = 1.0 - np.log10(1.0 + 9.0 * (1.0 - t))
    factor[mid] = t
    if invert:
        factor = 1.0 - factor
    return np.clip(255.0 * factor, 0.0, 255.0).astype(np.uint8)  # the C++ cast truncates


def _vtk_window_level_bytes(values: np.ndarray, window: float, level: float) -> np.ndarray:
    """vtkImageMapToWindowLevelColors: the window's ends are clamped to the range of the values'
    type and cast to it (truncated toward zero for integers) before values are compared with them."""
    dtype = values.dtype if values.dtype.kind in "uif" else np.dtype(np.float64)
    values = values.astype(dtype, copy=False)
    info = np.finfo(dtype) if dtype.kind == "f" else np.iinfo(dtype)
    t_min, t_max = float(info.min), float(info.max)
    f_lower = level - abs(window) / 2
    f_upper = f_lower + abs(window)
    adjusted_lower = min(max(f_lower, t_min), t_max)
    adjusted_upper = min(max(f_upper, t_min), t_max)
    lower = np.array(adjusted_lower).astype(dtype)  # static_cast<T>
    upper = np.array(adjusted_upper).astype(dtype)
    if window > 0:
        ends = (255.0 * (x - f_lower) / window for x in (adjusted_lower, adjusted_upper))
    elif window < 0:
        ends = (255.0 + 255.0 * (x - f_lower) / window for x in (adjusted_lower, adjusted_upper))
    else:
        ends = (0.0, 255.0)
    lower_val, upper_val = (np.uint8(min(max(x, 0.0), 255.0)) for x in ends)
    out = np.empty(values.shape, np.uint8)
    low, high = values <= lower, values >= upper
    mid = ~(low | high)
    if window != 0 and mid.any():
        scaled = (values[mid].astype(np.float64) + (window / 2.0 - level)) * (255.0 / window)
        out[mid] = np.clip(scaled, 0.0, 255.0).astype(np.uint8)  # the C++ cast truncates
    out[high] = upper_val
    out[low] = lower_val  # the filter tests "at or below lower" first
    return out


def through_table(table, values: np.ndarray) -> np.ndarray:
    """1-D values -> (n, 3) uint8 RGB through vtkImageMapToColors with `table` (RGBA output, RGB
    kept), the filter the display node colours with."""
    from vtk.util import numpy_support

    values = np.ascontiguousarray(values.reshape(-1))
    if values.dtype == bool:
        values = values.astype(np.uint8)
    image = vtk.vtkImageData()
    image.SetDimensions(values.size, 1, 1)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(values, deep=True))
    mapper = vtk.vtkImageMapToColors()
    mapper.SetLookupTable(table)
    mapper.SetOutputFormatToRGBA()
    mapper.SetInputData(image)
    mapper.Update()
    rgba = numpy_support.vtk_to_numpy(mapper.GetOutput().GetPointData().GetScalars())
    return np.array(rgba.reshape(-1, 4)[:, :3])


def display_lookup_table(display, color_node):
    """The lookup table the display node colours with: its own (vtkMRMLScalarVolumeDisplayNode::
    GetLookupTable, Slicer >= 5.10), or, where that is missing or not yet built, the same table made
    from the colour node as the display node's UpdateLookupTable makes it."""
    own = display.GetLookupTable() if hasattr(display, "GetLookupTable") else None
    if own is not None:
        return own
    return lookup_table_for(display, color_node)


def lookup_table_for(display, color_node):
    """vtkMRMLScalarVolumeDisplayNode::UpdateLookupTable: the colour node's lookup table (for a
    procedural node without one, its colour transfer function), copied with its range set to 0..255
    unless it already is, entries reversed when the display inverts the range; used as it is with
    direct mapping. None when the colour node has no table."""
    if color_node is None:
        return None
    table = color_node.GetLookupTable()
    if table is None and color_node.IsA("vtkMRMLProceduralColorNode"):
        table = color_node.GetColorTransferFunction()
    if table is None or display.GetScalarRangeFlag() == DIRECT_MAPPING:
        return table
    invert = bool(display.GetInvertDisplayScalarRange()) if hasattr(display, "GetInvertDisplayScalarRange") else False
    if tuple(table.GetRange()) == (0.0, 255.0) and not invert:
        return table
    copy = table.NewInstance()
    copy.DeepCopy(table)
    copy.SetRange(0, 255)
    if not invert:
        return copy
    if copy.IsA("vtkColorTransferFunction"):  # its nodes keep their positions: SetRange does not move them
        low, high = copy.GetRange()
        inverted = vtk.vtkColorTransferFunction()
        for i in range(copy.GetSize()):
            point = [0.0] * 6
            copy.GetNodeValue(i, point)
            inverted.AddRGBPoint(low + (high - point[0]), *point[1:])
        return inverted
    n = copy.GetNumberOfTableValues()
    inverted = vtk.vtkLookupTable()
    inverted.SetNumberOfTableValues(n)
    inverted.SetRange(0, 255)
    for i in range(n):
        inverted.SetTableValue(n - 1 - i, copy.GetTableValue(i))
    return inverted


def color_mapping(node) -> ColorMapping | None:
    """The colour mapping of a scalar volume node's display, or None where the display is not a
    colour one (see the module's docstring: grey tables, no display node, vector volumes, ...)."""
    if (
        node is None
        or not node.IsA("vtkMRMLScalarVolumeNode")
        or node.IsA("vtkMRMLVectorVolumeNode")
        or node.IsA("vtkMRMLLabelMapVolumeNode")
    ):
        return None
    image = node.GetImageData()
    if image is not None and image.GetNumberOfScalarComponents() != 1:
        return None
    display = node.GetDisplayNode()
    if display is None or not display.IsA("vtkMRMLScalarVolumeDisplayNode"):
        return None
    color_node = display.GetColorNode()
    window, level = display.GetWindow(), display.GetLevel()
    if color_node is None or not (np.isfinite(window) and np.isfinite(level)):
        return None
    table = display_lookup_table(display, color_node)
    if table is None:
        return None
    if display.GetScalarRangeFlag() == DIRECT_MAPPING:
        low, high = table.GetRange()
        entries = table.GetNumberOfTableValues() if table.IsA("vtkLookupTable") else 256
        palette, samples = None, through_table(table, np.linspace(low, high, max(4096, 4 * entries)))
    else:
        palette = through_table(table, np.arange(256, dtype=np.uint8))
        palette.setflags(write=False)
        samples = palette
    spread = samples.max(axis=1).astype(int) - samples.min(axis=1)
    if spread.max() <= 1:
        return None
    name = color_node.GetName() or color_node.GetID() or "colour table"
    method = display.GetWindowMappingMethod() if hasattr(display, "GetWindowMappingMethod") else None
    if method not in (None, LOGARITHMIC, INVERSE_LOGARITHMIC):
        method = LINEAR
    return ColorMapping(name, float(window), float(level), method, palette, table if palette is None else None)


def displayed_rgb(node) -> np.ndarray | None:
    """The node's voxels as the slice views colour them: (k, j, i, 3) uint8 in the layout of
    slicer.util.arrayFromVolume; None where `color_mapping(node)` is None or the node has no voxels."""
    import slicer

    mapping = color_mapping(node)
    if mapping is None or node.GetImageData() is None or node.GetImageData().GetPointData().GetScalars() is None:
        return None
    return mapping(slicer.util.arrayFromVolume(node))
