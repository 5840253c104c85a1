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
    classes = {"firstVolumeSelector": "qMRMLNodeComboBox", "secondVolumeSelector": "qMRMLNodeComboBox",
               "outputSelector": "qMRMLNodeComboBox", "keyPathLineEdit": "ctkPathLineEdit",
               "modelPathLineEdit": "ctkPathLineEdit", "applyButton": "QPushButton", "cancelButton": "QPushButton",
               "progressBar": "QProgressBar", "keyStateLabel": "QLabel", "outputStateLabel": "QLabel"}
    for name, cls in classes.items():
        assert w[name].get("class") == cls, name
    types = [s.text for s in prop(w["secondVolumeSelector"], "nodeTypes").iter("string")]
    assert types == ["vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode"]
    assert prop(w["outputSelector"], "addEnabled").find("bool").text == "true"
    assert prop(w["outputSelector"], "renameEnabled").find("bool").text == "true"
    # parameter node bindings name fields of AMIFFusionParameterNode
    module = (MODULE / "AMIFFusion.py").read_text()
    for name in ("firstVolumeSelector", "secondVolumeSelector", "outputSelector"):
        param = prop(w[name], "SlicerParameterName").find("string").text
        assert re.search(rf"^    {param}: ", module, re.M), param


def test_scene_reaches_the_node_selectors():
    tree = ET.parse(MODULE / "Resources" / "UI" / "AMIFFusion.ui")
    slot = "setMRMLScene(vtkMRMLScene*)"
    receivers = {c.findtext("receiver") for c in tree.iter("connection") if c.findtext("slot") == slot}
    assert receivers == {"firstVolumeSelector", "secondVolumeSelector", "outputSelector"}


def test_module_loads_without_torch_or_engine_at_top_level():
    top = [line for line in (MODULE / "AMIFFusion.py").read_text().splitlines() if line.startswith(("import", "from"))]
    assert not [line for line in top if re.search(r"\b(torch|amif|AMIFFusionLib|SimpleITK)\b", line)], top
