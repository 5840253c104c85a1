"""AMIF Fusion for 3D Slicer: MRML adapter around the `amif` engine (imports slicer and vtk, never qt).

`logic` (fuse, key_state) needs the engine's dependencies only when it runs; `dependencies` and
`sampledata` need nothing but the standard library.
"""
