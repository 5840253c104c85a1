"""The Slicer extension's packaging, checked without Slicer (CMake lists, catalog entry, icons), and the published
reports' JSON: of the model and twins that ship, and meeting the targets the docs state (numbers against thresholds)."""

import json
import re

import pytest
from PIL import Image

from conftest import ROOT

MODULE = ROOT / "AMIFFusion"
BUNDLED = json.loads((MODULE / "Resources" / "Models" / "amif-demo.json").read_text())  # the bundled model's manifest


def cmake_list(name: str) -> set[str]:
    text = (MODULE / "CMakeLists.txt").read_text()
    block = re.search(r"set\(" + name + r"\s+(.*?)\)", text, re.S).group(1)
    return {line.strip().replace("${MODULE_NAME}", "AMIFFusion") for line in block.splitlines() if line.strip()}


def test_every_python_file_is_listed():
    listed = cmake_list("MODULE_PYTHON_SCRIPTS")
    on_disk = {str(p.relative_to(MODULE)) for d in ("amif", "AMIFFusionLib") for p in (MODULE / d).glob("*.py")}
    assert on_disk - listed == set(), "add these to AMIFFusion/CMakeLists.txt"
    assert "AMIFFusion.py" in listed
    assert all((MODULE / p).is_file() for p in listed), [p for p in listed if not (MODULE / p).is_file()]


def test_every_resource_is_listed():
    listed = cmake_list("MODULE_PYTHON_RESOURCES")
    on_disk = {str(p.relative_to(MODULE)) for p in (MODULE / "Resources").rglob("*") if p.is_file()}
    assert on_disk - listed == set(), "add these to AMIFFusion/CMakeLists.txt"
    assert all((MODULE / p).is_file() for p in listed)
    for needed in (
        "Resources/UI/AMIFFusion.ui",
        "Resources/Icons/AMIFFusion.png",
        "Resources/Icons/AMIFSample.png",
        "Resources/Models/amif-demo.json",
        "Resources/Models/amif-demo.safetensors",
        "Resources/Models/amif-demo.amifkey",
        "Resources/SampleData/AMIFSample-MRI.nrrd",
        "Resources/SampleData/AMIFSample-PET.nrrd",
    ):
        assert needed in listed


def test_module_cmake_builds_a_tested_scripted_module():
    text = (MODULE / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule" in text and "WITH_GENERIC_TESTS" in text
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text


def test_extension_cmake_metadata():
    text = (ROOT / "CMakeLists.txt").read_text()
    assert "project(AMIF)" in text and "add_subdirectory(AMIFFusion)" in text
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text and "find_package(Slicer REQUIRED)" in text
    for include in ("${Slicer_USE_FILE}", "${Slicer_EXTENSION_GENERATE_CONFIG}", "${Slicer_EXTENSION_CPACK}"):
        assert include in text
    for field in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS"):
        assert re.search(rf'set\(EXTENSION_{field} "[^"]+"\)', text), field
    # the icon and screenshot URLs name files that are in the repository
    for url in re.findall(r"https://raw\.githubusercontent\.com/[^/]+/[^/]+/main/(\S+?)\"", text):
        assert (ROOT / url).is_file(), url


def test_catalog_entry():
    entry = json.loads((ROOT / "AMIF.json").read_text())
    assert entry["$schema"].startswith(
        "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json"
    )
    for key in ("build_dependencies", "category", "scm_revision", "scm_url", "tier"):
        assert key in entry, key
    assert entry["build_dependencies"] == ["PyTorch"] and entry["scm_revision"] == "main"
    assert entry["scm_url"].startswith("https://") and entry["tier"] in (1, 3, 5)


def test_icons():
    assert Image.open(ROOT / "AMIF.png").size == (128, 128)
    assert Image.open(MODULE / "Resources" / "Icons" / "AMIFFusion.png").size == (128, 128)


REPORTS = ROOT / "docs" / "reports"
TWINS = [json.loads(p.read_text()) for p in sorted((ROOT / "research" / "twins").glob("*.json"))]  # shipped twins
TWIN_BUDGET = 0.98  # keyed within 2% of the twins' mean on every metric (research/tools/make_report.py's target)
MAX_RULE_WINS = 5  # keyed at or above the max rule on at least 5 of the 8 win metrics per pair type


def report(*parts: str) -> dict:
    return json.loads(REPORTS.joinpath(*parts).read_text(encoding="utf-8"))


def classical_met(row: dict) -> bool:
    """A classical-removal setting's target, from its numbers: >= 95% still flagged, or PSNR to the keyed output
    lower after the attack than before."""
    return row["flagged_after"] >= 0.95 or row["psnr_after"] < row["psnr_before"]


def check_classical(doc: dict) -> list[bool]:
    """Each setting's recorded verdict is the one its numbers give, and the family's verdict is all of them."""
    rows = doc["attacks"]["classical"]["rows"]
    met = [classical_met(r) for r in rows]
    assert [r["met"] for r in rows] == met
    assert doc["attacks"]["classical"]["met"] == all(met)
    return met


def test_published_attack_reports_are_of_the_bundled_model_and_meet_the_classical_target():
    """The attack report and the classical report on all 72 test pairs measured the weights that ship, and every
    classical setting meets its target (the verdicts recomputed from the numbers)."""
    attack = report("attack", "report.json")
    assert attack["weights_sha256"] == BUNDLED["weights_sha256"] and attack["model_id"] == BUNDLED["model_id"]
    on_72 = report("attack", "classical-72", "test.json")
    assert on_72["weights_sha256"] == BUNDLED["weights_sha256"] and on_72["pairs"] == 72
    for doc in (attack, on_72):
        met = check_classical(doc)
        assert len(met) >= 30 and all(met), [
            r["setting"] for r, m in zip(doc["attacks"]["classical"]["rows"], met) if not m
        ]
    students = attack["attacks"]["distillation"]["rows"]  # both students' outputs flagged (>= 95%)
    assert len(students) == 2 and all(r["flagged"] >= 0.95 for r in students)
    wrong = attack["attacks"]["wrong-keys"]["rows"]  # every wrong code flagged, the owner's key's outputs <= 1%
    owner = [r for r in wrong if r["target"].startswith("<=")]  # the reference row: the owner's key
    assert len(owner) == 1 and owner[0]["flagged"] <= 0.01
    assert sum(r["n"] for r in wrong if r["part_of"] is None and r not in owner) >= 10_000
    assert all(r["flagged"] == 1.0 for r in wrong if r not in owner)


def twin_ratios(evaluation: dict) -> dict:
    """Per pair type, the keyed model's mean of each metric over the twins' mean."""
    rows, twins = evaluation["rows"], list(evaluation["twins"])
    return {
        kind: [k / (sum(rows[t][kind]["mean"][i] for t in twins) / len(twins)) for i, k in enumerate(r["mean"])]
        for kind, r in rows["AMIF keyed"].items()
    }


def test_published_evaluation_is_of_the_bundled_model_and_twins_and_meets_the_fusion_targets():
    """The evaluation JSON records each package's training and weights' hash: the bundled model and the shipped
    twins; keyed fusion is within 2% of the twins' mean on all 30 metrics and beats the max rule on >= 5 of 8."""
    evaluation = report("evaluation", "harvard-test.json")
    entries = evaluation["models"] + list(evaluation["twins"].values())
    assert len(entries) == len(TWINS) + 1 == 3
    for entry, m in zip(entries, [BUNDLED, *TWINS]):
        assert entry["model_id"] == m["model_id"] and entry["steps"] == m["training"]["steps"]
        assert entry["averaged_steps"] == [a["steps"] for a in m["training"].get("averaged", [])]
        assert entry["weights_sha256"] == m["weights_sha256"]
    ratios = twin_ratios(evaluation)
    assert sum(len(r) for r in ratios.values()) == 30
    assert {kind: [m for m, x in zip(evaluation["metrics"], r) if x < TWIN_BUDGET] for kind, r in ratios.items()} == {
        kind: [] for kind in ratios
    }
    rows, win = evaluation["rows"], [evaluation["metrics"].index(m) for m in evaluation["win_metrics"]]
    for kind, keyed in rows["AMIF keyed"].items():
        assert sum(keyed["mean"][i] >= rows["max"][kind]["mean"][i] for i in win) >= MAX_RULE_WINS, kind


def test_published_benchmark_meets_the_speed_and_memory_targets():
    """docs/reports/evaluation/benchmark.json: <= 60 ms per 256x256 slice, a 256x256x128 volume under 10 s, a
    512x512x300 volume under 2 GiB peak resident memory, for the bundled architecture's parameter count."""
    bench = report("evaluation", "benchmark.json")
    assert bench["parameters"] == BUNDLED["parameters"]
    assert bench["ms_batch1"] <= 60
    assert bench["volumes"]["256x256x128"]["seconds"] < 10
    assert bench["volumes"]["512x512x300"]["peak_mib"] < 2048


def test_published_forging_table_is_of_the_bundled_model_adds_up_and_bounds_the_rate_below_the_goal():
    """The pooled forging table measured the model that ships, its rows are what its counted restarts give, and
    every objective's 95% upper bound is below the 5% goal."""
    from amif_research.attack import FORGING_GOAL, pool_forging, pool_setting, rate_upper

    table = report("attack", "forging-pooled.json")
    assert table["setting"]["weights_sha256"] == BUNDLED["weights_sha256"]
    assert table["setting"] == pool_setting(report("attack", "report.json"))
    assert pool_forging([], table) == table["pooled"]
    assert len(table["pooled"]) == 2  # the fusion-loss and the detector-term objectives
    for row in table["pooled"]:
        seeds = {c[0] for c in row["counted"]}
        assert row["restarts"] == len({tuple(c) for c in row["counted"]}) and sorted(seeds) == row["seeds"]
        assert row["rate_upper_95"] == rate_upper(row["successes"], row["restarts"])
        assert seeds <= {r["seed"] for r in table["runs"] if row["variant"] in r["objectives"]}
        assert row["rate_upper_95"] < FORGING_GOAL, row["variant"]


# docs/reports/candidates.json: the candidate models and superseded forging tables that left the tree
CANDIDATES = report("candidates.json")


def git_history() -> bool:
    """Whether this checkout has the history candidates.json points into (not a shallow clone, git present)."""
    import shutil
    import subprocess

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return False
    out = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--is-shallow-repository"], capture_output=True, text=True
    )
    return out.returncode == 0 and out.stdout.strip() == "false"


def need_history():
    if not git_history():
        pytest.skip("no full git history here (shallow clone or no git): candidates.json points into it")


def git_blob(commit: str, path: str) -> bytes:
    import subprocess

    out = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:{path}"], capture_output=True)
    assert out.returncode == 0, f"{commit}:{path}: {out.stderr.decode()}"
    return out.stdout


def test_every_file_candidates_json_names_is_in_the_commit_it_names():
    """Each candidate's manifest, weights and reports, each twin and each superseded table can be checked out of
    history: `git show COMMIT:PATH` retrieves them, and the weights there hash to the recorded SHA-256."""
    import hashlib

    need_history()
    entries = CANDIDATES["candidates"] + CANDIDATES["twins"]
    assert len(CANDIDATES["candidates"]) >= 2 and entries
    git_blob(CANDIDATES["notebook"]["commit"], CANDIDATES["notebook"]["path"])
    for entry in entries:
        manifest = json.loads(git_blob(entry["commit"], entry["manifest"]))
        assert manifest["weights_sha256"] == entry["weights_sha256"]
        assert hashlib.sha256(git_blob(entry["commit"], entry["weights"])).hexdigest() == entry["weights_sha256"]
        for path in entry.get("files", []):
            git_blob(entry["commit"], path)
    for table in CANDIDATES["superseded_pools"]:
        for path in table["files"]:
            git_blob(table["commit"], path)
    for superseded in CANDIDATES["superseded_reports"]:
        assert (
            json.loads(git_blob(superseded["commit"], superseded["path"]))["weights_sha256"]
            == superseded["weights_sha256"]
        )


def test_candidates_json_is_what_summarize_candidates_reads_from_history(tmp_path):
    """docs/reports/candidates.json is research/tools/summarize_candidates.py's output for this history: every number
    in it is read from the candidates' own JSON reports, none typed in."""
    from conftest import load_tool

    need_history()
    tool = load_tool("summarize_candidates")
    assert tool.main(["-o", str(tmp_path / "c.json")]) == 0
    assert json.loads((tmp_path / "c.json").read_text(encoding="utf-8")) == CANDIDATES


def test_candidates_continue_the_model_bundled_before_them_and_one_is_the_bundled_model():
    """Every candidate continues the model bundled before the candidates (the bundled model's init); exactly one has
    the bundled weights, and its summarized reports are the published ones: the classical count on 72 test pairs, the
    pooled forging rows, and fusion within the 2% budget on all 30 metrics. The twins measured are the shipped ones."""
    previous = BUNDLED["training"]["init"]["weights_sha256"]
    entries = CANDIDATES["candidates"]
    assert {e["training"]["init_weights_sha256"] for e in entries} == {previous}
    assert all(e["model_id"] == BUNDLED["model_id"] and e["verify"]["trace_strength"] > 0 for e in entries)
    shipped = [e for e in entries if e["weights_sha256"] == BUNDLED["weights_sha256"]]
    assert len(shipped) == 1
    entry = shipped[0]
    assert entry["training"] == {k: v for k, v in BUNDLED["training"].items() if k not in ("init", "data")} | {
        "init_weights_sha256": previous,
        "init_steps": BUNDLED["training"]["init"]["training"]["steps"],
    }
    assert entry["verify"] == BUNDLED["verify"]
    met = [classical_met(r) for r in report("attack", "classical-72", "test.json")["attacks"]["classical"]["rows"]]
    assert entry["classical_72"]["test"]["met_settings"] == [sum(met), len(met)]
    published = report("attack", "forging-pooled.json")["pooled"]
    assert [(r["variant"], r["successes"], r["restarts"]) for r in entry["forging_pooled"]["pooled"]] == [
        (r["variant"], r["successes"], r["restarts"]) for r in published
    ]
    assert entry["evaluation"]["within_budget"] == entry["evaluation"]["of"] == 30
    assert [t["weights_sha256"] for t in CANDIDATES["twins"]] == [t["weights_sha256"] for t in TWINS]
    assert list(entry["evaluation"]["twins_weights_sha256"].values()) == [t["weights_sha256"] for t in TWINS]


def test_candidates_summaries_are_of_their_own_weights_and_add_up():
    """Each candidate's summarized reports measured its weights; its fusion count is the number of metric ratios at or
    above the budget; its trace-check shares are of the recorded threshold; pooled bounds are what the counts give."""
    from amif_research.attack import rate_upper

    for entry in CANDIDATES["candidates"]:
        sha = entry["weights_sha256"]
        ev = entry["evaluation"]
        assert ev["model_weights_sha256"] == [sha] and entry["calibration"]["weights_sha256"] == sha
        assert ev["within_budget"] == sum(
            x >= ev["budget"] for k in ev["by_type"].values() for x in k["ratio_to_twins"].values()
        )
        for kind in ev["by_type"].values():
            assert kind["within_budget"] == sum(x >= ev["budget"] for x in kind["ratio_to_twins"].values())
            assert kind["worst"][1] == min(kind["ratio_to_twins"].values())
        for group in entry["calibration"]["groups"].values():
            for scores in group.values():
                assert scores["min"] <= scores["max"] and 0 <= scores["above"] <= 1
                assert (scores["above"] == 1) <= (scores["min"] > entry["calibration"]["threshold"])
        if "attack" in entry:
            assert entry["attack"]["weights_sha256"] == sha
        tables = [entry["forging_pooled"]] if "forging_pooled" in entry else []
        for table in tables + CANDIDATES["superseded_pools"]:
            for row in table["pooled"]:
                assert row["rate_upper_95"] == pytest.approx(rate_upper(row["successes"], row["restarts"]), abs=1e-4)
        if tables:
            assert tables[0]["setting"]["weights_sha256"] == sha
    superseded = {t["setting"]["weights_sha256"] for t in CANDIDATES["superseded_pools"]}
    assert BUNDLED["weights_sha256"] not in superseded  # the bundled model's own table is published, not superseded
