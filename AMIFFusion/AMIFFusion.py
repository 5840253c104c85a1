"""AMIF Fusion: 3D Slicer module around the `amif` engine (thin: the work is in AMIFFusionLib).

Nothing here imports torch, SimpleITK or the engine at load time: the module must load in a
Slicer where PyTorch is not installed yet. `amif` and `AMIFFusionLib.logic` are imported inside
functions, after `ensureDependencies` (which asks before installing anything).
"""

import logging
from pathlib import Path

import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLVolumeNode
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

RESOURCES = Path(__file__).resolve().parent / "Resources"
GREEN, ORANGE, RED, GREY = "#1b7f2a", "#c05a00", "#b00020", "#555555"

HELP = """
<p><b>AMIF Fusion</b> fuses two registered volumes (an MRI with a CT, PET or SPECT; colour PET/SPECT
as RGB vector volumes) with a neural network that has authorization built into its weights. With
the model owner's <b>key</b> file the output is a clean fusion; with no key, or another key, the same
network writes a visible copyright <b>identifier</b> into the fused volume.</p>
<p><b>Key states</b> (shown before you apply): <i>no key</i> (the output will carry the identifier);
<i>key matches this model</i> (licensee and key id shown); <i>not this model's licensed key</i>;
<i>key belongs to another model</i> and <i>unreadable key file</i> (both stop the fusion, with the
reason).</p>
<p><b>Output states</b> (measured on the fused volume after it runs): <i>clean</i> (no identifier
found), <i>marked</i> (the identifier is there) or, rarely, <i>erased</i> (the identifier's strokes look
wiped off) or <i>shifted</i> (no identifier, but the content sits where this model's unlicensed outputs
put it, measured against the two inputs), with the detection score and threshold. The
output volume's attributes hold AMIF.ModelId, AMIF.KeyId, AMIF.KeyState, AMIF.Watermark and
AMIF.Score; never the key's secret.</p>
<p>The intensity window of each input is its display window (what you see is what gets fused).
The second volume is resampled onto the first volume's grid; linear transforms are taken into
account, non-linear ones must be hardened first.</p>
<p><b>The bundled demo model</b> (<i>amif-demo</i>) was trained on the Harvard Whole Brain Atlas
(research use). Its key, <i>amif-demo.amifkey</i>, ships beside it and is <b>public: the demo model
protects nothing</b>. It is there to show both states. Train your own model with the <i>amif</i>
command line (<tt>amif keygen</tt>, <tt>amif train</tt>) and keep its key private.</p>
<p>Sample data: Sample Data module, category <i>AMIF</i> (MNI ICBM152 based MRI and a simulated
PET).</p>
"""

ACKNOWLEDGEMENT = """
Method: "AMIF: Authorizable Medical Image Fusion Model with Built-in Authentication" (authors as
listed in the paper). Please cite that paper when you use this module. Sample data derived from the
MNI ICBM152 2009a template (see Resources/SampleData/LICENSE-MNI-ICBM152.txt). The demo model was
trained on the Harvard Whole Brain Atlas (research use only). Code: Apache-2.0.
"""


class AMIFFusion(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "AMIF Fusion"
        self.parent.categories = ["Filtering"]
        self.parent.dependencies = []
        self.parent.contributors = ["AMIF contributors"]
        self.parent.helpText = HELP
        self.parent.acknowledgementText = ACKNOWLEDGEMENT
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    from AMIFFusionLib.sampledata import register_sample_data

    register_sample_data(RESOURCES)


def ensureDependencies() -> bool:
    """Install torch (PyTorch extension) and the engine's packages, asking first. False if declined."""
    from AMIFFusionLib.dependencies import ensure_dependencies

    return ensure_dependencies(slicer.util.confirmOkCancelDisplay, slicer.util.pip_install)


@parameterNodeWrapper
class AMIFFusionParameterNode:
    firstVolume: vtkMRMLScalarVolumeNode
    secondVolume: vtkMRMLVolumeNode
    keyPath: str = ""
    modelPath: str = ""  # empty: the bundled demo model package
    outputVolume: vtkMRMLVolumeNode


class AMIFFusionWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._cancelRequested = False
        self._running = False

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/AMIFFusion.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = AMIFFusionLogic()

        self.ui.modelPathLineEdit.currentPath = str(RESOURCES / "Models" / "amif-demo.json")
        self.ui.keyPathLineEdit.connect("currentPathChanged(QString)", self.onPathsChanged)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onPathsChanged)
        self.ui.bundledModelButton.connect("clicked(bool)", self.onBundledModel)
        self.ui.demoKeyButton.connect("clicked(bool)", self.onDemoKey)
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.progressBar.hide()
        self.ui.cancelButton.hide()
        self.setState(self.ui.outputStateLabel, "Output: not fused yet.", GREY)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()
        self.onPathsChanged()

    def cleanup(self):
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, parameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateApplyButton)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateApplyButton)
            if self._parameterNode.keyPath:
                self.ui.keyPathLineEdit.currentPath = self._parameterNode.keyPath
            if self._parameterNode.modelPath:
                self.ui.modelPathLineEdit.currentPath = self._parameterNode.modelPath
        self.updateApplyButton()

    def updateApplyButton(self, caller=None, event=None):
        p = self._parameterNode
        ready = bool(p and p.firstVolume and p.secondVolume) and not self._running
        self.ui.applyButton.enabled = ready
        self.ui.applyButton.toolTip = "Fuse the two volumes" if ready else "Choose the first and second volume"

    # -------------------------------------------------------------- key and model

    def onBundledModel(self):
        self.ui.modelPathLineEdit.currentPath = str(RESOURCES / "Models" / "amif-demo.json")

    def onDemoKey(self):
        self.ui.keyPathLineEdit.currentPath = str(RESOURCES / "Models" / "amif-demo.amifkey")

    def onPathsChanged(self, _path=None):
        keyPath, modelPath = self.ui.keyPathLineEdit.currentPath, self.ui.modelPathLineEdit.currentPath
        if self._parameterNode:
            self._parameterNode.keyPath = keyPath
            self._parameterNode.modelPath = modelPath
        from amif.errors import AMIFError
        from AMIFFusionLib.logic import key_state

        try:
            status = key_state(keyPath or None, modelPath or None)
        except AMIFError as e:
            self.setState(self.ui.keyStateLabel, f"Model package: {e}", RED)
            return
        colour = {"match": GREEN, "none": ORANGE, "other-key": ORANGE}.get(status.state, RED)
        titles = {"match": "Key matches this model", "other-key": "Not this model's licensed key",
                  "other-model": "Key belongs to another model", "unreadable": "Unreadable key file"}
        title = titles.get(status.state)  # "none": the engine's message starts with "No key"
        text = (f"<b>{title}.</b> " if title else "") + status.message
        if status.key_id:
            text += f"<br>Key id {status.key_id}, licensee {status.licensee or 'not named'}."
        if status.state not in ("other-model", "unreadable"):
            text += f"<br>Expected output: <b>{status.expected}</b>."
        self.setState(self.ui.keyStateLabel, text, colour)

    @staticmethod
    def setState(label, text, colour):
        label.text = text
        label.setStyleSheet(f"QLabel {{ color: {colour}; }}")

    # -------------------------------------------------------------- run

    def onCancel(self):
        self._cancelRequested = True

    def onProgress(self, done, total):
        self.ui.progressBar.maximum = total
        self.ui.progressBar.value = done
        slicer.app.processEvents()

    def onApply(self):
        from_user = self._parameterNode
        with slicer.util.tryWithErrorDisplay("AMIF Fusion failed.", waitCursor=True):
            if not ensureDependencies():
                self.setState(self.ui.outputStateLabel, "Output: not fused (the dependencies were not installed).",
                              ORANGE)
                return
            from amif.errors import AMIFError, Cancelled
            from AMIFFusionLib.logic import fuse

            self._running, self._cancelRequested = True, False
            self.updateApplyButton()
            self.ui.progressBar.value = 0
            self.ui.progressBar.show()
            self.ui.cancelButton.show()
            slicer.app.processEvents()
            try:
                fused = fuse(from_user.firstVolume, from_user.secondVolume, from_user.outputVolume,
                             key_path=from_user.keyPath or None, model_path=from_user.modelPath or None,
                             progress=self.onProgress, cancel=lambda: self._cancelRequested, log=logging.info)
            except Cancelled:
                self.setState(self.ui.outputStateLabel, "Output: cancelled; the scene is unchanged.", ORANGE)
                return
            except AMIFError as e:
                self.setState(self.ui.outputStateLabel, f"Output: not fused. {e}", RED)
                slicer.util.errorDisplay(str(e), windowTitle="AMIF Fusion")
                return
            finally:
                self._running = False
                self.ui.progressBar.hide()
                self.ui.cancelButton.hide()
                self.updateApplyButton()
            from_user.outputVolume = fused.node
            v = fused.verdict
            if v.marked:
                text = (f"<b>Output marked:</b> it carries the identifier (score {v.score:.3f}, "
                        f"threshold {v.threshold:.3f}).")
            elif v.erased:
                text = (f"<b>Output erased:</b> the identifier's strokes look wiped off "
                        f"(erasure ratio {v.erasure:.3f}).")
            elif v.shifted:
                text = (f"<b>Output shifted:</b> no identifier, but the content is moved {v.displacement:.2f} "
                        f"pixels as in this model's unlicensed outputs.")
            else:
                text = f"<b>Output clean:</b> no identifier found (score {v.score:.3f}, threshold {v.threshold:.3f})."
            self.setState(self.ui.outputStateLabel, f"{text}<br>Written to '{fused.node.GetName()}'.",
                          ORANGE if v.flagged else GREEN)


class AMIFFusionLogic(ScriptedLoadableModuleLogic):
    """The module's parameter node; the fusion itself is AMIFFusionLib.logic.fuse."""

    def getParameterNode(self):
        return AMIFFusionParameterNode(super().getParameterNode())


class AMIFFusionTest(ScriptedLoadableModuleTest):
    """Self-test: the bundled sample through the logic, with the demo key and without a key."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_sample_both_states()

    def test_sample_both_states(self):
        import SampleData

        self.assertTrue(ensureDependencies())
        from AMIFFusionLib.logic import fuse

        registerSampleData()
        mri, pet = SampleData.SampleDataLogic().downloadSamples("AMIFSample")
        self.delayDisplay("Loaded the AMIF sample")
        keyed = fuse(mri, pet, key_path=RESOURCES / "Models" / "amif-demo.amifkey")
        self.assertEqual(keyed.verdict.state, "clean")
        self.assertEqual(keyed.node.GetAttribute("AMIF.KeyState"), "match")
        unkeyed = fuse(mri, pet)
        self.assertEqual(unkeyed.verdict.state, "marked")
        self.assertEqual(unkeyed.node.GetAttribute("AMIF.Watermark"), "marked")
        self.delayDisplay("AMIF Fusion self-test passed")
