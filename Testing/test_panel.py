"""The panel's parameter node and state (AMIFFusionLib.parameters, .panel) on real MRML (slicer-core).

Slicer's parameterNodeWrapper is not in slicer-core, so `Wrapped` below stands in for it: it
exposes only the fields (and `parameterNode`), and stores them as the wrapper's serializers do
(strings and bools as parameters, nodes as references named after the field). The real wrapper
is exercised by tools/check_slicer_panel.py against Slicer's own code.
"""

import os
import typing
import xml.etree.ElementTree as ET

import pytest
import slicer  # slicer-core: a missing wheel must fail loudly, not skip

from amif.keys import generate_key, save_key
from amif.package import bundled_key_path, bundled_model_path
from AMIFFusionLib import logic, panel
from AMIFFusionLib.parameters import AMIFFusionParameters
from conftest import ROOT

MODELS = ROOT / "AMIFFusion" / "Resources" / "Models"
UI = ROOT / "AMIFFusion" / "Resources" / "UI" / "AMIFFusion.ui"
FIELDS = typing.get_type_hints(AMIFFusionParameters)


def node_classes(annotation) -> list:
    """The MRML classes an annotation names (a class, or a typing.Union of classes and None)."""
    if isinstance(annotation, type):
        return [annotation] if issubclass(annotation, slicer.vtkMRMLNode) else []
    return [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, slicer.vtkMRMLNode)]


def test_every_mrml_class_in_the_annotations_can_be_instantiated():
    named = {name: node_classes(a) for name, a in FIELDS.items()}
    assert named["firstVolume"] and named["secondVolume"] and named["outputVolume"]
    for name, classes in named.items():
        for cls in classes:
            assert cls().GetClassName() == cls.__name__, f"{name}: {cls.__name__} cannot be instantiated"


def test_unions_are_typing_union_for_python_39():
    for name, annotation in FIELDS.items():
        if len(node_classes(annotation)) > 1:
            assert typing.get_origin(annotation) is typing.Union, f"{name}: write typing.Union[...], not X | Y"


def ui_bindings() -> dict:
    tree = ET.parse(UI)
    found = {}
    for w in tree.iter("widget"):
        for p in w.findall("property"):
            if p.get("name") == "SlicerParameterName":
                found[p.find("string").text] = w.get("class")
    return found


def test_ui_bindings_name_fields_with_widgets_the_wrapper_connects():
    widget_for = {str: None, bool: "QCheckBox"}  # paths are connected by the module itself
    bindings = ui_bindings()
    for name, cls in bindings.items():
        assert name in FIELDS, f"the .ui binds {name}, which the parameter node lacks"
        expected = "qMRMLNodeComboBox" if node_classes(FIELDS[name]) else widget_for[FIELDS[name]]
        assert cls == expected, (name, cls)
    assert {n for n in FIELDS if node_classes(FIELDS[n])} <= set(bindings)


def test_module_wraps_these_fields():
    import ast

    tree = ast.parse((ROOT / "AMIFFusion" / "AMIFFusion.py").read_text())
    wrapped = [
        c
        for c in tree.body
        if isinstance(c, ast.ClassDef)
        and any(getattr(d, "id", None) == "parameterNodeWrapper" for d in c.decorator_list)
    ]
    assert len(wrapped) == 1 and [b.id for b in wrapped[0].bases] == ["AMIFFusionParameters"]
    assert not [n for n in wrapped[0].body if isinstance(n, ast.AnnAssign)], "fields belong in AMIFFusionParameters"


# ---------------------------------------------------------------- state on a real scene


class Wrapped:
    """Stands in for AMIFFusionParameterNode(parameterNode): the fields, nothing else."""

    def __init__(self, node):
        object.__setattr__(self, "parameterNode", node)

    def __getattr__(self, name):
        kind, node = FIELDS[name], self.parameterNode
        if node_classes(kind):
            return node.GetNodeReference(name)
        if not node.HasParameter(name):
            return getattr(AMIFFusionParameters, name)
        value = node.GetParameter(name)
        return value == "True" if kind is bool else value

    def __setattr__(self, name, value):
        kind, node = FIELDS[name], self.parameterNode
        if node_classes(kind):
            node.SetNodeReferenceID(name, value.GetID() if value else None)
        else:
            node.SetParameter(name, ("True" if value else "False") if kind is bool else str(value))


def module_parameters(scene) -> Wrapped:
    """The singleton parameter node, found or created as ScriptedLoadableModuleLogic does."""
    node = scene.GetSingletonNode("AMIFFusion", "vtkMRMLScriptedModuleNode")
    if node is None:
        node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)
        node.SetSingletonTag("AMIFFusion")
        node.SetAttribute("ModuleName", "AMIFFusion")
        node = scene.AddNode(node)
    return Wrapped(node)


def volumes(scene):
    import numpy as np

    nodes = []
    for name in ("mri", "pet"):
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        slicer.util.updateVolumeFromArray(node, np.zeros((2, 16, 16), np.float32))
        nodes.append(node)
    return nodes


def agrees(view, params):
    """The panel shows what Apply uses."""
    args = panel.apply_arguments(params)
    assert view.key_field == (args["key_path"] or "")
    assert panel.model_to_store(view.model_field) == (args["model_path"] or "")
    assert view.key_label.state == panel.key_label(args["key_path"] or "", args["model_path"] or "").state


def test_close_scene_shows_and_uses_the_reset_key():
    scene = slicer.vtkMRMLScene()
    params = module_parameters(scene)
    params.firstVolume, params.secondVolume = volumes(scene)
    params.keyPath = str(bundled_key_path())
    view = panel.panel_view(params)
    agrees(view, params)
    assert view.key_label.state == "match" and view.apply_enabled
    assert panel.apply_arguments(params)["key_path"] == str(bundled_key_path())

    scene.Clear(0)  # File > Close Scene: the singleton survives, reset
    params = module_parameters(scene)
    view = panel.panel_view(params)
    agrees(view, params)
    assert view.key_field == "" and view.key_label.state == "none" and panel.apply_arguments(params)["key_path"] is None
    assert not view.apply_enabled  # the volumes went with the scene


def test_bundled_model_is_stored_as_bundled_in_any_spelling(tmp_path):
    bundled = bundled_model_path()
    assert panel.model_to_store(str(bundled)) == ""
    assert panel.model_to_store(str(bundled.parent / ".." / "Models" / bundled.name)) == ""
    os.symlink(bundled, tmp_path / "link.json")
    assert panel.model_to_store(str(tmp_path / "link.json")) == ""
    other = str(tmp_path / "other.json")
    assert panel.model_to_store(other) == other and panel.model_to_store("") == ""
    assert panel.model_to_show("") == str(bundled) and panel.model_to_show(other) == other


def test_saved_scene_reopens_with_the_bundled_model_of_this_install(tmp_path):
    scene = slicer.vtkMRMLScene()
    params = module_parameters(scene)
    params.modelPath = panel.model_to_store(str(bundled_model_path()))
    params.keyPath = str(bundled_key_path())
    path = tmp_path / "scene.mrml"
    scene.SetRootDirectory(str(tmp_path))
    scene.SetURL(str(path))
    assert scene.Commit()
    assert "amif-demo.json" not in path.read_text()

    reopened = slicer.vtkMRMLScene()
    reopened.SetURL(str(path))
    assert reopened.Connect()
    params = module_parameters(reopened)
    view = panel.panel_view(params)
    agrees(view, params)
    assert params.modelPath == "" and view.model_field == str(bundled_model_path())
    assert view.key_label.state == "match"


@pytest.fixture
def keys(tmp_path):
    other = tmp_path / "other-model.amifkey"
    save_key(generate_key("another-model", "Someone"), other)
    (tmp_path / "bad.amifkey").write_text("not a key")
    return {
        "none": "",
        "match": str(bundled_key_path()),
        "other-model": str(other),
        "unreadable": str(tmp_path / "bad.amifkey"),
        "missing": str(tmp_path / "missing.amifkey"),
    }


def test_label_and_apply_follow_every_key_and_model(keys, tmp_path):
    scene = slicer.vtkMRMLScene()
    params = module_parameters(scene)
    params.firstVolume, params.secondVolume = volumes(scene)
    for model in ("", str(tmp_path / "no-such-model.json")):
        for key in keys.values():
            params.keyPath, params.modelPath = key, model
            view = panel.panel_view(params)
            agrees(view, params)
            expected = "model-error" if model else logic.key_state(key or None).state
            assert view.key_label.state == expected
            assert view.apply_enabled == (expected not in ("other-model", "unreadable", "model-error"))
            assert panel.panel_view(params, running=True).apply_enabled is False


def test_apply_needs_both_volumes():
    scene = slicer.vtkMRMLScene()
    params = module_parameters(scene)
    mri, pet = volumes(scene)
    assert not panel.panel_view(params).apply_enabled
    params.firstVolume = mri
    assert not panel.panel_view(params).apply_enabled
    params.secondVolume = pet
    assert panel.panel_view(params).apply_enabled
    assert panel.apply_arguments(params)["first_node"] is mri and panel.apply_arguments(params)["second_node"] is pet


def test_colour_option_reaches_apply():
    params = module_parameters(slicer.vtkMRMLScene())
    assert panel.apply_arguments(params)["use_color_table"] is True  # the default: what the user sees
    params.useColorTable = False
    assert panel.apply_arguments(params)["use_color_table"] is False


def test_output_message_names_the_measured_state():
    from types import SimpleNamespace

    from amif.verify import Verdict

    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetName("AMIF fused")
    for verdict in (Verdict(0.3, 0.12), Verdict(0.01, 0.12), Verdict(0.01, 0.12, erasure=0.1)):
        text, colour = panel.output_message(SimpleNamespace(node=node, verdict=verdict, color_table=""))
        assert verdict.state in text.lower() and "AMIF fused" in text
        assert colour == (panel.ORANGE if verdict.flagged else panel.GREEN)
