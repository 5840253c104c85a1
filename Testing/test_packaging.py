"""The Slicer extension's packaging, checked without Slicer: CMake lists, catalog entry, icon."""

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
    for needed in ("Resources/UI/AMIFFusion.ui", "Resources/Icons/AMIFFusion.png", "Resources/Icons/AMIFSample.png",
                   "Resources/Models/amif-demo.json", "Resources/Models/amif-demo.safetensors",
                   "Resources/Models/amif-demo.amifkey", "Resources/SampleData/AMIFSample-MRI.nrrd",
                   "Resources/SampleData/AMIFSample-PET.nrrd"):
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
        "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json")
    for key in ("build_dependencies", "category", "scm_revision", "scm_url", "tier"):
        assert key in entry, key
    assert entry["build_dependencies"] == ["PyTorch"] and entry["scm_revision"] == "main"
    assert entry["scm_url"].startswith("https://") and entry["tier"] in (1, 3, 5)


def test_icons():
    assert Image.open(ROOT / "AMIF.png").size == (128, 128)
    assert Image.open(MODULE / "Resources" / "Icons" / "AMIFFusion.png").size == (128, 128)


def classical_on_72(path, manifest: dict) -> str:
    """'N of M' classical settings met in the `amif attack --attacks classical --limit 24` report at PATH, after
    checking that it measured MANIFEST's weights on 72 pairs."""
    doc = json.loads(path.read_text())
    assert doc["weights_sha256"] == manifest["weights_sha256"] and doc["pairs"] == 72
    met = [r["met"] for r in doc["attacks"]["classical"]["rows"]]
    return f"{sum(met)} of {len(met)}"


def test_published_reports_are_of_the_bundled_model():
    """The committed engine, evaluation and attack reports measured the model and twins that ship (the evaluation
    JSON records each package's training and its weights' hash)."""
    from amif.package import training_steps

    manifest = BUNDLED
    published = ROOT / "docs" / "reports"
    attack = json.loads((published / "attack" / "report.json").read_text())
    assert attack["weights_sha256"] == manifest["weights_sha256"]
    met = classical_on_72(published / "attack" / "classical-72" / "test.json", manifest)  # all 72 test pairs
    assert f"72 test pairs ([`docs/reports/attack/classical-72/test.md`](docs/reports/attack/classical-72/test.md)):\n" \
           f"    {met}," in (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"({training_steps(manifest)})" in (published / "engine-eval.md").read_text()
    evaluation = json.loads((published / "evaluation" / "harvard-test.json").read_text())
    twins = [json.loads(p.read_text()) for p in sorted((ROOT / "research" / "twins").glob("*.json"))]
    entries = evaluation["models"] + list(evaluation["twins"].values())
    assert len(entries) == len(twins) + 1 == 3
    for entry, m in zip(entries, [manifest, *twins]):
        assert entry["model_id"] == m["model_id"] and entry["steps"] == m["training"]["steps"]
        assert entry["averaged_steps"] == [a["steps"] for a in m["training"].get("averaged", [])]
        assert entry["weights_sha256"] == m["weights_sha256"]


def test_published_forging_table_is_of_the_bundled_model_and_adds_up():
    """The pooled forging table measured the model that ships, and its rows are what its counted restarts give."""
    from amif_research.attack import pool_forging, pool_setting, rate_upper

    manifest = BUNDLED
    attack = ROOT / "docs" / "reports" / "attack"
    table = json.loads((attack / "forging-pooled.json").read_text())
    assert table["setting"]["weights_sha256"] == manifest["weights_sha256"]
    assert table["setting"] == pool_setting(json.loads((attack / "report.json").read_text()))
    assert pool_forging([], table) == table["pooled"]
    for row in table["pooled"]:
        seeds = {c[0] for c in row["counted"]}
        assert row["restarts"] == len({tuple(c) for c in row["counted"]}) and sorted(seeds) == row["seeds"]
        assert row["rate_upper_95"] == rate_upper(row["successes"], row["restarts"])
        assert seeds <= {r["seed"] for r in table["runs"] if row["variant"] in r["objectives"]}
    count = {"detector" in row["variant"]: f"{row['successes']} of {row['restarts']}" for row in table["pooled"]}
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())  # its Security section's counts
    assert f"**{count[False]} with the fusion loss and {count[True]} with the detector score" in readme


PROMOTED = "amif-trace-s10"  # the candidate that is the bundled model (amif-trace-anchor was, before it)
PREVIOUS = BUNDLED["training"]["init"]["weights_sha256"]  # the model bundled before it, which every candidate continues


def test_candidate_reports_are_of_the_committed_candidate():
    """Resources/Candidates: the package loads (its hash checks), continues the model bundled before the candidates,
    its twins are the ones that now ship, and its evaluation, calibration and attack reports measured these weights."""
    from amif.package import load_package

    candidates = ROOT / "Resources" / "Candidates"
    bundled = BUNDLED
    package = load_package(candidates / "amif-trace-005.json")
    manifest = package.manifest
    assert manifest["training"]["init"]["weights_sha256"] == PREVIOUS  # the model bundled before the candidates
    assert manifest["model_id"] == bundled["model_id"] and manifest["verify"]["trace_strength"] > 0
    twins = [load_package(p).manifest for p in sorted((candidates / "twins-20200").glob("*.json"))]
    shipped = [json.loads(p.read_text()) for p in sorted((ROOT / "research" / "twins").glob("*.json"))]
    assert twins == shipped and len(twins) == 2  # these twins ship with the candidate that was promoted
    for twin in twins:
        assert twin["training"]["steps"] == manifest["training"]["steps"]
    evaluation = json.loads((candidates / "evaluation.json").read_text())
    assert [e["weights_sha256"] for e in evaluation["models"] + list(evaluation["twins"].values())] == [
        m["weights_sha256"] for m in [manifest, *twins]]
    calibration = json.loads((candidates / "calibration.json").read_text())
    assert calibration["weights_sha256"] == manifest["weights_sha256"]
    assert {f"twin {t['model_id']}" for t in twins} <= set(calibration["groups"]["must stay below"])
    attack = json.loads((candidates / "attack" / "report.json").read_text())
    assert attack["weights_sha256"] == manifest["weights_sha256"]
    forging = {row["variant"]: row for row in attack["attacks"]["forging"]["rows"]}["fusion loss"]
    steps = forging["steps_to_success"]
    claim = f"{forging['successes']} of {forging['restarts']} restarts within"
    assert f"{claim} {min(steps)}–{max(steps)} steps" in (candidates / "README.md").read_text(encoding="utf-8")
    assert f"{claim} {max(steps)} steps" in (ROOT / "README.md").read_text(encoding="utf-8")


DECOYS = {"forge_memory": 2, "decoy_alpha": 0.3, "decoys": 0.2}


def candidate_package(name: str) -> tuple:
    """Resources/Candidates/NAME and its manifest, after checking that the package loads (its hash checks), continues
    the model bundled before the candidates, and is the bundled model only if it is the promoted one."""
    from amif.package import load_package

    folder = ROOT / "Resources" / "Candidates" / name
    manifest = load_package(folder / f"{name}.json").manifest
    assert manifest["training"]["init"]["weights_sha256"] == PREVIOUS
    assert (manifest["weights_sha256"] == BUNDLED["weights_sha256"]) == (name == PROMOTED)  # the one that ships
    return folder, manifest


def candidate_section(name: str) -> str:
    """The section of Resources/Candidates/README.md about NAME/: its heading, up to the next one."""
    readme = (ROOT / "Resources" / "Candidates" / "README.md").read_text(encoding="utf-8")
    section = readme[re.search(rf"^## .*`{name}/`", readme, re.M).start():]
    end = section.find("\n## ")
    return section if end < 0 else section[:end]


def within_budget(evaluation: dict) -> int:
    """How many of the evaluation's 30 metrics the keyed model has within 2% of its twins' mean (or above)."""
    rows, twins = evaluation["rows"], list(evaluation["twins"])
    return sum(k >= 0.98 * sum(rows[t][kind]["mean"][i] for t in twins) / len(twins)
               for kind, r in rows["AMIF keyed"].items() for i, k in enumerate(r["mean"]))


def forging_runs(folder, manifest: dict) -> list[dict]:
    """FOLDER's forging runs (forging-s*.json, at least one per objective), after checking they attacked MANIFEST's
    weights."""
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("forging-s*.json"))]
    assert len(runs) >= 2 and {r["weights_sha256"] for r in runs} == {manifest["weights_sha256"]}
    return runs


def classical_on_72_said(folder, manifest: dict, section: str) -> dict:
    """FOLDER's classical reports on 72 pairs of each split (classical-72/{train,test}.json) measured MANIFEST's
    weights, and SECTION gives each split's count; returns the counts by split."""
    met = {split: classical_on_72(folder / "classical-72" / f"{split}.json", manifest) for split in ("train", "test")}
    for split, count in met.items():
        assert f"{split} split **{count}**" in section
    return met


def check_pooled_forging(folder, runs: list[dict], section: str) -> None:
    """FOLDER's pooled forging table is what RUNS (attack JSON documents) give, and SECTION gives each objective's
    pooled count."""
    from amif_research.attack import pool_forging

    table = json.loads((folder / "forging-pooled.json").read_text())
    assert table["pooled"] == pool_forging(runs)
    for row in table["pooled"]:  # each objective's pooled count, where the section gives it
        count = f"{row['successes']} of {row['restarts']}"
        said = re.search(rf"detector-term objective[^*]*\*\*{count}\*\*", section) if "detector" in row["variant"] \
            else f"{count} restarts" in section
        assert said, (row["variant"], count)


def check_students_traced(folder, manifest: dict, section: str) -> None:
    """FOLDER's trace check measured MANIFEST's weights, and SECTION gives the share of each student's outputs that
    it traces."""
    calibration = json.loads((folder / "calibration.json").read_text())
    assert calibration["weights_sha256"] == manifest["weights_sha256"]
    scores = calibration["groups"]["should be above"]
    for student in ("U-Net", "plain CNN"):
        s = scores[f"{student} student of the unkeyed outputs"]
        share = sum(x > calibration["threshold"] for x in s) / len(s)
        assert f"{student} student{' of the unkeyed outputs' if student == 'U-Net' else ''} **{share:.0%}**" in section


@pytest.mark.parametrize("name, recipe", [("amif-trace-fm2", {"forge_memory": 2}), ("amif-trace-decoy", DECOYS),
                                          ("amif-trace-anchor", DECOYS | {"anchor_weight": 30.0})])
def test_the_forging_candidates_reports_are_of_their_weights(name, recipe):
    """Resources/Candidates/NAME: the package loads (its hash checks), continues the model bundled before the
    candidates with the training settings its README section names (only the promoted one is the bundled model), its
    evaluation, trace check, forging runs and attack report (where run) measured these weights, the pooled table is
    what its runs give, and the counts in its README section are the reports'."""
    folder, manifest = candidate_package(name)
    assert {k: manifest["training"].get(k) for k in recipe} == recipe and manifest["verify"]["trace_strength"] > 0
    evaluation = json.loads((folder / "evaluation.json").read_text())
    assert [e["weights_sha256"] for e in evaluation["models"]] == [manifest["weights_sha256"]]
    section = candidate_section(name)
    check_pooled_forging(folder, forging_runs(folder, manifest), section)
    if (folder / "attack" / "report.json").exists():  # the other attack families, where run on the candidate
        attacked = json.loads((folder / "attack" / "report.json").read_text())
        assert attacked["weights_sha256"] == manifest["weights_sha256"] and "forging" not in attacked["attacks"]
        met = [r["met"] for r in attacked["attacks"]["classical"]["rows"]]
        assert f"classical removal {sum(met)} of {len(met)} settings" in section
    assert f"**{within_budget(evaluation)}/30**" in section  # the fusion claim: metrics within 2% of the twins' mean
    check_students_traced(folder, manifest, section)


def check_texture_candidate(name: str, strength: float):
    """Resources/Candidates/NAME: the package loads (its hash checks), continues the model bundled before the
    candidates with the anchor recipe at trace strength STRENGTH, its evaluation measured these weights against the
    shipped twins, and its README section gives the evaluation's count. Returns (folder, manifest, section)."""
    folder, manifest = candidate_package(name)
    assert {k: manifest["training"].get(k) for k in DECOYS} == DECOYS and manifest["training"]["anchor_weight"] == 30
    assert manifest["verify"]["trace_strength"] == strength
    evaluation = json.loads((folder / "evaluation.json").read_text())
    twins = sorted((ROOT / "research" / "twins").glob("*.json"))
    shipped = [json.loads(p.read_text())["weights_sha256"] for p in twins]
    assert [e["weights_sha256"] for e in evaluation["models"]] == [manifest["weights_sha256"]]
    assert [e["weights_sha256"] for e in evaluation["twins"].values()] == shipped
    section = candidate_section(name)
    assert f"**{within_budget(evaluation)}/30**" in section
    return folder, manifest, section


def check_attack_report(folder, manifest: dict, section: str) -> None:
    """FOLDER's attack report (attack/report.json) and forging runs measured MANIFEST's weights, the first forging
    runs (one per objective, the report's seed), where run apart, are the report's first restarts, the pooled table
    is the report's restarts with the other seeds' (each counted once), and SECTION gives the report's classical
    and students' counts."""
    report = json.loads((folder / "attack" / "report.json").read_text())
    runs = forging_runs(folder, manifest)
    assert report["weights_sha256"] == manifest["weights_sha256"]
    attacked = report["attacks"]
    met = [r["met"] for r in attacked["classical"]["rows"]]
    assert f"classical removal {sum(met)} of {len(met)} settings" in section
    students = sorted({f"{r['flagged']:.0%}" for r in attacked["distillation"]["rows"]})
    assert len(students) == 1 and f"students **{students[0]} flagged**" in section
    finals = {v["detector_weight"]: [r["final"] for r in v["runs"]] for v in attacked["forging"]["rows"]}
    first_runs = [r for r in runs if r["options"]["seed"] == report["options"]["seed"]]
    assert len(first_runs) in (0, 2)  # where run apart, the first forging runs are the report's first restarts
    for first in first_runs:
        for v in first["attacks"]["forging"]["rows"]:
            assert [r["final"] for r in v["runs"]] == finals[v["detector_weight"]][:len(v["runs"])]
    check_pooled_forging(folder, [report, *runs], section)  # restarts counted once by (seed, restart)


def test_the_stronger_texture_candidate_is_what_its_section_says():
    """Resources/Candidates/amif-trace-s08 (see check_texture_candidate): its trace check (see
    check_students_traced), first forging runs and attack report (see check_attack_report) measured these weights,
    and its README section gives classical removal's (the report's and on 72 pairs of each split) and the students'
    counts."""
    folder, manifest, section = check_texture_candidate("amif-trace-s08", 0.08)
    check_students_traced(folder, manifest, section)
    check_attack_report(folder, manifest, section)
    classical_on_72_said(folder, manifest, section)


def test_the_strength_010_candidate_is_what_its_section_says():
    """Resources/Candidates/amif-trace-s10 (see check_texture_candidate): its README section gives classical
    removal's count on 72 pairs of each split (all of the test split), the trace check's students, its attack report
    (see check_attack_report) and the pooled forging counts, measured on these weights, and the README's Security
    section says it meets every classical setting only if it does."""
    folder, manifest, section = check_texture_candidate("amif-trace-s10", 0.10)
    met = classical_on_72_said(folder, manifest, section)
    check_students_traced(folder, manifest, section)
    check_attack_report(folder, manifest, section)
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())  # the README's Security section
    assert ("meets all 33 classical settings on all 72 test pairs" in readme) == (met["test"] == "33 of 33")
