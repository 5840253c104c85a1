"""Which torch device fusion runs on, how much memory it has left, and its float32 settings.

A device is named "auto", "cpu", "cuda", "cuda:N" or "mps" (or given as a torch.device). "auto" is
CUDA when torch sees a CUDA GPU, else Apple MPS when torch sees it, else the CPU. Asking for an
accelerator that torch does not see is an AMIFError: nothing falls back silently.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

from .errors import AMIFError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")  # "cuda:N" picks one of several GPUs
_NAME = re.compile(r"(auto|cpu|mps(:0)?|cuda(:\d+)?)")


def check_device_name(device) -> str:
    """The device's name, lower case, when it is one of DEVICE_CHOICES or "cuda:N" (or a torch.device
    of type cpu, cuda or mps); otherwise an AMIFError. Checks the spelling only: imports no torch."""
    name = str(device).strip().lower()
    if not (isinstance(device, str) or type(device).__name__ == "device") or not _NAME.fullmatch(name):
        raise AMIFError(f"Unknown device {str(device)!r:.40}: use auto, cpu, cuda (or cuda:N) or mps.")
    return "mps" if name == "mps:0" else name


def mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device="auto"):
    """The torch.device to run on for `device` (see the module docstring); CUDA with its index, so one
    GPU has one name. An AMIFError, before anything runs, for an unknown name or an accelerator torch
    does not see."""
    import torch

    name = check_device_name(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise AMIFError("CUDA was requested but torch sees no CUDA GPU; use --device auto or cpu.")
        index = int(name[5:]) if ":" in name else torch.cuda.current_device()
        count = torch.cuda.device_count()
        if index >= count:
            raise AMIFError(
                f"CUDA GPU {index} was requested but torch sees {count} "
                f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''})."
            )
        return torch.device("cuda", index)
    if name == "mps" and not mps_available():
        raise AMIFError("Apple MPS was requested but torch sees no MPS device; use --device auto or cpu.")
    return torch.device(name)


def describe_device(device) -> str:
    """A resolved device for people: 'cpu', 'mps' or 'cuda:0 (<GPU name>)'."""
    import torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def free_memory(device) -> int | None:
    """Bytes the network may still use on a resolved device: CUDA's free memory plus what torch's
    allocator holds unused there; for MPS torch's recommended maximum less what it has allocated
    (where torch tells both); None on the CPU or when torch does not tell."""
    import torch

    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    mps = getattr(torch, "mps", None)
    if device.type == "mps" and hasattr(mps, "recommended_max_memory") and hasattr(mps, "driver_allocated_memory"):
        return max(0, int(mps.recommended_max_memory() - mps.driver_allocated_memory()))
    return None


@contextmanager
def full_float32(device):
    """Within it, CUDA matmuls and cuDNN convolutions run in full float32 (no TF32), so GPU results
    agree with the CPU's to float32 rounding; the previous settings (process-wide) are restored on
    exit. Nothing changes for other devices."""
    import torch

    if getattr(device, "type", None) != "cuda":
        yield
        return
    b = torch.backends
    conv = getattr(b.cudnn, "conv", None)
    if hasattr(b.cuda.matmul, "fp32_precision") and hasattr(conv, "fp32_precision"):  # torch >= 2.9
        flags = [(b.cuda.matmul, "fp32_precision", "ieee"), (conv, "fp32_precision", "ieee")]
    else:  # the legacy switches (mixing the two kinds is an error in newer torch)
        flags = [(b.cuda.matmul, "allow_tf32", False), (b.cudnn, "allow_tf32", False)]
    saved = [getattr(obj, name) for obj, name, _ in flags]
    try:
        for obj, name, value in flags:
            setattr(obj, name, value)
        yield
    finally:
        for (obj, name, _), value in zip(flags, saved):
            setattr(obj, name, value)
