"""Undo for the adapter: what `logic.fuse` may change in a scene, recorded before it changes it."""

from __future__ import annotations

import slicer
import vtk


class SceneUndo:
    """What `fuse` may change in `scene`, recorded before it changes it; `restore()` puts it back.

    Recorded: the scene's node ids (nodes added later, the output node and the display nodes made for
    it, are removed on restore), the slice views' background volumes, and for a user-chosen
    `output_node` everything `_write` sets on it: its voxels (a copy: restoring them needs one copy of
    its previous image data in memory), IJK-to-RAS matrix, parent transform, attributes and its scalar
    display node's window/level."""

    def __init__(self, scene, output_node=None):
        self.scene, self.node = scene, output_node
        self.ids = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
        self.backgrounds = {n.GetID(): n.GetBackgroundVolumeID() for n in self._composites()}
        if output_node is None:
            return
        self.image = output_node.GetImageData()
        self.voxels = None
        if self.image is not None:
            self.voxels = vtk.vtkImageData()
            self.voxels.DeepCopy(self.image)
        self.matrix = vtk.vtkMatrix4x4()
        output_node.GetIJKToRASMatrix(self.matrix)
        self.transform = output_node.GetTransformNodeID()
        self.attributes = {k: output_node.GetAttribute(k) for k in output_node.GetAttributeNames() or ()}
        d = output_node.GetDisplayNode()
        self.display = (
            (d, d.GetAutoWindowLevel(), d.GetWindow(), d.GetLevel())
            if d is not None and d.IsA("vtkMRMLScalarVolumeDisplayNode")
            else None
        )

    def _composites(self):
        nodes = self.scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
        return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]

    def restore(self) -> None:
        scene, node = self.scene, self.node
        added = [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]
        for node_id in reversed([i for i in added if i not in self.ids]):
            extra = scene.GetNodeByID(node_id)
            if extra is not None:
                scene.RemoveNode(extra)
        for composite in self._composites():
            if composite.GetID() in self.backgrounds:
                composite.SetBackgroundVolumeID(self.backgrounds[composite.GetID()])
        if node is None:
            return
        if self.image is not None:
            self.image.DeepCopy(self.voxels)
        node.SetAndObserveImageData(self.image)
        node.SetIJKToRASMatrix(self.matrix)
        node.SetAndObserveTransformNodeID(self.transform)
        for k in node.GetAttributeNames() or ():
            if k not in self.attributes:
                node.RemoveAttribute(k)
        for k, v in self.attributes.items():
            node.SetAttribute(k, v)
        if self.display is not None:
            d, auto, window, level = self.display
            d.SetAutoWindowLevel(auto)
            if not auto:
                d.SetWindowLevel(window, level)
        node.Modified()
        node.InvokeEvent(slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent, node)
