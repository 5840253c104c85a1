"""AMIF Fusion for 3D Slicer: MRML adapter and panel state around the `amif` engine (imports slicer and
vtk, never qt).

`parameters` (the parameter node's fields), `panel` (what the panel shows and Apply uses),
`dependencies` and `sampledata` load without torch or SimpleITK; `logic` (fuse, key_state) and
`colortable` need the engine's dependencies only when fusion runs.
"""
