"""Render the module's .ui with real Qt widgets (PySide6, offscreen), in the state of a stand-in panel.

tools/check_slicer_panel.py drives `AMIFFusionWidget` on stand-in widgets (tools/slicer_standins.py);
`render(ui_file, standins, out)` loads the same .ui file with Qt's own loader and copies each
stand-in's state into the widget of the same name: texts, label colours, path fields, current
nodes, check boxes, enabled and visible flags. CTK and MRML widgets are drawn by their nearest
Qt base (ctkPathLineEdit as a line edit, qMRMLNodeComboBox as a combo box, ctkCollapsibleButton
as a group box), so the picture is the panel's real layout and state, not Slicer's styling.

Needs PySide6 (pip install PySide6-Essentials); runs without a display (QT_QPA_PLATFORM=offscreen).
"""

from __future__ import annotations

import os
import re


def render(ui_file, standins: dict, out, width: int = 420) -> None:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import Property, QFile
    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import QApplication, QCheckBox, QComboBox, QGroupBox, QLabel, QLineEdit, QWidget

    app = QApplication.instance() or QApplication([])

    class ctkCollapsibleButton(QGroupBox):
        text = Property(str, QGroupBox.title, QGroupBox.setTitle)

    class ctkPathLineEdit(QLineEdit):
        pass

    class qMRMLNodeComboBox(QComboBox):
        pass

    class qMRMLWidget(QWidget):
        pass

    loader = QUiLoader()
    for cls in (ctkCollapsibleButton, ctkPathLineEdit, qMRMLNodeComboBox, qMRMLWidget):
        loader.registerCustomWidget(cls)
    f = QFile(str(ui_file))
    f.open(QFile.ReadOnly)
    top = loader.load(f)
    for name, s in standins.items():
        w = top.findChild(QWidget, name)
        if w is None:
            continue
        w.setEnabled(s.enabled)
        w.setVisible(s.visible)
        if isinstance(w, QLabel):
            w.setText(s.text)
            colour = re.search(r"color:\s*(#[0-9a-fA-F]{6})", s.styleSheet)
            if colour:
                w.setStyleSheet(f"QLabel {{ color: {colour.group(1)}; }}")
        elif isinstance(w, QCheckBox):
            w.setChecked(s.checked)
        elif isinstance(w, qMRMLNodeComboBox):
            node = s.currentNode()
            w.clear()
            w.addItem(node.GetName() if node is not None else s.noneDisplay)
        elif isinstance(w, ctkPathLineEdit):
            w.setText(s.currentPath)
            w.setCursorPosition(len(s.currentPath))  # a path field shows its file name end
        elif hasattr(s, "value") and hasattr(w, "setValue"):
            w.setMaximum(s.maximum)
            w.setValue(s.value)
    top.resize(width, top.sizeHint().height())
    top.show()
    app.processEvents()
    top.resize(width, top.sizeHint().height())
    if not top.grab().save(str(out)):
        raise OSError(f"could not write {out}")
