"""What the AMIF Fusion panel shows, and what Apply uses, from the parameter node alone (no qt).

The panel has one source of truth, its parameter node (an `AMIFFusionParameters` wrapped by
Slicer's parameterNodeWrapper, or anything with the same attributes). The widget writes what the
user types into it and, on every change of it, redraws itself from `panel_view(params)`; Apply
takes its arguments from `apply_arguments(params)`. So the key shown, the key state announced and
the key used cannot disagree, after edits, scene close, reload or a reopened scene.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from amif.package import bundled_model_path

GREEN, ORANGE, RED, GREY = "#1b7f2a", "#c05a00", "#b00020", "#555555"

KEY_TITLES = {
    "match": "Key matches this model",
    "other-key": "Not this model's licensed key",
    "other-model": "Key belongs to another model",
    "unreadable": "Unreadable key file",
}
KEY_COLOURS = {"match": GREEN, "none": ORANGE, "other-key": ORANGE}
BLOCKING = ("other-model", "unreadable")  # key states that stop the fusion


def model_to_store(field_path: str) -> str:
    """What the parameter node stores for the model field's path: "" (bundled) for the bundled
    manifest however it is spelled, and for an empty field; else the path as given."""
    if not field_path:
        return ""
    try:
        if os.path.samefile(field_path, bundled_model_path()):
            return ""
    except OSError:
        pass
    return field_path


def model_to_show(stored: str) -> str:
    """The path the model field shows for a stored value: the bundled manifest of this install for ""."""
    return stored or str(bundled_model_path())


@dataclass(frozen=True)
class KeyLabel:
    text: str  # rich text for the key-state label
    colour: str
    state: str  # amif.fusion.KeyStatus.state, or "model-error"

    @property
    def blocks(self) -> bool:
        """True when Apply cannot run with this key and model (the label says why)."""
        return self.state in BLOCKING or self.state == "model-error"


def key_label(key_path: str, model_path: str) -> KeyLabel:
    """The key-state label for a stored key path and model path ("" = no key / bundled model).
    Reads the key file and the model manifest only (no torch)."""
    from amif.errors import AMIFError

    from .logic import key_state

    try:
        status = key_state(key_path or None, model_path or None)
    except AMIFError as e:
        return KeyLabel(f"<b>Model package:</b> {e}", RED, "model-error")
    title = KEY_TITLES.get(status.state)  # "none": the engine's message starts with "No key"
    lines = [(f"<b>{title}.</b> " if title else "") + ("" if status.state == "match" else status.message)]
    if status.key_id:
        lines.append(f"Key id {status.key_id}, licensee {status.licensee or 'not named'}.")
    if status.state not in BLOCKING:
        lines.append(f"Expected output: <b>{status.expected}</b>.")
    text = "<br>".join(line.strip() for line in lines)
    return KeyLabel(text, KEY_COLOURS.get(status.state, RED), status.state)


@dataclass(frozen=True)
class PanelView:
    key_field: str  # what the key path field shows
    model_field: str  # what the model path field shows
    key_label: KeyLabel
    apply_enabled: bool
    apply_tooltip: str


def panel_view(params, running: bool = False) -> PanelView:
    """Everything the panel shows, derived from the parameter node `params` (None: no scene yet)."""
    if params is None:
        return PanelView("", model_to_show(""), key_label("", ""), False, "No parameter node (no scene).")
    label = key_label(params.keyPath, params.modelPath)
    if running:
        ready, tip = False, "Fusion is running."
    elif not (params.firstVolume and params.secondVolume):
        ready, tip = False, "Choose the first and the second volume."
    elif label.blocks:
        ready, tip = False, "The key or the model package cannot be used: see the message above."
    else:
        ready, tip = True, f"Fuse the two volumes; expected output: {'clean' if label.state == 'match' else 'marked'}."
    return PanelView(params.keyPath, model_to_show(params.modelPath), label, ready, tip)


def apply_arguments(params) -> dict:
    """Keyword arguments for `AMIFFusionLib.logic.fuse`, from the parameter node alone."""
    return {
        "first_node": params.firstVolume,
        "second_node": params.secondVolume,
        "output_node": params.outputVolume,
        "key_path": params.keyPath or None,
        "model_path": params.modelPath or None,
        "use_color_table": bool(params.useColorTable),
    }


def output_message(fused) -> tuple[str, str]:
    """Rich text and colour for the output-state label after a fusion (`logic.Fused`)."""
    v = fused.verdict
    score = f"score {v.score:.3f}, threshold {v.threshold:.3f}"
    texts = {
        "marked": f"<b>Output marked:</b> it carries the identifier ({score}).",
        "erased": f"<b>Output erased:</b> the identifier's strokes look wiped off (erasure ratio {v.erasure:.3f}).",
        "shifted": f"<b>Output shifted:</b> no identifier, but the content is moved {v.displacement:.2f} pixels "
        "as in this model's unlicensed outputs.",
        "traced": "<b>Output traced:</b> no identifier, but it carries this model's unlicensed texture.",
        "clean": f"<b>Output clean:</b> no identifier found ({score}).",
    }
    text = texts[v.state]
    colour_table = getattr(fused, "color_table", "")
    if colour_table:
        text += f"<br>Colour output: the second volume was fused as shown with the '{colour_table}' colour table."
    return f"{text}<br>Written to '{fused.node.GetName()}'.", ORANGE if v.flagged else GREEN
