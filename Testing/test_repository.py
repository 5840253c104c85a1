"""The repository stays lean (issue 59): the tracked tree under 10 MB, no file over 1 MB but the bundled model and
the twins, a pre-commit hook that refuses large files, reports whose links resolve, and the published measurement
figures drawn from the committed JSON alone."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, load_tool

TREE_LIMIT = 10_000_000  # bytes, all tracked files together
FILE_LIMIT = 1024 * 1024  # bytes: pre-commit's check-added-large-files --maxkb=1024
LARGE_ALLOWED = ("AMIFFusion/Resources/Models/", "research/twins/")  # the bundled model and the two twins
REPORTS = ROOT / "docs" / "reports"


def tracked_sizes() -> dict[str, int]:
    """Size in bytes of each file git tracks here (those present in the working tree)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked tree is unknown")
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True).stdout
    paths = [p for p in out.decode().split("\0") if p]
    return {p: (ROOT / p).stat().st_size for p in paths if (ROOT / p).is_file()}


def test_the_tracked_tree_is_under_10_mb():
    sizes = tracked_sizes()
    largest = sorted(sizes.items(), key=lambda kv: -kv[1])[:5]
    assert sum(sizes.values()) < TREE_LIMIT, f"{sum(sizes.values()):,} bytes; largest: {largest}"


def test_no_tracked_file_over_1_mb_but_the_bundled_model_and_the_twins():
    large = {p: s for p, s in tracked_sizes().items() if s > FILE_LIMIT and not p.startswith(LARGE_ALLOWED)}
    assert large == {}, "keep research weights and large images out of the tree (docs/reports/candidates.json)"


def hook_settings() -> dict:
    """check-added-large-files' --maxkb and exclude pattern, and the hook ids, read from .pre-commit-config.yaml
    (YAML read line by line: the hooks are a flat list)."""
    text = (ROOT / ".pre-commit-config.yaml").read_text(encoding="utf-8")
    ids = re.findall(r"^\s*- id:\s*([\w-]+)", text, re.M)
    large = text[text.index("id: check-added-large-files") :]
    large = large[: large.find("- id:", 5)] if "- id:" in large[5:] else large
    maxkb = re.search(r"--maxkb=(\d+)", large)
    exclude = re.search(r"^\s*exclude:\s*(\S+)", large, re.M)
    return {
        "ids": ids,
        "maxkb": int(maxkb.group(1)) if maxkb else None,
        "exclude": exclude.group(1).strip("'\"") if exclude else None,
    }


def test_pre_commit_runs_ruff_and_refuses_large_files_but_a_new_bundled_model():
    hooks = hook_settings()
    assert {"ruff", "ruff-format", "check-added-large-files"} <= set(hooks["ids"])
    assert hooks["maxkb"] is not None and hooks["maxkb"] * 1024 <= FILE_LIMIT
    exclude = re.compile(hooks["exclude"])
    assert exclude.search("AMIFFusion/Resources/Models/amif-demo.safetensors")
    for refused in (
        "research/twins/amif-twin-s2.safetensors",
        "docs/figures/big.png",
        "Resources/Candidates/x/x.safetensors",
        "research/Models/x.safetensors",
    ):
        assert not exclude.search(refused), refused


def test_every_relative_link_in_the_published_reports_resolves():
    """A figure or report removed from the tree leaves no dangling link in docs/reports/."""
    tracked = set(tracked_sizes())
    missing = []
    for md in sorted(REPORTS.rglob("*.md")):
        for target in re.findall(r"\]\(([^)\s]+)\)", md.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (md.parent / target.split("#")[0]).resolve()
            if not path.is_relative_to(ROOT) or str(path.relative_to(ROOT)) not in tracked and not path.is_dir():
                missing.append(f"{md.relative_to(ROOT)}: {target}")
    assert missing == []


def grey(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), dtype=float)


def coarse(a: np.ndarray, k: int = 4) -> np.ndarray:
    """Mean over k x k blocks: small font and anti-aliasing differences between matplotlib versions average out."""
    h, w = a.shape[0] // k * k, a.shape[1] // k * k
    return a[:h, :w].reshape(h // k, k, w // k, k).mean((1, 3))


def copy_reports(folder) -> None:
    tool = load_tool("make_doc_figures")
    for source, _, _ in tool.FIGURES.values():
        (folder / source).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPORTS / source, folder / source)


def test_the_published_figures_are_drawn_from_the_committed_json(tmp_path):
    """research/tools/make_doc_figures.py draws curves.png and ratios.png from the reports' JSON alone: the committed
    figures record the committed JSON's hash and are what the tool draws from it (to within font rendering), the
    same JSON gives the same bytes, and a changed number gives a changed figure."""
    tool = load_tool("make_doc_figures")
    assert tool.main(["--out", str(tmp_path / "a")]) == 0
    assert tool.main(["--out", str(tmp_path / "b")]) == 0
    for figure, (source, _, _) in tool.FIGURES.items():
        drawn, published = tmp_path / "a" / figure, REPORTS / figure
        committed = json.loads((REPORTS / source).read_text(encoding="utf-8"))
        assert tool.source_of(published) == (source, tool.digest(committed)), f"rerun make_doc_figures: {figure}"
        assert drawn.read_bytes() == (tmp_path / "b" / figure).read_bytes()  # deterministic
        assert Image.open(drawn).size == Image.open(published).size
        assert np.abs(coarse(grey(drawn)) - coarse(grey(published))).mean() < 2.0, figure

    changed = tmp_path / "changed"
    copy_reports(changed)
    attack = json.loads((changed / "attack" / "report.json").read_text())
    attack["attacks"]["learned-removal"]["rows"][0]["flagged"] = (
        1 - attack["attacks"]["learned-removal"]["rows"][0]["flagged"]
    )
    (changed / "attack" / "report.json").write_text(json.dumps(attack))
    evaluation = json.loads((changed / "evaluation" / "harvard-test.json").read_text())
    evaluation["rows"]["AMIF keyed"]["CT"]["mean"][0] *= 1.3
    (changed / "evaluation" / "harvard-test.json").write_text(json.dumps(evaluation))
    assert tool.main(["--reports", str(changed), "--out", str(tmp_path / "c")]) == 0
    for figure in tool.FIGURES:
        differ = grey(tmp_path / "c" / figure) != grey(tmp_path / "a" / figure)
        assert differ.sum() > 50, figure


def panels(white: np.ndarray, axis: int, least: int = 100) -> int:
    """How many runs of at least `least` lines along `axis` are not (almost) all white: the panels across a
    figure's width (axis 0) or down its height (axis 1). Titles, labels and the 4-pixel gaps do not count."""
    inked = white.mean(axis=axis) < 0.99
    edges = np.flatnonzero(np.diff(np.concatenate([[0], inked.astype(int), [0]])))
    return int(sum(end - start >= least for start, end in zip(edges[::2], edges[1::2])))


def test_the_comparison_figure_is_drawn_from_the_bundled_sample_and_model(tmp_path):
    """research/tools/make_comparison_figure.py draws docs/figures/fusion-comparison.png from the bundled sample,
    model and key alone: the committed figure records those files' digest and is what the tool draws from them (to
    within font rendering), the same files give the same bytes, it is 6 rows (CT-like, PET, SPECT-like, each whole
    and as a 3x crop) of 5 panels and under 150 KB, and another key gives another AMIF column."""
    tool, doc = load_tool("make_comparison_figure"), load_tool("make_doc_figures")
    published = ROOT / "docs" / "figures" / "fusion-comparison.png"
    files = tool.inputs(tool.bundled_model_path(), tool.bundled_key_path())
    assert doc.source_of(published) == (tool.source_text(files), tool.inputs_digest(files)), (
        "rerun research/tools/make_comparison_figure.py"
    )
    assert published.stat().st_size < 150_000  # the tracked tree's 10 MB budget
    drawn, again = tool.make_figure(tmp_path / "a.png"), tool.make_figure(tmp_path / "b.png")
    assert drawn.read_bytes() == again.read_bytes()  # deterministic
    assert Image.open(drawn).size == Image.open(published).size
    assert np.abs(coarse(grey(drawn)) - coarse(grey(published))).mean() < 2.0
    for figure in (drawn, published):
        white = grey(figure) >= 250
        assert (panels(white, 0), panels(white, 1)) == (len(tool.COLUMNS), 6), figure

    from amif.keys import generate_key, save_key

    wrong = tmp_path / "wrong.amifkey"
    save_key(generate_key(tool.load_package(tool.bundled_model_path()).model_id, "Nobody", bytes(32)), wrong)
    other = grey(tool.make_figure(tmp_path / "c.png", key=wrong)) != grey(drawn)
    columns = np.flatnonzero(other.any(axis=0))
    assert other.sum() > 500 and columns.min() > 0.75 * other.shape[1]  # only the AMIF keyed column changed
