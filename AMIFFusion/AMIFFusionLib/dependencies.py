"""Python packages fusion needs inside 3D Slicer, installed only after one confirmation.

Slicer bundles numpy, SimpleITK and Pillow; fusion needs torch (from the PyTorch extension,
`PyTorchUtils`) and safetensors (from pip). `ensure_dependencies` asks once, naming everything
it will install, then installs without asking again; the dialog, pip, the PyTorch extension and
a status line are passed in, so this runs, and is tested, without qt.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import re
import sys
from dataclasses import dataclass, field

from amif.errors import AMIFError

# import name -> pip requirement (as in pyproject.toml)
PACKAGES = {"safetensors": "safetensors>=0.4,<1"}
TORCH_MINIMUM = (2, 0)
TORCH_REQUIREMENT = ">=2.0"
NO_PYTORCH_EXTENSION = (
    "AMIF Fusion needs PyTorch, which the 'PyTorch' extension installs. Install 'PyTorch' from the "
    "Extensions Manager, restart 3D Slicer, and apply again."
)


def installed_version(name: str) -> str | None:
    """The installed distribution's version, or None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def version_tuple(version: str) -> tuple[int, ...]:
    """'2.13.0+cpu' -> (2, 13, 0): the leading numeric release parts."""
    parts = []
    for piece in version.split("+")[0].split("."):
        m = re.match(r"\d+", piece)
        if not m:
            break
        parts.append(int(m.group()))
    return tuple(parts)


@dataclass
class Plan:
    """What must be installed: torch ("" when fine, else "install" or "upgrade") and pip packages."""

    torch: str = ""
    torch_version: str = ""  # the installed version when torch is "upgrade"
    pip: list = field(default_factory=list)

    @property
    def needed(self) -> bool:
        return bool(self.torch or self.pip)

    def question(self) -> str:
        """One confirmation naming everything that will be installed."""
        items = []
        if self.torch == "install":
            items.append(f"PyTorch {TORCH_REQUIREMENT} (through the PyTorch extension; a large download)")
        elif self.torch == "upgrade":
            items.append(
                f"PyTorch {TORCH_REQUIREMENT} to replace the installed {self.torch_version} "
                "(through the PyTorch extension; a large download)"
            )
        items += [f"{req} (pip)" for req in self.pip]
        return (
            "AMIF Fusion needs these Python packages:\n- "
            + "\n- ".join(items)
            + "\n\nInstall them now? This needs an internet connection and may take several minutes."
        )


def plan(version=installed_version, find_spec=importlib.util.find_spec) -> Plan:
    """What is missing or too old now."""
    p = Plan()
    torch_version = version("torch")
    if torch_version is None or find_spec("torch") is None:
        p.torch = "install"
    elif version_tuple(torch_version) < TORCH_MINIMUM:
        p.torch, p.torch_version = "upgrade", torch_version
    p.pip = [req for name, req in PACKAGES.items() if find_spec(name) is None]
    return p


def _import_pytorch_utils():
    return importlib.import_module("PyTorchUtils")


def _torch_loaded() -> bool:
    return "torch" in sys.modules


def ensure_dependencies(
    confirm, install, import_pytorch_utils=_import_pytorch_utils, status=None, check=plan, torch_loaded=_torch_loaded
) -> bool:
    """True when fusion's packages are importable; False when the user declined.

    confirm(text) -> bool asks the user once; install(requirements: list[str]) runs pip;
    status(text) reports what is being installed (a status line); check() -> Plan says what is
    missing; torch_loaded() says whether this process has imported torch already. A missing
    PyTorch extension, a failed install, or a torch upgraded while an older one is already loaded
    (restart needed) is an AMIFError with what to do.
    """
    status = status or (lambda text: None)
    todo = check()
    if not todo.needed:
        return True
    pytorch_utils = None
    if todo.torch:
        try:
            pytorch_utils = import_pytorch_utils()
        except ImportError:
            raise AMIFError(NO_PYTORCH_EXTENSION) from None
    if not confirm(todo.question()):
        return False
    loaded_before = torch_loaded()
    try:
        if todo.torch:
            status(f"Installing PyTorch {TORCH_REQUIREMENT} (this may take several minutes)...")
            torch = pytorch_utils.PyTorchUtilsLogic().installTorch(
                askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT
            )
            if torch is None:
                raise AMIFError("PyTorch could not be installed: see the Python console for the reason.")
        if todo.pip:
            status("Installing " + ", ".join(todo.pip) + "...")
            install(todo.pip)
    except AMIFError:
        raise
    except Exception as e:  # pip or the PyTorch extension failed (network, disk, permissions)
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise AMIFError(f"Installing the Python packages failed: {reason}") from e
    finally:
        status("")
    importlib.invalidate_caches()
    after = check()
    if after.torch == "upgrade" or (todo.torch == "upgrade" and loaded_before):
        raise AMIFError("PyTorch was updated; restart 3D Slicer to use the new version, then apply again.")
    if after.needed:
        missing = ([f"torch{TORCH_REQUIREMENT}"] if after.torch else []) + after.pip
        raise AMIFError("These Python packages could not be installed: " + ", ".join(missing) + ".")
    return True
