"""Through-plane consistency for volumes fused one slice at a time.

The network sees one axial slice at a time, so its departures from the sources' max rule (the
residual, fused - max(A, B)) vary from slice to slice on their own and the sliced axis comes out
rougher than the in-plane axes. `SliceSmoother` filters the residual along the slice axis with the
kernel [w, 1 - 2w, w] (the first and last slice repeat themselves beyond the volume) and adds it back
to the max rule: the max rule's own through-plane detail is untouched, and whatever the network writes
identically in every slice (the identifier's strokes, the owner's trace) passes unchanged.

Slices arrive in order, a batch at a time; a slice is final once its successor has arrived, so the
smoother holds one slice back and memory stays at one extra slice whatever the volume's size.
"""

from __future__ import annotations

import numpy as np

THROUGH_PLANE_WEIGHT = 0.2  # w: the smallest of 0.1-0.33 that leaves the sliced axis of the bundled sample's
# keyed fusion within 3% of the in-plane axes' roughness (research/tools/through_plane.py)


class SliceSmoother:
    """Streams residual slices (in slice order) and gives back filtered ones as they become final.

    push(residuals, items): `residuals` (k, h, w) of the next k slices and k `items` (anything per slice,
    handed back with it) -> (filtered residuals (m, h, w), their m items), m <= k: the slices now final,
    in order, the first of them possibly one held from the previous push. finish() -> the same for the
    slice still held (empty when none). Every slice pushed comes back exactly once, filtered by
    w * before + (1 - 2w) * itself + w * after."""

    def __init__(self, weight: float = THROUGH_PLANE_WEIGHT):
        if not 0.0 <= weight <= 0.5:
            raise ValueError("the through-plane weight must lie in [0, 0.5]")
        self.weight = float(weight)
        self._before = None  # residual of the slice before the held one (None: the held one is the first)
        self._held = None  # (residual, item) of the latest slice, waiting for its successor

    def _filtered(self, before, at, after) -> np.ndarray:
        w = self.weight
        return (w * before + (1.0 - 2.0 * w) * at + w * after).astype(np.float32, copy=False)

    def push(self, residuals, items) -> tuple[np.ndarray, list]:
        slices = list(np.asarray(residuals, np.float32))
        items = list(items)
        if len(slices) != len(items):
            raise ValueError("one item per residual slice")
        if self._held is not None:
            slices.insert(0, self._held[0])
            items.insert(0, self._held[1])
        if not slices:
            return np.empty((0, 0, 0), np.float32), []
        out = []
        for i in range(len(slices) - 1):
            before = slices[i - 1] if i else (self._before if self._before is not None else slices[0])
            out.append(self._filtered(before, slices[i], slices[i + 1]))
        if len(slices) > 1:
            self._before = slices[-2]
        self._held = (slices[-1], items[-1])
        return (np.stack(out) if out else np.empty((0, *slices[0].shape), np.float32)), items[:-1]

    def finish(self) -> tuple[np.ndarray, list]:
        if self._held is None:
            return np.empty((0, 0, 0), np.float32), []
        at, item = self._held
        before = self._before if self._before is not None else at
        self._held, self._before = None, None
        return self._filtered(before, at, at)[None], [item]
