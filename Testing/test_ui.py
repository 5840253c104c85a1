"""The panel (.ui) has every widget the module refers to as self.ui.<name>, with the right classes."""

import re
import xml.etree.ElementTree as ET

from conftest import ROOT

MODULE = ROOT / "AMIFFusion"


def widgets() -> dict[str, ET.Element]:
    tree = ET.parse(MODULE / "Resources" / "UI" / "AMIFFusion.ui")
    return {w.get("name"): w for w in tree.iter("widget")}


def prop(widget, name):
    for p in widget.findall("property"):
        if p.get("name") == name:
            return p
    return None


def test_every_widget_the_module_uses_exists():
    used = set(re.findall(r"self\.ui\.(\w+)", (MODULE / "AMIFFusion.py").read_text()))
    assert used, "the module uses no widget?"
    assert used - set(widgets()) == set()


def test_widget_classes_and_parameters():
    w = widgets()
    classes = {
        "firstVolumeSelector": "qMRMLNodeComboBox",
        "secondVolumeSelector": "qMRMLNodeComboBox",
        "outputSelector": "qMRMLNodeComboBox",
        "keyPathLineEdit": "ctkPathLineEdit",
        "modelPathLineEdit": "ctkPathLineEdit",
        "applyButton": "QPushButton",
        "cancelButton": "QPushButton",
        "progressBar": "QProgressBar",
        "keyStateLabel": "QLabel",
        "outputStateLabel": "QLabel",
    }
    for name, cls in classes.items():
        assert w[name].get("class") == cls, name
    types = [s.text for s in prop(w["secondVolumeSelector"], "nodeTypes").iter("string")]
    assert types == ["vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode"]
    assert prop(w["outputSelector"], "renameEnabled").find("bool").text == "true"
    assert w["useColorTableCheckBox"].get("class") == "QCheckBox"


def test_new_output_entry_is_the_one_errors_name():
    from AMIFFusionLib.logic import NEW_OUTPUT_ENTRY

    w = widgets()["outputSelector"]
    assert prop(w, "noneEnabled").find("bool").text == "true"
    assert prop(w, "noneDisplay").find("string").text == NEW_OUTPUT_ENTRY
    # 'Create new Volume' would make a grey volume whatever the inputs need: the empty entry creates
    assert prop(w, "addEnabled").find("bool").text == "false"


def test_scene_reaches_the_node_selectors():
    tree = ET.parse(MODULE / "Resources" / "UI" / "AMIFFusion.ui")
    slot = "setMRMLScene(vtkMRMLScene*)"
    receivers = {c.findtext("receiver") for c in tree.iter("connection") if c.findtext("slot") == slot}
    assert receivers == {"firstVolumeSelector", "secondVolumeSelector", "outputSelector"}


def test_module_loads_without_torch_or_simpleitk():
    """What AMIFFusion.py imports at load time pulls in neither torch nor SimpleITK (PyTorch may not be
    installed yet when Slicer loads the module)."""
    import ast
    import subprocess
    import sys

    tree = ast.parse((MODULE / "AMIFFusion.py").read_text())
    ours = ("amif", "AMIFFusionLib")  # what the module imports of this project's code at load time
    lib = [
        f"{n.module}.{a.name}" if n.module in ours else n.module
        for n in tree.body
        if isinstance(n, ast.ImportFrom) and n.module.split(".")[0] in ours
        for a in n.names
    ]
    assert lib, "the module imports nothing from AMIFFusionLib at load time?"
    assert not [
        n
        for n in tree.body
        if isinstance(n, (ast.Import, ast.ImportFrom)) and re.search(r"\b(torch|SimpleITK)\b", ast.unparse(n))
    ]
    code = (
        "import sys; "
        + "; ".join(f"import {m}" for m in lib)
        + "; print(sorted({'torch', 'SimpleITK'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=MODULE, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
