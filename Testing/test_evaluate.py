import json
import shutil

import numpy as np
import pytest
from PIL import Image

from amif.cli import main
from amif.errors import AMIFError
from amif_research.baselines import BASELINES
from amif_research.evaluate import load_twin, tile
from amif_research.metrics import NAMES
from amif_research.reader import READER_NAMES
from conftest import need_harvard


def _synthetic_pairs(root, n=2, size=64):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    for folder, kind in (("CT-MRI", "CT"), ("PET-MRI", "PET"), ("SPECT-MRI", "SPECT")):
        for i in range(n):
            mri = 120 + 80 * np.sin(xx / (4 + i)) * np.cos(yy / 6) + 10 * rng.standard_normal((size, size))
            other = 255 * np.exp(-((xx - 32) ** 2 + (yy - 30 - i) ** 2) / 200.0)
            if kind != "CT":
                other = np.stack([other, 0.5 * other, 255 - other], -1)
            for sub, img in (("MRI", mri), (kind, other)):
                d = root / folder / "test" / sub
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"case{i}.png")
    return root


def _twin_copy(pkg_dir, dest, stem):
    """An unprotected twin package: the same weights, a manifest marked "twin" with no identifier or key."""
    manifest = json.loads((pkg_dir / "tiny.json").read_text())
    manifest.update(twin=True, identifier="", key_id="", weights=f"{stem}.safetensors")
    shutil.copy(pkg_dir / "tiny.safetensors", dest / f"{stem}.safetensors")
    (dest / f"{stem}.json").write_text(json.dumps(manifest))
    return dest / stem


def _table(text, heading):
    """The rows of the metric table (the section's first table) under `heading`."""
    part = text.split(f"## {heading}")[1].split("\n## ")[0]
    block = next(b for b in part.split("\n\n") if b.startswith("| method"))
    return [line for line in block.splitlines() if line.startswith("| ") and not line.startswith("| method")]


@pytest.fixture
def unclamped_rim(monkeypatch):
    """The slice rim's coordinates unclamped (inference.coord_bounds), so that a twin copy, which has no identifier,
    reads the network's coordinates exactly as the keyed model's unkeyed run does."""
    from amif import inference

    monkeypatch.setattr(inference, "EDGE_COORD", 1.0)
    inference.coord_bounds.cache_clear()
    yield
    inference.coord_bounds.cache_clear()


def test_evaluate_report_on_synthetic_pairs(tiny_package, tmp_path, unclamped_rim):
    _, key, d = tiny_package
    data = _synthetic_pairs(tmp_path / "data")
    twins = [_twin_copy(d, tmp_path, f"twin{s}") for s in (1, 2)]
    out = tmp_path / "rep" / "report.md"
    out.parent.mkdir()
    argv = ["evaluate", "-m", str(d / "tiny"), "-k", str(key), "--data", str(data), "-o", str(out), "-q"]
    for t in twins:
        argv += ["--twin", str(t)]
    assert main(argv) == 0
    text = out.read_text()
    expected = ["AMIF keyed", "AMIF unkeyed", "twin (twin1)", "twin (twin2)", "twin mean ± sd (2 seeds)", *BASELINES]
    for kind in ("CT", "PET", "SPECT"):
        rows = _table(text, f"{kind}-MRI (2 pairs)")
        assert [r.split(" | ")[0][2:] for r in rows] == expected
        for r in rows:
            cells = r.strip("| ").split(" | ")
            assert len(cells) == len(NAMES) + 2 and all("±" in c for c in cells[1:-1])
        assert rows[expected.index("max")].endswith("| 8/8 |")
        # the twin has the keyed model's weights, so on the zero code it equals the unkeyed row
        assert rows[1].split(" | ")[1:] == rows[2].split(" | ")[1:]
        fig = out.parent / "report-figures" / f"{kind}.png"
        with Image.open(fig) as im:
            im.verify()
        with Image.open(fig) as im:
            assert im.format == "PNG" and im.mode == "L" and im.size[1] == 2 * (64 + 14)
            assert im.size[0] == 64 * (2 + 4 + len(BASELINES))  # sources, AMIF keyed/unkeyed, 2 twins, baselines
        assert f"(report-figures/{kind}.png)" in text
    assert text.count("Within 2% of twin (AMIF keyed") == 3
    # the JSON beside the report holds the same aggregates as its tables
    agg = json.loads(out.with_suffix(".json").read_text())
    assert agg["metrics"] == list(NAMES) and set(agg["rows"]) == set(expected) - {"twin mean ± sd (2 seeds)"}
    ct = _table(text, "CT-MRI (2 pairs)")[0].split(" | ")[1:-1]
    assert [f"{m:.3f}" for m in agg["rows"]["AMIF keyed"]["CT"]["mean"]] == [c.split(" ± ")[0] for c in ct]
    # which weights were measured: the packages' own hashes
    sha = json.loads((d / "tiny.json").read_text())["weights_sha256"]
    assert agg["models"][0]["weights_sha256"] == sha and len(sha) == 64
    assert [t["weights_sha256"] for t in agg["twins"].values()] == [sha, sha]
    # the reader measures: one table per pair type, their aggregates under "reader" (no colour for CT)
    assert text.count("| method | anatomy under function |") == 3
    reader = agg["reader"]
    assert reader["measures"] == list(READER_NAMES) and set(reader["rows"]) == set(agg["rows"])
    ct, pet = reader["rows"]["max"]["CT"], reader["rows"]["max"]["PET"]
    assert ct["mean"][3:] == [None, None] and ct["n"][3:] == [0, 0] and pet["n"][3:] == [2, 2]
    assert ct["mean"][1:3] == [0.0, 0.0]  # the max rule never leaves the sources' range


def test_evaluate_without_figures(tiny_package, tmp_path):
    _, key, d = tiny_package
    data = _synthetic_pairs(tmp_path / "data")
    out = tmp_path / "tables.md"
    assert main(["evaluate", "-m", str(d / "tiny"), "--data", str(data), "-o", str(out), "-q", "--no-figures"]) == 0
    assert out.exists() and out.with_suffix(".json").exists()
    assert not (tmp_path / "tables-figures").exists() and "figures/" not in out.read_text()


def test_evaluate_refuses_a_non_twin_and_a_foreign_key(tiny_package, tmp_path, capsys):
    _, _, d = tiny_package
    with pytest.raises(AMIFError, match="not an unprotected twin"):
        load_twin(d / "tiny")
    from amif.keys import generate_key, save_key

    save_key(generate_key("other-model", "X"), tmp_path / "o.amifkey")
    data = _synthetic_pairs(tmp_path / "data", n=1)
    argv = [
        "evaluate",
        "-m",
        str(d / "tiny"),
        "-k",
        str(tmp_path / "o.amifkey"),
        "--data",
        str(data),
        "-o",
        str(tmp_path / "r.md"),
        "-q",
    ]
    assert main(argv) == 2
    assert "fits none of the models" in capsys.readouterr().err and not (tmp_path / "r.md").exists()


def test_tile_places_labelled_images():
    img = np.full((10, 12), 200, np.uint8)
    grid = np.asarray(tile([[("a", img), ("b", np.zeros_like(img))]], label_height=14))
    assert grid.shape == (24, 24)
    assert (grid[14:, :12] == 200).all() and (grid[14:, 12:] == 0).all() and grid[:14].max() > 0


def test_evaluate_on_harvard_with_bundled_model(tmp_path):
    data = need_harvard()
    out = tmp_path / "h.md"
    assert main(["evaluate", "--data", str(data), "--limit", "2", "-o", str(out), "-q"]) == 0
    text = out.read_text()
    for kind in ("CT", "PET", "SPECT"):
        rows = _table(text, f"{kind}-MRI (2 pairs)")
        assert [r.split(" | ")[0][2:] for r in rows] == ["AMIF keyed", "AMIF unkeyed", *BASELINES]
        assert (tmp_path / "h-figures" / f"{kind}.png").stat().st_size > 1000
    assert "no twin given" in text
    from amif.package import bundled_model_path, read_manifest, training_steps

    manifest, _ = read_manifest(bundled_model_path())
    assert f", {training_steps(manifest)})" in text  # an averaged model's report names its checkpoints
    model = json.loads(out.with_suffix(".json").read_text())["models"][0]
    assert model["averaged_steps"] == [a["steps"] for a in manifest["training"].get("averaged", [])]
