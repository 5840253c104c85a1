"""Drive the AMIF Fusion panel with Slicer's own Python code at a tag (outside CI).

    python tools/check_slicer_panel.py --slicer PATH/TO/Slicer.git --tag v5.8.1 [--ctk PATH/TO/CTK.git] [--json OUT]

Reads `parameterNodeWrapper`, `ScriptedLoadableModule`, `util` and `i18n` from a Slicer source
repository at the tag (git show; nothing is copied into this repository), and runs them with real
MRML from the `slicer-core` wheel and the stand-in Qt/CTK widgets of tools/slicer_standins.py
(checked against the CTK and MRML headers of the same sources, and against PySide6 when it is
installed). Then `AMIFFusionWidget` goes through what a user does: setup, the sample volumes,
Demo key, Apply, Cancel, no key, Close Scene, Apply again, a colour PET, a saved scene reopened.
Dialogs, the status bar and the slice views are recorded, not drawn; --render DIR draws the panel
with Qt at two steps (tools/render_panel.py). Prints one line per check and 'N passed, M failed';
exits 1 when any check fails.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import subprocess
import sys
import tempfile
import traceback
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "AMIFFusion"
SLICER_FILES = [
    "Base/Python/slicer/ScriptedLoadableModule.py",
    "Base/Python/slicer/util.py",
    "Base/Python/slicer/i18n.py",
]
WRAPPER_DIR = "Base/Python/slicer/parameterNodeWrapper"
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(MODULE_DIR))

import slicer_standins as qs  # noqa: E402


def git_show(repo: Path, rev: str, path: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "show", f"{rev}:{path}"], check=True, capture_output=True, text=True
    ).stdout


def git_ls(repo: Path, rev: str, path: str) -> list[str]:
    out = subprocess.run(
        ["git", "-C", str(repo), "ls-tree", "--name-only", f"{rev}:{path}"], check=True, capture_output=True, text=True
    ).stdout
    return out.split()


def ctk_revision(slicer_repo: Path, tag: str) -> str:
    """The CTK commit Slicer builds at this tag (SuperBuild/External_CTK.cmake)."""
    import re

    text = git_show(slicer_repo, tag, "SuperBuild/External_CTK.cmake")
    m = re.search(r'_GIT_TAG\s*\n\s*"([0-9a-f]{40})"', text)
    return m.group(1) if m else "HEAD"


class App:
    """slicer.app: what the module and Slicer's Python code call on it."""

    def __init__(self):
        self.pending = []  # callables run by the next processEvents (a user acting while work runs)
        self.started = []

    def connect(self, signature, slot):
        self.started.append((signature, slot))

    def processEvents(self):
        while self.pending:
            self.pending.pop(0)()

    def moduleManager(self):
        app = self

        class Manager:
            def connect(self, signature, slot):
                pass

            def disconnect(self, signature, slot):
                pass

            def module(self, name):
                return app.module

        return Manager()

    def translate(self, context, text):
        return text

    def testingEnabled(self):
        return False

    def setOverrideCursor(self, cursor):
        pass

    def restoreOverrideCursor(self):
        pass


def install_slicer(slicer_repo: Path, tag: str, workdir: Path):
    """Make `import slicer` give slicer-core's MRML plus Slicer's own Python code at `tag`, with
    stand-in qt, ctk and slicer.app; returns the slicer module and a record of dialogs."""
    overlay = workdir / "slicer"
    (overlay / "parameterNodeWrapper").mkdir(parents=True)
    for path in SLICER_FILES:
        (overlay / Path(path).name).write_text(git_show(slicer_repo, tag, path))
    for name in git_ls(slicer_repo, tag, WRAPPER_DIR):
        (overlay / "parameterNodeWrapper" / name).write_text(git_show(slicer_repo, tag, f"{WRAPPER_DIR}/{name}"))
    sys.modules["qt"], sys.modules["ctk"] = qs.qt_module(), qs.ctk_module()
    import slicer

    slicer.__path__.insert(0, str(overlay))
    sys.modules.pop("slicer.util", None)
    slicer.util = importlib.import_module("slicer.util")  # Slicer's util at the tag
    assert Path(slicer.util.__file__).parent == overlay
    slicer.app = App()
    slicer.mrmlScene = slicer.vtkMRMLScene()
    slicer.app.colors = slicer.vtkMRMLColorLogic()  # the default colour tables, as at start-up; kept
    slicer.app.colors.SetMRMLScene(slicer.mrmlScene)  # alive, as the application keeps it
    slicer.app.colors.AddDefaultColorNodes()
    slicer.qMRMLNodeComboBox, slicer.qMRMLWidget = qs.qMRMLNodeComboBox, qs.qMRMLWidget
    for name in ("qMRMLSliderWidget", "qMRMLSpinBox", "qMRMLRangeWidget", "qMRMLSubjectHierarchyTreeView"):
        setattr(slicer, name, type(name, (qs.QWidget,), {}))
    record = {"errors": [], "confirm": [], "status": [], "pip": [], "views": []}
    slicer.util.errorDisplay = lambda text, **kw: record["errors"].append(text)
    slicer.util.confirmOkCancelDisplay = lambda text, *a, **kw: record["confirm"].append(text) or True
    slicer.util.showStatusMessage = lambda text, *a, **kw: record["status"].append(text)
    slicer.util.pip_install = lambda req, *a, **kw: record["pip"].append(req)
    slicer.util.setSliceViewerLayers = lambda *a, **kw: record["views"].append(kw)
    slicer.util.delayDisplay = lambda *a, **kw: None
    return slicer, record


class Checks:
    def __init__(self):
        self.results = []

    def __call__(self, name: str, ok: bool, detail: str = ""):
        self.results.append({"check": name, "ok": bool(ok), "detail": detail})
        print(f"{'PASS' if ok else 'FAIL'}  {name}" + (f"  ({detail})" if detail else ""), flush=True)
        return ok


def read_volume(slicer, path: Path):
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", path.stem)
    storage = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    storage.ReadData(node)
    node.SetAndObserveStorageNodeID(storage.GetID())
    node.CreateDefaultDisplayNodes()
    return node


def sample_data_module(slicer) -> types.ModuleType:
    """SampleData as the self-test uses it: registerCustomSampleDataSource, then downloadSamples
    loads the registered files (file:// URIs) as volumes with display nodes, named as registered."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    sources = {}

    class SampleDataLogic:
        @staticmethod
        def registerCustomSampleDataSource(**kw):
            sources[kw["sampleName"]] = kw

        def downloadSamples(self, name):
            src = sources[name]
            nodes = []
            for uri, node_name in zip(src["uris"], src["nodeNames"]):
                node = read_volume(slicer, Path(url2pathname(urlparse(uri).path)))
                node.SetName(node_name)
                nodes.append(node)
            return nodes

    module = types.ModuleType("SampleData")
    module.SampleDataLogic = SampleDataLogic
    return module


def run(slicer_repo: Path, tag: str, ctk_repo: Path | None, check: Checks, render_dir: Path | None = None) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="amif-slicer-check-"))
    slicer, record = install_slicer(slicer_repo, tag, tmp)

    def header(project, path):
        if project == "Slicer":
            return git_show(slicer_repo, tag, path)
        if ctk_repo is None:
            return ""
        rev = ctk_revision(slicer_repo, tag)
        try:
            return git_show(ctk_repo, rev, path)
        except subprocess.CalledProcessError:
            return git_show(ctk_repo, "HEAD", path)

    problems = qs.check_against_headers(header) if ctk_repo else ["no CTK repository given (--ctk)"]
    check("stand-in CTK and MRML widgets expose only what their headers declare", not problems, "; ".join(problems))
    qt_problems, qt_note = qs.check_against_pyside()
    check("stand-in Qt widgets expose only what Qt's classes have", not qt_problems, "; ".join(qt_problems) or qt_note)
    if tag.startswith("v5.8"):  # Slicer 5.8 runs Python 3.9
        bad = []
        for path in [
            MODULE_DIR / "AMIFFusion.py",
            *sorted((MODULE_DIR / "AMIFFusionLib").glob("*.py")),
            *sorted((MODULE_DIR / "amif").glob("*.py")),
        ]:
            try:
                ast.parse(path.read_text(), feature_version=(3, 9))
            except SyntaxError as e:
                bad.append(f"{path.name}: {e}")
        check("module, adapter and engine parse as Python 3.9", not bad, "; ".join(bad))

    spec = importlib.util.spec_from_file_location("AMIFFusion", MODULE_DIR / "AMIFFusion.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["AMIFFusion"] = module
    spec.loader.exec_module(module)
    parent = types.SimpleNamespace(
        path=str(MODULE_DIR / "AMIFFusion.py"),
        title="",
        categories=[],
        dependencies=[],
        contributors=[],
        helpText="",
        acknowledgementText="",
        icon=None,
    )
    module.AMIFFusion(parent)
    slicer.app.module = parent
    slicer.modules = types.SimpleNamespace(amiffusion=parent)

    class ModuleWidget(qs.qMRMLWidget):  # qSlicerScriptedLoadableModuleWidget: isEntered while the module is shown
        isEntered = False

    container = ModuleWidget()
    container.setLayout(qs.QVBoxLayout())
    widget = module.AMIFFusionWidget(container)
    logged = []
    try:
        widget.setup()
        ModuleWidget.isEntered = True
        widget.enter()
        ok = True
    except Exception:
        ok, logged = False, traceback.format_exc().splitlines()[-3:]
    if not check("setup() and enter() raise nothing", ok, " | ".join(logged)):
        return
    ui = widget.ui

    def picture(step: str):
        """The panel as it stands, drawn with Qt (tools/render_panel.py), when --render is given."""
        if render_dir is not None:
            from render_panel import render

            render_dir.mkdir(parents=True, exist_ok=True)
            render(MODULE_DIR / "Resources" / "UI" / "AMIFFusion.ui", vars(ui), render_dir / f"panel-{step}.png")

    check(
        "connectGui set the volume selectors' node types from the annotations",
        tuple(ui.secondVolumeSelector.nodeTypes) == ("vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode"),
        f"second: {ui.secondVolumeSelector.nodeTypes}",
    )
    check("Apply is disabled before volumes are chosen", not ui.applyButton.enabled, ui.applyButton.toolTip)

    sample = MODULE_DIR / "Resources" / "SampleData"
    mri = read_volume(slicer, sample / "AMIFSample-MRI.nrrd")
    pet = read_volume(slicer, sample / "AMIFSample-PET.nrrd")
    ui.firstVolumeSelector.setCurrentNode(mri)
    ui.secondVolumeSelector.setCurrentNode(pet)
    params = widget._parameterNode
    check(
        "choosing the sample volumes reaches the parameter node",
        params.firstVolume is mri and params.secondVolume is pet,
    )
    check("Apply enables after choosing the two sample volumes", ui.applyButton.enabled, ui.applyButton.toolTip)

    ui.demoKeyButton.click()
    demo = str(MODULE_DIR / "Resources" / "Models" / "amif-demo.amifkey")
    check(
        "Demo key: the field, the parameter node and the label agree",
        ui.keyPathLineEdit.currentPath == params.keyPath == demo and "matches" in ui.keyStateLabel.text,
        ui.keyStateLabel.text[:80],
    )
    ui.useColorTableCheckBox.checked = False
    check("the colour option reaches the parameter node", params.useColorTable is False)

    def apply():
        before = slicer.mrmlScene.GetNumberOfNodes()
        ui.applyButton.click()
        nodes = [slicer.mrmlScene.GetNthNode(i) for i in range(before, slicer.mrmlScene.GetNumberOfNodes())]
        return [n for n in nodes if n.IsA("vtkMRMLVolumeNode")]

    out = apply()
    check(
        "Demo key + Apply gives one clean output",
        len(out) == 1
        and out[0].GetAttribute("AMIF.Watermark") == "clean"
        and out[0].GetAttribute("AMIF.KeyState") == "match",
        ui.outputStateLabel.text[:90],
    )
    check(
        "the output selector stays on 'create new'",
        params.outputVolume is None and ui.outputSelector.currentNode() is None,
    )

    slicer.app.pending.append(ui.cancelButton.click)
    before = slicer.mrmlScene.GetNumberOfNodes()
    ui.applyButton.click()
    check(
        "Cancel during Apply leaves the scene unchanged",
        slicer.mrmlScene.GetNumberOfNodes() == before and "cancelled" in ui.outputStateLabel.text,
        ui.outputStateLabel.text[:80],
    )

    ui.keyPathLineEdit.currentPath = ""
    out = apply()
    picture("no-key")
    check(
        "no key + Apply gives a marked output",
        params.keyPath == "" and len(out) == 1 and out[0].GetAttribute("AMIF.Watermark") == "marked",
        ui.outputStateLabel.text[:90],
    )

    ui.demoKeyButton.click()
    slicer.mrmlScene.Clear(0)  # File > Close Scene
    check(
        "after Close Scene the shown key is the parameter node's key",
        ui.keyPathLineEdit.currentPath == widget._parameterNode.keyPath,
        f"shown {ui.keyPathLineEdit.currentPath!r}, stored {widget._parameterNode.keyPath!r}",
    )
    check(
        "after Close Scene the label speaks of the key that will be used",
        ("No key" in ui.keyStateLabel.text) == (widget._parameterNode.keyPath == ""),
        ui.keyStateLabel.text[:80],
    )
    mri = read_volume(slicer, sample / "AMIFSample-MRI.nrrd")
    pet = read_volume(slicer, sample / "AMIFSample-PET.nrrd")
    ui.firstVolumeSelector.setCurrentNode(mri)
    ui.secondVolumeSelector.setCurrentNode(pet)
    shown = ui.keyPathLineEdit.currentPath
    out = apply()
    used = out[0].GetAttribute("AMIF.KeyState") if len(out) == 1 else None
    check(
        "Apply after Close Scene uses the key the panel shows",
        used == ("match" if shown else "none"),
        f"shown {shown!r}, key state used {used}",
    )

    pet.GetDisplayNode().SetAndObserveColorNodeID(module.PET_COLOR_NODE_ID)
    ui.demoKeyButton.click()
    ui.useColorTableCheckBox.checked = True
    out = apply()
    picture("colour-keyed")
    check(
        "a PET shown in PET-Heat gives a colour, clean output with the demo key",
        len(out) == 1 and out[0].IsA("vtkMRMLVectorVolumeNode") and out[0].GetAttribute("AMIF.Watermark") == "clean",
        ui.outputStateLabel.text[:100],
    )

    ui.modelPathLineEdit.currentPath = str(MODULE_DIR / "Resources" / "Models" / "amif-demo.json")
    scene_file = tmp / "saved" / "scene.mrml"
    scene_file.parent.mkdir()
    slicer.mrmlScene.SetRootDirectory(str(scene_file.parent))
    slicer.mrmlScene.SetURL(str(scene_file))
    slicer.mrmlScene.Commit()
    text = scene_file.read_text()
    check(
        "the saved scene stores the bundled model as bundled, not as an install path",
        "amif-demo.json" not in text and widget._parameterNode.modelPath == "",
    )
    slicer.mrmlScene.Clear(0)
    slicer.mrmlScene.SetURL(str(scene_file))
    slicer.mrmlScene.Connect()
    p = widget._parameterNode
    check(
        "the reopened scene shows the bundled model of this install and a usable key",
        p is not None
        and p.modelPath == ""
        and Path(ui.modelPathLineEdit.currentPath).is_file()
        and ui.keyPathLineEdit.currentPath == p.keyPath
        and "Model package" not in ui.keyStateLabel.text,
        ui.keyStateLabel.text[:80],
    )
    sys.modules["SampleData"] = sample_data_module(slicer)
    try:
        module.AMIFFusionTest().runTest()
        ok, detail = True, ""
    except Exception:
        ok, detail = False, traceback.format_exc().splitlines()[-1]
    check("the module's self-test passes (both states, and a PET in PET-Heat)", ok, detail)
    check(
        "no dependency dialog or pip install was needed here",
        not record["confirm"] and not record["pip"],
        f"{record['confirm']} {record['pip']}",
    )
    check("no error dialog was shown", not record["errors"], " | ".join(record["errors"])[:200])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slicer", type=Path, required=True, help="a Slicer source git repository (bare or not)")
    ap.add_argument("--tag", required=True, help="e.g. v5.8.1 or v5.10.0")
    ap.add_argument("--ctk", type=Path, help="a CTK source git repository, to check the stand-ins' CTK headers")
    ap.add_argument("--json", type=Path, help="write the results here too")
    ap.add_argument("--render", type=Path, help="draw the panel with Qt (PySide6) at two steps into this folder")
    args = ap.parse_args(argv)
    check = Checks()
    try:
        run(args.slicer, args.tag, args.ctk, check, args.render)
    except Exception:
        check("the check ran to the end", False, traceback.format_exc().splitlines()[-1])
        traceback.print_exc()
    passed = sum(r["ok"] for r in check.results)
    failed = len(check.results) - passed
    print(f"Slicer {args.tag}, Python {sys.version.split()[0]}: {passed} passed, {failed} failed")
    if args.json:
        args.json.write_text(
            json.dumps({"tag": args.tag, "python": sys.version.split()[0], "results": check.results}, indent=1)
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
