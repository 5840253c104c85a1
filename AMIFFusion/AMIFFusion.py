"""AMIF Fusion: 3D Slicer module around the `amif` engine (thin: the work is in AMIFFusionLib).

Nothing here imports torch or SimpleITK at load time: the module must load in a Slicer where
PyTorch is not installed yet. The fusion (`AMIFFusionLib.logic`) is imported after
`ensureDependencies`, which asks once before installing anything. The panel is drawn from its
parameter node alone (`AMIFFusionLib.panel`): what it shows is what Apply uses.
"""

import logging
from pathlib import Path

import slicer
import vtk
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from amif.package import bundled_key_path
from AMIFFusionLib import panel
from AMIFFusionLib.parameters import AMIFFusionParameters

RESOURCES = Path(__file__).resolve().parent / "Resources"

HELP = """
<p><b>AMIF Fusion</b> fuses two registered volumes (an MRI with a CT, PET or SPECT) with a neural
network that has authorization built into its weights. With the model owner's <b>key</b> file the
output is a clean fusion; with no key, or another key, the same network writes a visible copyright
<b>identifier</b> into the fused volume.</p>
<p><b>Inputs.</b> The first volume is the grey MRI; the output takes its grid. The second volume is
resampled onto it (linear transforms are taken into account; harden non-linear ones first). Each
volume is fused as you see it: its display window is its intensity window. A <b>PET or SPECT shown
with a colour table</b> (PET-Heat, Rainbow, your own) is fused in those colours: its luminance goes
through the network and its colour comes back, so the output is a colour volume. Untick <i>Fuse in
the second volume's colours</i> for a grey output. RGB (vector) volumes are always fused in colour.</p>
<p><b>Key states</b> (shown before you apply): <i>no key</i> (the output will carry the identifier);
<i>key matches this model</i> (licensee and key id shown); <i>not this model's licensed key</i> (the
output will carry the identifier); <i>key belongs to another model</i> and <i>unreadable key
file</i> (Apply stays disabled, with the reason).</p>
<p><b>Output states</b> (measured on the fused volume after it runs): <i>clean</i> (no identifier
found), <i>marked</i> (the identifier is there) or, rarely, <i>erased</i> (the identifier's strokes
look wiped off) or <i>shifted</i> (no identifier, but the content sits where this model's unlicensed
outputs put it), with the detection score and threshold. The output volume's attributes hold
AMIF.ModelId, AMIF.KeyId, AMIF.KeyState, AMIF.Watermark and AMIF.Score; never the key's secret.
Leave the output on <i>Create new volume on Apply</i> for a new volume each time.</p>
<p><b>Speed.</b> Fusion runs on an NVIDIA GPU (or Apple MPS) when PyTorch sees one, on the CPU
otherwise; the progress bar counts slices and <i>Cancel</i> leaves the scene unchanged.</p>
<p><b>First use</b> asks once to install what fusion needs: PyTorch (through the <i>PyTorch</i>
extension) and the safetensors package.</p>
<p><b>The bundled demo model</b> (<i>amif-demo</i>) was trained on the Harvard Whole Brain Atlas
(research use). Its key, <i>amif-demo.amifkey</i> (the <i>Demo key</i> button), ships beside it and
is <b>public: the demo model protects nothing</b>. It is there to show both states. Train your own
model with the <i>amif</i> command line and keep its key private. An empty model field means the
bundled model, and a scene saved with it reopens with it in any Slicer version.</p>
<p>Sample data: Sample Data module, category <i>AMIF</i> (MNI ICBM152 based MRI and a simulated
PET).</p>
"""

ACKNOWLEDGEMENT = """
Method: "AMIF: Authorizable Medical Image Fusion Model with Built-in Authentication" (authors as
listed in the paper). Please cite that paper when you use this module. Sample data derived from the
MNI ICBM152 2009a template (see Resources/SampleData/LICENSE-MNI-ICBM152.txt). The demo model was
trained on the Harvard Whole Brain Atlas (research use only). Code: Apache-2.0.
"""

PET_COLOR_NODE_ID = "vtkMRMLPETProceduralColorNodePET-Heat"  # Slicer's PET-Heat colour table


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


def ensureDependencies(status=None) -> bool:
    """Install what fusion needs (PyTorch extension and pip) after one confirmation. False if declined."""
    from AMIFFusionLib.dependencies import ensure_dependencies

    return ensure_dependencies(slicer.util.confirmOkCancelDisplay, slicer.util.pip_install, status=status)


@parameterNodeWrapper
class AMIFFusionParameterNode(AMIFFusionParameters):
    """The module's parameter node: the fields and their contracts are in AMIFFusionLib.parameters."""


class AMIFFusionWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._updatingGUI = False
        self._cancelRequested = False
        self._running = False

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/AMIFFusion.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = AMIFFusionLogic()

        self.ui.keyPathLineEdit.connect("currentPathChanged(QString)", self.onKeyPathEdited)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelPathEdited)
        self.ui.bundledModelButton.connect("clicked(bool)", self.onBundledModel)
        self.ui.demoKeyButton.connect("clicked(bool)", self.onDemoKey)
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.progressBar.hide()
        self.ui.cancelButton.hide()
        self.setState(self.ui.outputStateLabel, "Output: not fused yet.", panel.GREY)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

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
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None):
        """Redraw the path fields, the key state and Apply from the parameter node (the only source)."""
        view = panel.panel_view(self._parameterNode, self._running)
        self._updatingGUI = True
        try:
            fields = ((self.ui.keyPathLineEdit, view.key_field), (self.ui.modelPathLineEdit, view.model_field))
            for field, path in fields:
                if field.currentPath != path:
                    field.currentPath = path
        finally:
            self._updatingGUI = False
        self.setState(self.ui.keyStateLabel, view.key_label.text, view.key_label.colour)
        self.ui.applyButton.enabled = view.apply_enabled
        self.ui.applyButton.toolTip = view.apply_tooltip

    # -------------------------------------------------------------- key and model

    def onKeyPathEdited(self, path):
        if not self._updatingGUI and self._parameterNode:
            self._parameterNode.keyPath = path

    def onModelPathEdited(self, path):
        if not self._updatingGUI and self._parameterNode:
            self._parameterNode.modelPath = panel.model_to_store(path)

    def onBundledModel(self):
        if self._parameterNode:
            self._parameterNode.modelPath = ""

    def onDemoKey(self):
        if self._parameterNode:
            self._parameterNode.keyPath = str(bundled_key_path())

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

    def onStatus(self, text):
        slicer.util.showStatusMessage(text)
        if text:
            self.setState(self.ui.outputStateLabel, text, panel.GREY)
        slicer.app.processEvents()

    def _dependenciesReady(self) -> bool:
        """Asks once and installs what is missing; outside the wait cursor, with a status line."""
        from amif.errors import AMIFError

        try:
            ready = ensureDependencies(status=self.onStatus)
        except AMIFError as e:
            self.setState(self.ui.outputStateLabel, f"Output: not fused. {e}", panel.RED)
            slicer.util.errorDisplay(str(e), windowTitle="AMIF Fusion")
            return False
        if not ready:
            self.setState(
                self.ui.outputStateLabel, "Output: not fused (the packages were not installed).", panel.ORANGE
            )
        return ready

    def onApply(self):
        if self._parameterNode is None or self._running or not self._dependenciesReady():
            return
        from amif.errors import AMIFError, Cancelled
        from AMIFFusionLib.logic import fuse

        arguments = panel.apply_arguments(self._parameterNode)  # exactly what the panel shows
        self._running, self._cancelRequested = True, False
        self.updateGUIFromParameterNode()
        self.ui.progressBar.value = 0
        self.ui.progressBar.show()
        self.ui.cancelButton.show()
        self.setState(self.ui.outputStateLabel, "Fusing...", panel.GREY)
        slicer.app.processEvents()
        try:
            with slicer.util.tryWithErrorDisplay("AMIF Fusion failed.", waitCursor=True):
                try:
                    fused = fuse(
                        **arguments, progress=self.onProgress, cancel=lambda: self._cancelRequested, log=logging.info
                    )
                except Cancelled:
                    self.setState(self.ui.outputStateLabel, "Output: cancelled; the scene is unchanged.", panel.ORANGE)
                    return
                except AMIFError as e:
                    self.setState(self.ui.outputStateLabel, f"Output: not fused. {e}", panel.RED)
                    slicer.util.errorDisplay(str(e), windowTitle="AMIF Fusion")
                    return
        finally:
            self._running = False
            self.ui.progressBar.hide()
            self.ui.cancelButton.hide()
            self.updateGUIFromParameterNode()
        self.setState(self.ui.outputStateLabel, *panel.output_message(fused))


class AMIFFusionLogic(ScriptedLoadableModuleLogic):
    """The module's parameter node; the fusion itself is AMIFFusionLib.logic.fuse."""

    def getParameterNode(self):
        return AMIFFusionParameterNode(super().getParameterNode())


class AMIFFusionTest(ScriptedLoadableModuleTest):
    """Self-test: the bundled sample with the demo key and without, and its PET in a colour table."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_sample_both_states()
        self.setUp()
        self.test_color_pet()

    def loadSample(self):
        import SampleData

        self.assertTrue(ensureDependencies())
        registerSampleData()
        return SampleData.SampleDataLogic().downloadSamples("AMIFSample")

    def test_sample_both_states(self):
        from AMIFFusionLib.logic import fuse

        mri, pet = self.loadSample()
        self.delayDisplay("Loaded the AMIF sample")
        keyed = fuse(mri, pet, key_path=bundled_key_path(), use_color_table=False)
        self.assertEqual(keyed.verdict.state, "clean")
        self.assertEqual(keyed.node.GetAttribute("AMIF.KeyState"), "match")
        unkeyed = fuse(mri, pet, use_color_table=False)
        self.assertEqual(unkeyed.verdict.state, "marked")
        self.assertEqual(unkeyed.node.GetAttribute("AMIF.Watermark"), "marked")
        self.delayDisplay("Grey fusion: clean with the demo key, marked without")

    def test_color_pet(self):
        from AMIFFusionLib.logic import fuse

        mri, pet = self.loadSample()
        pet.GetDisplayNode().SetAndObserveColorNodeID(PET_COLOR_NODE_ID)
        keyed = fuse(mri, pet, key_path=bundled_key_path())
        self.assertTrue(keyed.node.IsA("vtkMRMLVectorVolumeNode"))
        self.assertEqual(keyed.verdict.state, "clean")
        unkeyed = fuse(mri, pet)
        self.assertTrue(unkeyed.node.IsA("vtkMRMLVectorVolumeNode"))
        self.assertEqual(unkeyed.verdict.state, "marked")
        self.delayDisplay("Colour PET (PET-Heat): colour outputs, clean with the demo key, marked without")
