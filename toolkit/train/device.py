"""Which device to train or evaluate on, the autocast dtype and the memory format there."""
from __future__ import annotations

import sys
import warnings

import torch

from toolkit.errors import UserError
from toolkit.recipe.archs import arch_info

# On a CPU with native BF16, whether bf16 autocast (amp: auto) and channels_last train faster than fp32 and
# the default layout, per arch family. Measured with `toolkit benchmark --train` (224 px, batch 16, 2 threads,
# scratch, all layers training) on an Intel Xeon (Sapphire Rapids, AVX-512 BF16 + AMX); img/s
# fp32 -> bf16, and the channels_last factor:
#   (filled in below from the measurement)
# AMX does the bf16 matrix products here; a CPU with AVX-512 BF16 and no AMX (the AMD EPYC of issue 22:
# VGG16 2.0x, MobileNetV3-Large 0.8x) gains less, so the table is a this-CPU-family decision.
CPU_FAST = {  # family: (bf16 autocast faster, channels_last faster)
    "vgg": (True, False), "resnet": (True, False), "mobilenet": (False, False), "efficientnet": (False, False),
    "lite": (False, False), "convnext": (False, False),
}
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = "/proc/cpuinfo"  # where Linux lists the CPU flags


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


def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes in BF16 natively (AVX-512 BF16 or AMX), from the kernel's CPU flags; False off
    Linux (no flags to read: emulated bf16 is slower than fp32, so guessing yes would cost)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as f:
            flags = next((line.split(":", 1)[-1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in BF16_FLAGS)


def _cpu_fast(arch: str | None) -> tuple[bool, bool]:
    info = arch_info(arch)
    return CPU_FAST.get(info.family, (False, False)) if info else (False, False)


def amp_dtype(mode: str, device: torch.device, arch: str | None = None):
    """The autocast dtype, or None. CUDA: bf16 where supported, else fp16. CPU: bf16 for `bf16` (with a warning
    that it will be slow without native BF16), and for `auto` where the CPU has native BF16 and CPU_FAST says
    the arch trains faster in it; fp16 is CUDA only. Other devices: none."""
    if mode == "off" or device.type not in ("cuda", "cpu"):
        return None
    if device.type == "cpu":
        if mode == "bf16":
            if not cpu_has_native_bf16():
                warnings.warn("train.amp: bf16 on a CPU without native BF16 (no avx512_bf16 or amx_bf16): "
                              "emulated bf16 trains slower than fp32; amp: auto or off is faster here",
                              RuntimeWarning, stacklevel=2)
            return torch.bfloat16
        return torch.bfloat16 if mode == "auto" and cpu_has_native_bf16() and _cpu_fast(arch)[0] else None
    if mode == "fp16":
        return torch.float16
    if mode == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def precision_name(autocast) -> str:
    """fp32 | bf16 | fp16: the benchmark records' name of an autocast dtype (None: fp32)."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[autocast]


def use_channels_last(t, device: torch.device, arch: str | None = None) -> bool:
    """train.channels_last: on CUDA always; on a CPU where CPU_FAST says the arch trains faster in it."""
    return bool(t.channels_last) and (device.type == "cuda" or (device.type == "cpu" and _cpu_fast(arch)[1]))
