"""Python packages the engine needs inside 3D Slicer, installed only with the user's consent.

torch comes from the PyTorch extension (PyTorchUtils); the other packages from pip. The dialogs
and the installer are passed in (slicer.util.confirmOkCancelDisplay, slicer.util.pip_install),
so this runs, and is tested, without qt.
"""

from __future__ import annotations

import importlib
import importlib.util

from amif.errors import AMIFError

# import name -> pip requirement (as in pyproject.toml; SimpleITK and numpy ship with Slicer)
PACKAGES = {
    "safetensors": "safetensors>=0.4,<1",
    "tqdm": "tqdm>=4.60",
    "PIL": "pillow>=10",
    "SimpleITK": "SimpleITK>=2.3,<3",
}
TORCH_REQUIREMENT = ">=2.0"
NO_PYTORCH_EXTENSION = (
    "AMIF Fusion needs PyTorch, which the 'PyTorch' extension installs. Install 'PyTorch' from the "
    "Extensions Manager, restart 3D Slicer, and apply again."
)


def missing_packages(find_spec=importlib.util.find_spec) -> list[str]:
    return [req for name, req in PACKAGES.items() if find_spec(name) is None]


def _import_pytorch_utils():
    return importlib.import_module("PyTorchUtils")


def ensure_dependencies(confirm, install, import_pytorch_utils=_import_pytorch_utils,
                        find_spec=importlib.util.find_spec) -> bool:
    """True when torch and the engine's packages are importable; False when the user said no.

    confirm(text) -> bool asks the user; install(requirements: list[str]) runs pip.
    A missing PyTorch extension is an AMIFError with what to do.
    """
    if find_spec("torch") is None:
        try:
            pytorch_utils = import_pytorch_utils()
        except ImportError:
            raise AMIFError(NO_PYTORCH_EXTENSION) from None
        torch = pytorch_utils.PyTorchUtilsLogic().installTorch(askConfirmation=True,
                                                                torchVersionRequirement=TORCH_REQUIREMENT)
        if torch is None:
            return False
    missing = missing_packages(find_spec)
    if not missing:
        return True
    if not confirm("AMIF Fusion needs these Python packages: " + ", ".join(missing)
                   + ".\nInstall them now with pip (this needs an internet connection)?"):
        return False
    install(missing)
    importlib.invalidate_caches()
    still = missing_packages(find_spec)
    if still:
        raise AMIFError("These Python packages could not be installed: " + ", ".join(still) + ".")
    return True
