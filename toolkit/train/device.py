"""Which device to train or evaluate on, and the autocast dtype there."""
from __future__ import annotations

import torch

from toolkit.errors import UserError


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def pick_device(name: str) -> torch.device:
    """`auto`: CUDA, else MPS, else the CPU; a named device that is not there is a UserError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device: cuda requested but torch sees no CUDA device; use device: auto or cpu")
    if name == "mps" and not _mps_available():
        raise UserError("train.device: mps requested but it is not available; use device: auto or cpu")
    return torch.device(name)


def amp_dtype(mode: str, device: torch.device):
    """The autocast dtype, or None. Mixed precision is a CUDA feature here."""
    if device.type != "cuda" or mode == "off":
        return None
    if mode == "fp16":
        return torch.float16
    if mode == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16
