"""Draw the published reports' measurement figures from their committed JSON alone.

    python research/tools/make_doc_figures.py [--out FOLDER]

docs/reports/attack/curves.png (learned removal against leaked pairs N, fine-tuning and training from
scratch against steps) is drawn from docs/reports/attack/report.json, and
docs/reports/evaluation/ratios.png (each method's metrics as a ratio to the max rule's) from
docs/reports/evaluation/harvard-test.json, with the plotting code of research/tools/make_attack_report.py
and research/tools/make_report.py; no model, data or attack is run. Each figure is saved with a
256-colour palette (a third of the size, the same picture) and records the SHA-256 of the JSON it
was drawn from (of its content) (a test checks that it is the committed JSON's). With --out, the figures go to FOLDER
(attack/curves.png, evaluation/ratios.png) instead of over the published ones. Run it after either
report tool has rewritten its JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REPORTS = ROOT / "docs" / "reports"
# figure (relative to the reports folder) -> (its JSON, the tool that draws it, the tool's plotting function)
FIGURES = {
    "attack/curves.png": ("attack/report.json", "make_attack_report", "curves"),
    "evaluation/ratios.png": ("evaluation/harvard-test.json", "make_report", "plot_ratios"),
}
SOURCE_KEYS = ("Source", "Source-SHA256")  # PNG text chunks: the JSON a figure was drawn from


def tool(name: str):
    """research/tools/NAME.py imported as a module (the tools are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def palette_png(png: bytes, source: str, sha: str) -> bytes:
    """The PNG redrawn with a 256-colour palette (deterministic), its only metadata the JSON it was drawn from: its
    path under docs/reports/ and its content's SHA-256 (SOURCE_KEYS, digest)."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text(SOURCE_KEYS[0], source)
    info.add_text(SOURCE_KEYS[1], sha)
    out = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(
        out, "PNG", optimize=True, pnginfo=info
    )
    return out.getvalue()


def digest(doc: dict) -> str:
    """SHA-256 of the JSON's content (keys sorted, no whitespace: line endings and indentation do not count)."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def source_of(path: Path) -> tuple[str, str]:
    """The (JSON path, its SHA-256) a figure written here records."""
    from PIL import Image

    text = Image.open(path).text
    return text.get(SOURCE_KEYS[0], ""), text.get(SOURCE_KEYS[1], "")


def draw(figure: str, raw: bytes, path: Path) -> Path | None:
    """Draw FIGURE (a key of FIGURES) from RAW, its report's JSON file, to PATH; None (and no file) when the JSON has
    nothing to draw (an attack report without learned removal or fine-tuning)."""
    source, name, function = FIGURES[figure]
    doc = json.loads(raw.decode("utf-8"))
    sha = digest(doc)
    module = tool(name)
    if name == "make_report":
        doc = module.with_twin_mean(json.loads(json.dumps(doc)))  # the twins' mean row, as the report plots it
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        if getattr(module, function)(doc, tmp) is False:
            return None
        path.write_bytes(palette_png(tmp.read_bytes(), source, sha))
    finally:
        tmp.unlink(missing_ok=True)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reports", type=Path, default=REPORTS, help="the folder of the JSON reports")
    p.add_argument("--out", type=Path, help="write the figures here (default: beside their JSON)")
    args = p.parse_args(argv)
    for figure, (source, _, _) in FIGURES.items():
        written = draw(figure, (args.reports / source).read_bytes(), (args.out or args.reports) / figure)
        print(f"wrote {written}" if written else f"{source}: nothing to draw for {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
