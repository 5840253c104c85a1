"""Stand-in Qt, CTK and Slicer widgets for driving a scripted module's panel without Qt.

Only what the real classes have: each stand-in declares the properties, signals and methods it
exposes, nothing else can be set on it (a misspelt property is an AttributeError, as in PythonQt
it would be a silent no-op or an error), and `check_against_headers` compares the CTK and MRML
stand-ins with the C++ headers of the Slicer and CTK sources they stand for, and the Qt ones with
PySide6's meta-objects when PySide6 is installed. Signals call a Python slot with as many of the
signal's arguments as the slot takes, as PythonQt does. `load_ui` builds a panel from a .ui file
(widgets, properties, dynamic properties such as SlicerParameterName, and connections).
"""

from __future__ import annotations

import inspect
import re
import types
import xml.etree.ElementTree as ET


class Signal:
    def __init__(self):
        self._slots = []

    def connect(self, slot):
        self._slots.append(slot)

    def disconnect(self, slot=None):
        if slot is None:
            self._slots.clear()
        elif slot in self._slots:
            self._slots.remove(slot)

    def emit(self, *args):
        for slot in list(self._slots):
            slot(*args[: _arity(slot, len(args))])


def _arity(fn, most: int) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return most
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return most
    return min(most, sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params))


class QObject:
    """Properties (name -> default), signals and methods are declared per class and inherited."""

    PROPERTIES: dict = {"objectName": ""}
    SIGNALS: tuple = ()

    def __init__(self, parent=None):
        object.__setattr__(self, "_values", {})
        object.__setattr__(self, "_dynamic", {})
        object.__setattr__(self, "_children", [])
        object.__setattr__(self, "_parent", parent)
        for cls in reversed(type(self).__mro__):
            for name in getattr(cls, "SIGNALS", ()):
                object.__setattr__(self, name, Signal())
            self._values.update(getattr(cls, "PROPERTIES", {}))
        if parent is not None:
            parent._children.append(self)

    def __getattr__(self, name):
        values = self.__dict__.get("_values", {})
        if name in values:
            return values[name]
        raise AttributeError(f"{type(self).__name__} has no attribute '{name}'")

    def __setattr__(self, name, value):
        if name not in self._values:
            raise AttributeError(f"{type(self).__name__} has no property '{name}'")
        old = self._values[name]
        self._values[name] = value
        if old != value:
            self._changed(name, value)

    def _changed(self, name, value):
        """Emit the notify signal of a property (subclasses)."""

    # PythonQt spells objectName as `name` too
    @property
    def name(self):
        return self._values["objectName"]

    def parent(self):
        return self._parent

    def children(self):
        return list(self._children)

    def findChildren(self, cls):
        found = []
        for child in self._children:
            if isinstance(child, cls):
                found.append(child)
            found += child.findChildren(cls)
        return found

    def property(self, name):
        if name in self._values:
            return self._values[name]
        return self._dynamic.get(name)

    def setProperty(self, name, value):
        if name in self._values:
            setattr(self, name, value)
        else:
            self._dynamic[name] = value

    def className(self):
        return type(self).__name__

    def isWidgetType(self):
        return False

    def connect(self, signature, slot):
        """PythonQt's connect('signal(args)', callable)."""
        getattr(self, signature.split("(")[0]).connect(slot)

    def disconnect(self, signature, slot=None):
        getattr(self, signature.split("(")[0]).disconnect(slot)

    def blockSignals(self, block):
        raise NotImplementedError("not used by the module")


class QWidget(QObject):
    PROPERTIES = {
        "enabled": True,
        "visible": True,
        "toolTip": "",
        "styleSheet": "",
        "geometry": None,
        "minimumSize": None,
        "sizePolicy": None,
    }

    def __init__(self, parent=None):
        super().__init__(parent)
        object.__setattr__(self, "_layout", None)

    def isWidgetType(self):
        return True

    def show(self):
        self.visible = True

    def hide(self):
        self.visible = False

    def setStyleSheet(self, sheet):
        self.styleSheet = sheet

    def layout(self):
        return self._layout

    def setLayout(self, layout):
        object.__setattr__(self, "_layout", layout)
        layout._owner = self


class QLayout:
    def __init__(self, parent=None):
        self._owner = parent
        if parent is not None:
            parent.setLayout(self)

    def addWidget(self, widget):
        if self._owner is not None and widget._parent is None:
            object.__setattr__(widget, "_parent", self._owner)
            self._owner._children.append(widget)


class QVBoxLayout(QLayout):
    pass


class QHBoxLayout(QLayout):
    pass


class QFormLayout(QLayout):
    pass


class QLabel(QWidget):
    PROPERTIES = {"text": "", "wordWrap": False, "textFormat": None}


class QAbstractButton(QWidget):
    PROPERTIES = {"text": "", "checkable": False, "checked": False}
    SIGNALS = ("clicked", "toggled")

    def click(self):
        if not self.enabled:
            return
        if self.checkable:
            self.checked = not self.checked
        self.clicked.emit(self.checked)

    def _changed(self, name, value):
        if name == "checked":
            self.toggled.emit(value)


class QPushButton(QAbstractButton):
    pass


class QCheckBox(QAbstractButton):
    PROPERTIES = {"checkable": True}
    SIGNALS = ("stateChanged",)

    def _changed(self, name, value):
        super()._changed(name, value)
        if name == "checked":
            self.stateChanged.emit(2 if value else 0)  # Qt::Checked, Qt::Unchecked


class QProgressBar(QWidget):
    PROPERTIES = {"value": 0, "minimum": 0, "maximum": 100, "format": "%p%"}


class ctkCollapsibleButton(QAbstractButton):
    HEADER = ("CTK", "Libs/Widgets/ctkCollapsibleButton.h")
    PROPERTIES = {"collapsed": False}


class ctkPathLineEdit(QWidget):
    HEADER = ("CTK", "Libs/Widgets/ctkPathLineEdit.h")
    PROPERTIES = {"currentPath": "", "filters": None, "nameFilters": None}
    SIGNALS = ("currentPathChanged",)

    def setCurrentPath(self, path):
        self.currentPath = path

    def _changed(self, name, value):
        if name == "currentPath":
            self.currentPathChanged.emit(value)


class qMRMLWidget(QWidget):
    HEADER = ("Slicer", "Libs/MRML/Widgets/qMRMLWidget.h")
    SIGNALS = ("mrmlSceneChanged",)

    def __init__(self, parent=None):
        super().__init__(parent)
        object.__setattr__(self, "_scene", None)

    def setMRMLScene(self, scene):
        object.__setattr__(self, "_scene", scene)
        self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self):
        return self._scene


class qMRMLNodeComboBox(QWidget):
    """The behaviour the panel relies on (qMRMLNodeComboBox.cxx and QComboBox): nodes of `nodeTypes`
    (exact classes unless showChildNodeTypes); without a None entry, the first node inserted into
    an empty list becomes current, and a removed current node gives way to a remaining one;
    setCurrentNode(None) clears the selection; currentNodeChanged on every change."""

    HEADER = ("Slicer", "Libs/MRML/Widgets/qMRMLNodeComboBox.h")
    PROPERTIES = {
        "nodeTypes": (),
        "showChildNodeTypes": True,
        "noneEnabled": False,
        "addEnabled": True,
        "removeEnabled": True,
        "renameEnabled": False,
        "noneDisplay": "None",
        "selectNodeUponCreation": True,
    }
    SIGNALS = ("currentNodeChanged", "currentNodeIDChanged", "nodeAdded")

    def __init__(self, parent=None):
        super().__init__(parent)
        object.__setattr__(self, "_scene", None)
        object.__setattr__(self, "_current", None)
        object.__setattr__(self, "_listed", [])
        object.__setattr__(self, "_observers", [])

    def _accepts(self, node) -> bool:
        if node is None or node.GetHideFromEditors():
            return False
        if self.showChildNodeTypes:
            return any(node.IsA(t) for t in self.nodeTypes)
        return node.GetClassName() in self.nodeTypes

    def _nodes(self) -> list:
        if self._scene is None:
            return []
        nodes = (self._scene.GetNthNode(i) for i in range(self._scene.GetNumberOfNodes()))
        return [n for n in nodes if self._accepts(n)]

    def setMRMLScene(self, scene):
        if self._scene is not None:
            for tag in self._observers:
                self._scene.RemoveObserver(tag)
        object.__setattr__(self, "_scene", scene)
        object.__setattr__(self, "_observers", [])
        if scene is not None:
            for event in (scene.NodeAddedEvent, scene.NodeRemovedEvent, scene.EndCloseEvent, scene.EndImportEvent):
                self._observers.append(scene.AddObserver(event, lambda caller, ev: self._sync()))
        self._sync()

    def _sync(self):
        nodes, was_empty = self._nodes(), not self._listed
        object.__setattr__(self, "_listed", nodes)
        current = self._current if self._current in nodes else None
        if self._current is not None and current is None and not self.noneEnabled and nodes:
            current = nodes[0]  # the current node was removed: QComboBox moves to a remaining row
        elif current is None and was_empty and nodes and not self.noneEnabled:
            current = nodes[0]  # rows inserted into an empty QComboBox: the first becomes current
        self._set(current)

    def _set(self, node):
        if node is self._current:
            return
        object.__setattr__(self, "_current", node)
        self.currentNodeChanged.emit(node)
        self.currentNodeIDChanged.emit(node.GetID() if node else "")

    def _changed(self, name, value):
        if name in ("nodeTypes", "showChildNodeTypes", "noneEnabled"):
            self._sync()

    def currentNode(self):
        return self._current

    def currentNodeID(self):
        return self._current.GetID() if self._current else ""

    def setCurrentNode(self, node):
        if isinstance(node, str):
            node = self._scene.GetNodeByID(node) if self._scene else None
        self._set(node if node is not None and self._accepts(node) else None)

    def setCurrentNodeID(self, node_id):
        self.setCurrentNode(node_id)


QT_CLASSES = (QWidget, QLabel, QPushButton, QCheckBox, QProgressBar)
CTK_CLASSES = (ctkCollapsibleButton, ctkPathLineEdit)
MRML_CLASSES = (qMRMLWidget, qMRMLNodeComboBox)
ALL_CLASSES = {c.__name__: c for c in QT_CLASSES + CTK_CLASSES + MRML_CLASSES}


def _placeholder_module(name: str, classes: dict, extra: dict) -> types.ModuleType:
    """A module with the given classes; any other class name it is asked for is a fresh class
    that no widget is an instance of (so `type(w) in (qt.QSlider, ...)` checks are simply False)."""
    module = types.ModuleType(name)
    module.__dict__.update(classes)
    module.__dict__.update(extra)

    def __getattr__(attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        cls = type(attr, (QWidget,), {})
        setattr(module, attr, cls)
        return cls

    module.__getattr__ = __getattr__
    return module


class QSettings:
    def contains(self, key):
        return False

    def value(self, key, default=None):
        return default

    def setValue(self, key, value):
        pass


class QIcon:
    def __init__(self, path=""):
        self.path = path


class QFile:
    ReadOnly = 1

    def __init__(self, path):
        self.path = str(path)

    def exists(self):
        import os

        return os.path.isfile(self.path)

    def open(self, mode):
        return True


class QUiLoader:
    def load(self, qfile):
        return load_ui(qfile.path)


class Qt:
    WaitCursor = 3
    RichText = 1


class QApplication:
    @staticmethod
    def setOverrideCursor(cursor):
        pass

    @staticmethod
    def restoreOverrideCursor():
        pass


def qt_module() -> types.ModuleType:
    classes = {c.__name__: c for c in QT_CLASSES}
    extra = {
        "QObject": QObject,
        "QVBoxLayout": QVBoxLayout,
        "QHBoxLayout": QHBoxLayout,
        "QFormLayout": QFormLayout,
        "QSettings": QSettings,
        "QIcon": QIcon,
        "QFile": QFile,
        "QUiLoader": QUiLoader,
        "Qt": Qt,
        "QApplication": QApplication,
    }
    return _placeholder_module("qt", classes, extra)


def ctk_module() -> types.ModuleType:
    return _placeholder_module("ctk", {c.__name__: c for c in CTK_CLASSES}, {})


# ----------------------------------------------------------------------------- .ui files


def _value(prop: ET.Element):
    node = prop[0]
    if node.tag == "bool":
        return node.text == "true"
    if node.tag == "number":
        return int(node.text)
    if node.tag == "stringlist":
        return tuple(s.text or "" for s in node.iter("string"))
    if node.tag in ("string", "set", "enum", "cstring"):
        return node.text or ""
    return tuple((child.tag, child.text) for child in node)  # rect, size...


def load_ui(path) -> QWidget:
    """The widget tree of a Qt Designer file, built from the stand-ins; an unknown widget class
    or a property the stand-in lacks is an error."""
    root = ET.parse(str(path)).getroot()
    widgets = {}

    def build(element, parent):
        if element.tag == "widget":
            cls = ALL_CLASSES.get(element.get("class"))
            if cls is None:
                raise TypeError(f"no stand-in for widget class {element.get('class')}")
            w = cls(parent)
            w.objectName = element.get("name")
            widgets[w.objectName] = w
            for prop in element.findall("property"):
                name, value = prop.get("name"), _value(prop)
                if prop.get("stdset") == "0":
                    w.setProperty(name, value)
                elif name in ("sizeHint", "orientation"):
                    continue
                else:
                    setattr(w, name, value)
            parent = w
        for child in element:
            if child.tag in ("widget", "layout", "item"):
                build(child, parent)

    top = root.find("widget")
    build(top, None)
    for c in root.iter("connection"):
        sender, receiver = widgets[c.findtext("sender")], widgets[c.findtext("receiver")]
        getattr(sender, c.findtext("signal").split("(")[0]).connect(getattr(receiver, c.findtext("slot").split("(")[0]))
    return widgets[top.get("name")]


# ----------------------------------------------------------------------------- checks


PYTHONQT_EXTRAS = {"name", "className", "connect", "disconnect"}  # PythonQt adds these to every QObject


def exposed_names(cls, inherited: bool = False) -> set:
    """Public names a stand-in class exposes (properties, signals, methods): its own, or with
    those of its stand-in base classes."""
    classes = [c for c in cls.__mro__ if c is not object] if inherited else [cls]
    names = set()
    for c in classes:
        names |= set(vars(c).get("PROPERTIES", {})) | set(vars(c).get("SIGNALS", ()))
        names |= {n for n, v in vars(c).items() if not n.startswith("_") and (callable(v) or isinstance(v, property))}
    return names - {"HEADER", "PROPERTIES", "SIGNALS"}


def check_against_headers(read_header) -> list[str]:
    """Problems: a name a CTK/MRML stand-in exposes that its C++ header does not declare.
    read_header(project, path) -> text of that header in the sources the check runs against."""
    problems = []
    for cls in CTK_CLASSES + MRML_CLASSES:
        project, path = cls.HEADER
        text = read_header(project, path)
        for name in sorted(exposed_names(cls)):
            if not re.search(rf"\b{re.escape(name)}\b", text):
                problems.append(f"{cls.__name__}.{name} is not in {project}:{path}")
    return problems


def check_against_pyside() -> tuple[list[str], str]:
    """Problems: a name a Qt stand-in exposes that Qt's class lacks (PySide6 meta-objects)."""
    try:
        from PySide6 import QtWidgets
    except ImportError:
        return [], "Qt stand-ins not checked (PySide6 is not installed: pip install PySide6-Essentials)"
    problems = []
    for cls in QT_CLASSES:
        real = getattr(QtWidgets, cls.__name__)
        meta = real.staticMetaObject
        props = {meta.property(i).name() for i in range(meta.propertyCount())}
        methods = {bytes(meta.method(i).name()).decode() for i in range(meta.methodCount())} | set(dir(real))
        for name in sorted(exposed_names(cls, inherited=True) - PYTHONQT_EXTRAS):
            if name not in props and name not in methods:
                problems.append(f"{cls.__name__}.{name} is not a property, signal or method of Qt's {cls.__name__}")
    return problems, f"Qt stand-ins checked against PySide6 {__import__('PySide6').__version__}"
