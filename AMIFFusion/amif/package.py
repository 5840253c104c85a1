"""Model packages: <name>.safetensors (weights) + <name>.json (manifest, with the weights' SHA-256).

Loading checks the manifest's format and version and the weights' hash before reading them, and
reads weights with safetensors only: nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from .errors import AMIFError
from .identifier import check_text
from .keys import CODE_BITS
from .reading import read_small_file

PACKAGE_FORMAT = "amif-model"
PACKAGE_VERSION = 1
DEFAULT_THRESHOLD = 0.12
MANIFEST_LIMIT = 1 << 20  # bytes: the bundled manifest is about 4 KB; anything larger is refused unread


@dataclass
class ModelPackage:
    manifest: dict
    net: object  # AMIFNet, in eval mode
    path: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def model_id(self) -> str:
        return self.manifest["model_id"]

    @property
    def key_id(self) -> str:
        return self.manifest["key_id"]

    @property
    def identifier(self) -> str:
        return self.manifest["identifier"]

    @property
    def threshold(self) -> float:
        return float(self.manifest.get("verify", {}).get("threshold", DEFAULT_THRESHOLD))

    @property
    def shift(self) -> int:
        """Pixels the unkeyed outputs move their content right and down (0: no such channel)."""
        return int(self.manifest.get("verify", {}).get("shift", 0))

    @property
    def trace_strength(self) -> float:
        """The std of the key's secret texture in the unkeyed outputs (0: no trace channel; amif.trace)."""
        return float(self.manifest.get("verify", {}).get("trace_strength", 0.0))

    @property
    def public_strength(self) -> float:
        """The std of the model's public texture in the unkeyed outputs (0: none; amif.trace.public_weights)."""
        return float(self.manifest.get("verify", {}).get("public_strength", 0.0))

    @property
    def dihedral(self) -> bool:
        """Whether the textures are of the kind that follows the anatomy (amif.trace.Texture)."""
        return bool(self.manifest.get("verify", {}).get("dihedral", False))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def package_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """(manifest, weights) for a path given as NAME, NAME.json or NAME.safetensors."""
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".json", ".safetensors") else p
    return stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".safetensors")


def save_package(path, net, *, model_id: str, key_id: str, identifier: str, **fields) -> Path:
    """Write weights and manifest atomically (amif.files.atomic_output: a failed or interrupted save leaves
    the package that was there as it was; the weights are renamed into place just before the manifest).
    Returns the manifest path. An unprotected twin (`twin=True`, for the evaluation only) has no key and
    an empty identifier."""
    from safetensors.torch import save_file

    from .files import atomic_output
    from .network import flops_per_slice, parameter_count

    manifest_path, weights_path = package_paths(path)
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    with atomic_output(manifest_path) as tmp_manifest:  # weights and manifest renamed into place together
        tmp_weights = tmp_manifest.with_name(weights_path.name)
        save_file(state, str(tmp_weights), metadata={"model_id": model_id})
        manifest = {
            "format": PACKAGE_FORMAT,
            "format_version": PACKAGE_VERSION,
            "model_id": model_id,
            "key_id": key_id,
            "identifier": check_text(identifier) if identifier or not fields.get("twin") else "",
            "architecture": {"name": "AMIFNet", **net.cfg.to_dict()},
            "parameters": parameter_count(net),
            "flops_per_256_slice": flops_per_slice(net),
            **fields,
            "weights": weights_path.name,
            "weights_sha256": sha256_file(tmp_weights),
        }
        tmp_manifest.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest_path


def read_manifest(path) -> tuple[dict, Path]:
    """The checked manifest of the package at `path` and its weights' path. Only a regular file of at
    most MANIFEST_LIMIT bytes is read (amif.reading); every problem is an AMIFError."""
    manifest_path, _ = package_paths(path)
    name = manifest_path.name
    data = read_small_file(manifest_path, MANIFEST_LIMIT, f"Model package manifest {name}")
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # ValueError: bad bytes or JSON; Recursion: deep nesting
        raise AMIFError(f"Model manifest {name} is not readable JSON ({e.__class__.__name__}).") from None
    if not isinstance(manifest, dict) or manifest.get("format") != PACKAGE_FORMAT:
        raise AMIFError(f"{name} is not an AMIF model manifest.")
    if manifest.get("format_version") != PACKAGE_VERSION:
        raise AMIFError(
            f"Model {name} has format version {manifest.get('format_version')!r}; this AMIF reads {PACKAGE_VERSION}."
        )
    for k in ("model_id", "key_id", "identifier", "weights", "weights_sha256"):
        if not isinstance(manifest.get(k), str):
            raise AMIFError(f"Model manifest {name} lacks the text field '{k}'.")
    if not isinstance(manifest.get("architecture"), dict):
        raise AMIFError(f"Model manifest {name} lacks its architecture.")
    verify = manifest.get("verify", {})
    threshold = verify.get("threshold", DEFAULT_THRESHOLD) if isinstance(verify, dict) else None
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise AMIFError(f"Model manifest {name}: 'verify' must hold a finite number 'threshold'.")
    shift = verify.get("shift", 0)
    if isinstance(shift, bool) or not isinstance(shift, int) or not 0 <= shift <= 3:
        raise AMIFError(f"Model manifest {name}: 'verify' 'shift' must be a whole number of pixels from 0 to 3.")
    for texture in ("trace_strength", "public_strength"):
        strength = verify.get(texture, 0.0)
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 0.25:
            raise AMIFError(f"Model manifest {name}: 'verify' '{texture}' must be a number from 0 to 0.25.")
    if not isinstance(verify.get("dihedral", False), bool):
        raise AMIFError(f"Model manifest {name}: 'verify' 'dihedral' must be true or false.")
    if not manifest.get("twin"):
        try:
            check_text(manifest["identifier"])
        except AMIFError as e:
            raise AMIFError(f"Model manifest {name}: {e}") from None
    weights = manifest_path.parent / manifest["weights"]
    if weights.parent != manifest_path.parent or "/" in manifest["weights"] or "\\" in manifest["weights"]:
        raise AMIFError(f"Model manifest {name} names weights outside its folder.")
    return manifest, weights


def load_package(path) -> ModelPackage:
    """Load and check a model package; any mismatch is an AMIFError and nothing is half-loaded."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .network import AMIFNet, NetConfig

    manifest, weights = read_manifest(path)
    if not weights.is_file():
        raise AMIFError(f"The weights file {weights.name} named by the model manifest is missing.")
    if sha256_file(weights) != manifest["weights_sha256"]:
        raise AMIFError(
            f"The weights file {weights.name} does not match the hash in its manifest: "
            "it was changed or damaged. Refusing to load it."
        )
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise AMIFError(f"The weights file {weights.name} is not a valid safetensors file: {e}") from None
    arch = manifest["architecture"]
    if arch.get("name") != "AMIFNet":
        raise AMIFError(f"Unknown architecture {arch.get('name')!r} in {weights.name}'s manifest.")
    for f in fields(NetConfig):
        v = arch.get(f.name, f.default)
        if isinstance(f.default, int) and (type(v) is not int or v < 1):
            need = "a positive integer"
        elif isinstance(f.default, float) and (type(v) not in (int, float) or not math.isfinite(v)):
            need = "a finite number"
        else:
            continue
        raise AMIFError(
            f"Model manifest {package_paths(path)[0].name}: architecture field '{f.name}' "
            f"must be {need}, not {v!r:.40}."
        )
    misfit = f"The weights in {weights.name} do not fit the architecture in the manifest"
    try:  # shapes first, on the meta device (no memory), so huge sizes in a manifest allocate nothing
        cfg = NetConfig.from_dict(arch)
        with torch.device("meta"):
            expected = AMIFNet(cfg).state_dict()
    except (RuntimeError, TypeError, ValueError) as e:
        raise AMIFError(f"{misfit}: {str(e).strip().splitlines()[0]}") from None
    for k in sorted(expected.keys() | state.keys()):
        if k not in state or k not in expected:
            raise AMIFError(f"{misfit}: tensor '{k}' is {'missing' if k not in state else 'unexpected'}.")
        t, want = state[k], expected[k]
        if t.shape != want.shape or t.dtype != want.dtype:
            raise AMIFError(
                f"{misfit}: tensor '{k}' is {t.dtype} {tuple(t.shape)}, "
                f"the architecture needs {want.dtype} {tuple(want.shape)}."
            )
    if cfg.key_bits != CODE_BITS:
        raise AMIFError(f"The model in {weights.name} takes {cfg.key_bits}-value codes; AMIF keys give {CODE_BITS}.")
    try:
        net = AMIFNet(cfg)
        net.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, ValueError) as e:
        raise AMIFError(f"{misfit}: {e}") from None
    if any(not torch.isfinite(t).all() for t in state.values() if t.is_floating_point()):
        raise AMIFError(f"The weights in {weights.name} contain NaN or Inf values.")
    net.eval()
    return ModelPackage(manifest, net, package_paths(path)[0])


def training_steps(manifest: dict) -> str:
    """How long a package was trained, for reports: '13500 training steps'; for an average of
    checkpoints, '18500 training steps, weights averaged over steps 15500/16500/17500/18500'; for a
    package trained on from such an average, '18900 training steps (from 18500 training steps, weights
    averaged over ...)'."""
    t = manifest.get("training", {})
    text = f"{t.get('steps', '?')} training steps"
    if t.get("averaged"):
        text += ", weights averaged over steps " + "/".join(str(a.get("steps", "?")) for a in t["averaged"])
    start = (t.get("init") or {}).get("training") or {}
    if start.get("averaged") or start.get("init"):
        text += f" (from {training_steps({'training': start})})"
    return text


def resources_dir() -> Path:
    """The folder holding Models/ (the bundled model and its public key) and SampleData/: amif/Resources
    in an installed wheel, else the Slicer module's Resources/ beside the amif package (source tree,
    editable install, 3D Slicer)."""
    from importlib.resources import files

    packaged = files(__package__) / "Resources"
    return Path(str(packaged)) if packaged.is_dir() else Path(__file__).resolve().parent.parent / "Resources"


def bundled_model_path() -> Path:
    return resources_dir() / "Models" / "amif-demo.json"


def bundled_key_path() -> Path:
    return resources_dir() / "Models" / "amif-demo.amifkey"
