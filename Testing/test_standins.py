"""The stand-in widgets of tools/slicer_standins.py (used by tools/check_slicer_panel.py, outside CI):
they build the module's whole .ui, refuse what the real widgets lack, and behave as PythonQt does."""

import sys

import pytest
import slicer  # noqa: F401  (slicer-core: the combo box stand-in works on real MRML)

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import slicer_standins as qs  # noqa: E402

UI = ROOT / "AMIFFusion" / "Resources" / "UI" / "AMIFFusion.ui"


def test_the_module_ui_loads_with_every_named_widget():
    import xml.etree.ElementTree as ET

    top = qs.load_ui(UI)
    names = {w.get("name") for w in ET.parse(UI).iter("widget")}
    built = {w.name for w in top.findChildren(qs.QObject)} | {top.name}
    assert names == built
    binding = {w.name: w.property("SlicerParameterName") for w in top.findChildren(qs.QWidget)}
    assert binding["secondVolumeSelector"] == "secondVolume"


def test_a_property_the_real_widget_lacks_is_refused():
    label = qs.QLabel()
    with pytest.raises(AttributeError):
        label.enable = False  # QLabel has `enabled`
    with pytest.raises(AttributeError):
        qs.ctkPathLineEdit().text = "x"  # ctkPathLineEdit has `currentPath`


def test_signals_pass_as_many_arguments_as_the_slot_takes():
    got = []
    button = qs.QPushButton()
    button.connect("clicked(bool)", lambda: got.append("none"))
    button.clicked.connect(lambda checked: got.append(checked))
    button.click()
    assert got == ["none", False]
    button.enabled = False
    button.click()
    assert len(got) == 2


def test_node_combo_box_follows_the_scene():
    scene = slicer.vtkMRMLScene()
    combo = qs.qMRMLNodeComboBox()
    combo.nodeTypes, combo.noneEnabled = ("vtkMRMLScalarVolumeNode",), False
    changes = []
    combo.currentNodeChanged.connect(changes.append)
    combo.setMRMLScene(scene)
    first = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "a")
    assert combo.currentNode() is first  # the first node inserted into an empty list becomes current
    second = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "b")
    scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "label")  # a child type: not listed
    assert combo.currentNode() is first
    combo.setCurrentNode(second)
    scene.RemoveNode(second)
    assert combo.currentNode() is first and changes == [first, second, first]
    combo.setCurrentNode(None)
    assert combo.currentNode() is None
    combo.setMRMLScene(None)  # removes its scene observers
