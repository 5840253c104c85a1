"""AMIF engine: key-gated fusion network, key files, model packages, fusion, verification.

Needs only torch, numpy, SimpleITK (plus safetensors and Pillow); never imports slicer or qt.
"""

from .errors import AMIFError, Cancelled
from .keys import KeyFile, generate_key, load_key, save_key

__version__ = "0.1.0"
__all__ = ["AMIFError", "Cancelled", "KeyFile", "generate_key", "load_key", "save_key", "__version__"]
