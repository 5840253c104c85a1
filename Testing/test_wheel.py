"""`pip install .` (not editable) carries the bundled model and the sample: a wheel built from the
source tree, installed into a folder of its own, runs `amif info` and `amif demo` from elsewhere."""

import importlib.util
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel of a copy of the source tree as a clone has it (no build/ or egg-info folders left over)."""
    out, src = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("src") / "amif"
    leftovers = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    shutil.copytree(ROOT / "AMIFFusion", src / "AMIFFusion", ignore=leftovers)
    for name in ("pyproject.toml", "README.md", "LICENSE.txt"):
        shutil.copy2(ROOT / name, src / name)
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-q", "-w", str(out), *isolation],
        check=True,
        cwd=out,
    )
    (built,) = out.glob("amif-*.whl")
    return built


def test_wheel_carries_the_bundled_model_and_sample(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in (
        "Models/amif-demo.json",
        "Models/amif-demo.safetensors",
        "Models/amif-demo.amifkey",
        "SampleData/AMIFSample-MRI.nrrd",
        "SampleData/AMIFSample-PET.nrrd",
    ):
        assert f"amif/Resources/{f}" in names, f


def test_installed_wheel_runs_the_demo_from_another_folder(wheel, tmp_path):
    target, work = tmp_path / "site", tmp_path / "elsewhere"
    work.mkdir()
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], check=True
    )
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    where = subprocess.run(
        [sys.executable, "-c", "import amif, amif.package as p; print(amif.__file__); print(p.bundled_model_path())"],
        env=env,
        cwd=work,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert all(str(target) in line for line in where), where  # the installed copy, not the source tree
    demo = subprocess.run(
        [sys.executable, "-m", "amif", "demo", "-q", "-o", "out", "--device", "cpu"],
        env=env,
        cwd=work,
        capture_output=True,
        text=True,
    )
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert {"fused-keyed.nrrd", "fused-unkeyed.nrrd"} <= {p.name for p in (work / "out").iterdir()}


def test_wheel_carries_the_runtime_only(wheel):
    """Training, evaluation and attacks are not in the runtime's wheel (they come with amif-research)."""
    names = zipfile.ZipFile(wheel).namelist()
    modules = {n.split("/")[-1] for n in names if n.endswith(".py")}
    assert {"fusion.py", "verify.py", "cli.py"} <= modules
    assert not modules & {"train.py", "attack.py", "evaluate.py", "losses.py", "metrics.py", "baselines.py"}
    assert not [n for n in names if n.startswith("amif_research/")]
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "amif.commands" not in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_research_commands_come_from_the_plugin_only(monkeypatch):
    """`amif train`, `evaluate`, `attack` exist when a plugin adds them, and not otherwise."""
    from amif import cli

    def commands():
        sub = next(a for a in cli.build_parser()._actions if a.dest == "cmd")
        return set(sub.choices)

    assert {"train", "evaluate", "attack", "average"} <= commands()  # amif-research is installed for the tests
    monkeypatch.setattr(cli, "_command_plugins", lambda: [])
    assert commands() == {"demo", "fuse", "fuse-batch", "keygen", "info", "verify"}
