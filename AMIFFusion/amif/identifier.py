"""The copyright identifier: a text laid out on the whole slice with a built-in 5x7 bitmap font.

The network never reads this mask at inference (the identifier lives in its weights). The mask is
used to build the training targets and by `verify` to look for the identifier in an image. The
font is part of the code, so the layout is the same on every machine and Pillow version.
"""

from __future__ import annotations

import numpy as np

from .errors import AMIFError

# 5x7 glyphs, one string of 7 rows per character ('#' = ink).
_GLYPHS = {
    "A": ".###.|#...#|#...#|#####|#...#|#...#|#...#",
    "B": "####.|#...#|#...#|####.|#...#|#...#|####.",
    "C": ".###.|#...#|#....|#....|#....|#...#|.###.",
    "D": "####.|#...#|#...#|#...#|#...#|#...#|####.",
    "E": "#####|#....|#....|####.|#....|#....|#####",
    "F": "#####|#....|#....|####.|#....|#....|#....",
    "G": ".###.|#...#|#....|#.###|#...#|#...#|.####",
    "H": "#...#|#...#|#...#|#####|#...#|#...#|#...#",
    "I": "#####|..#..|..#..|..#..|..#..|..#..|#####",
    "J": "..###|...#.|...#.|...#.|#..#.|#..#.|.##..",
    "K": "#...#|#..#.|#.#..|##...|#.#..|#..#.|#...#",
    "L": "#....|#....|#....|#....|#....|#....|#####",
    "M": "#...#|##.##|#.#.#|#.#.#|#...#|#...#|#...#",
    "N": "#...#|##..#|#.#.#|#..##|#...#|#...#|#...#",
    "O": ".###.|#...#|#...#|#...#|#...#|#...#|.###.",
    "P": "####.|#...#|#...#|####.|#....|#....|#....",
    "Q": ".###.|#...#|#...#|#...#|#.#.#|#..#.|.##.#",
    "R": "####.|#...#|#...#|####.|#.#..|#..#.|#...#",
    "S": ".####|#....|#....|.###.|....#|....#|####.",
    "T": "#####|..#..|..#..|..#..|..#..|..#..|..#..",
    "U": "#...#|#...#|#...#|#...#|#...#|#...#|.###.",
    "V": "#...#|#...#|#...#|#...#|#...#|.#.#.|..#..",
    "W": "#...#|#...#|#...#|#.#.#|#.#.#|#.#.#|.#.#.",
    "X": "#...#|#...#|.#.#.|..#..|.#.#.|#...#|#...#",
    "Y": "#...#|#...#|.#.#.|..#..|..#..|..#..|..#..",
    "Z": "#####|....#|...#.|..#..|.#...|#....|#####",
    "0": ".###.|#...#|#..##|#.#.#|##..#|#...#|.###.",
    "1": "..#..|.##..|..#..|..#..|..#..|..#..|.###.",
    "2": ".###.|#...#|....#|...#.|..#..|.#...|#####",
    "3": "####.|....#|....#|.###.|....#|....#|####.",
    "4": "...#.|..##.|.#.#.|#..#.|#####|...#.|...#.",
    "5": "#####|#....|####.|....#|....#|#...#|.###.",
    "6": ".###.|#....|#....|####.|#...#|#...#|.###.",
    "7": "#####|....#|...#.|..#..|.#...|.#...|.#...",
    "8": ".###.|#...#|#...#|.###.|#...#|#...#|.###.",
    "9": ".###.|#...#|#...#|.####|....#|....#|.###.",
    " ": ".....|.....|.....|.....|.....|.....|.....",
    "-": ".....|.....|.....|#####|.....|.....|.....",
    ".": ".....|.....|.....|.....|.....|.##..|.##..",
    ":": ".....|.##..|.##..|.....|.##..|.##..|.....",
    "/": "....#|....#|...#.|..#..|.#...|#....|#....",
    "(": "...#.|..#..|.#...|.#...|.#...|..#..|...#.",
    ")": ".#...|..#..|...#.|...#.|...#.|..#..|.#...",
    "&": ".##..|#..#.|#.#..|.#...|#.#.#|#..#.|.##.#",
    "@": ".###.|#...#|#.###|#.#.#|#.###|#....|.###.",
    "©": ".###.|#...#|#.#.#|##..#|#.#.#|#...#|.###.",
}
SUPPORTED = frozenset(_GLYPHS) | {"·"}
MAX_LINE = 12  # characters per line; longer texts are wrapped at spaces


def check_text(text: str) -> str:
    """Normalize an identifier text (upper case) and check every character has a glyph."""
    text = " ".join(text.upper().split())
    if not text:
        raise AMIFError("The identifier text is empty.")
    bad = sorted({c for c in text if c not in SUPPORTED})
    if bad:
        raise AMIFError(f"The identifier text has characters without a glyph: {''.join(bad)!r}.")
    return text


def layout_lines(text: str) -> list[str]:
    """Split at ' · ' (the separator) and wrap long parts at spaces to at most MAX_LINE chars."""
    lines: list[str] = []
    for part in check_text(text).split("·"):
        line = ""
        for word in part.split():
            cand = f"{line} {word}".strip()
            if len(cand) <= MAX_LINE or not line:
                line = cand
            else:
                lines.append(line)
                line = word
        if line:
            lines.append(line)
    return [ln[: MAX_LINE * 2] for ln in lines]


def _bitmap(line: str) -> np.ndarray:
    cols = []
    for ch in line:
        g = _GLYPHS.get(ch, _GLYPHS["-"])
        cols.append(np.array([[c == "#" for c in row] for row in g.split("|")], dtype=np.float32))
        cols.append(np.zeros((7, 1), np.float32))
    return np.concatenate(cols[:-1], axis=1)


def identifier_mask(text: str, height: int, width: int, supersample: int = 4) -> np.ndarray:
    """Float mask in [0, 1] of shape (height, width): the identifier laid out on the whole slice.

    The lines are repeated in rows down the slice and centred, scaled with the slice so the same
    layout appears at any image size. Rendered at `supersample` times the size and area-averaged, in
    bands of rows, so memory beyond the result stays a few MB whatever the size.
    """
    lines = layout_lines(text)
    rows = (lines * 4)[: max(3, len(lines))]
    s = supersample
    H, W = height * s, width * s
    longest = max(len(ln) for ln in rows) * 6 - 1
    unit = min(0.8 * W / longest, 0.8 * H / (len(rows) * 10))  # glyph pixel size
    placed = []  # (top, left, bitmap, its rows and columns at each canvas pixel) on the supersampled canvas
    for i, line in enumerate(rows):
        bm = _bitmap(line)
        h, w = int(round(7 * unit)), int(round(bm.shape[1] * unit))
        yy = (np.arange(h) / unit).astype(int).clip(0, 6)
        xx = (np.arange(w) / unit).astype(int).clip(0, bm.shape[1] - 1)
        placed.append((int(round(H * (i + 0.5) / len(rows) - h / 2)), int(round(W / 2 - w / 2)), bm, yy, xx))
    out = np.empty((height, width), np.float32)
    band = max(1, (1 << 20) // (W * s))  # output rows rendered at a time: a canvas of 4 MB (for 1-row bands, more)
    for r0 in range(0, height, band):
        r1 = min(height, r0 + band)
        canvas = np.zeros(((r1 - r0) * s, W), np.float32)
        for top, left, bm, yy, xx in placed:  # the rows of each line's glyphs inside this band
            g0, g1 = max(top, r0 * s), min(top + len(yy), r1 * s)
            if g0 < g1:
                part = canvas[g0 - r0 * s : g1 - r0 * s, left : left + len(xx)]
                part[...] = np.maximum(part, bm[yy[g0 - top : g1 - top]][:, xx[: part.shape[1]]])
        out[r0:r1] = canvas.reshape(r1 - r0, s, width, s).mean(axis=(1, 3))
    return out
