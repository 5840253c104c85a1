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
    layout appears at any image size. Rendered at `supersample` times the size and area-averaged.
    """
    lines = layout_lines(text)
    rows = (lines * 4)[: max(3, len(lines))]
    s = supersample
    H, W = height * s, width * s
    canvas = np.zeros((H, W), np.float32)
    longest = max(len(ln) for ln in rows) * 6 - 1
    unit = min(0.8 * W / longest, 0.8 * H / (len(rows) * 10))  # glyph pixel size
    for i, line in enumerate(rows):
        bm = _bitmap(line)
        h, w = int(round(7 * unit)), int(round(bm.shape[1] * unit))
        yy = (np.arange(h) / unit).astype(int).clip(0, 6)
        xx = (np.arange(w) / unit).astype(int).clip(0, bm.shape[1] - 1)
        glyph = bm[yy][:, xx]
        cy = int(round(H * (i + 0.5) / len(rows) - h / 2))
        cx = int(round(W / 2 - w / 2))
        canvas[cy : cy + h, cx : cx + w] = np.maximum(canvas[cy : cy + h, cx : cx + w], glyph)
    return canvas.reshape(height, s, width, s).mean(axis=(1, 3))
