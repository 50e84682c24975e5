"""Which device to train or evaluate on, the autocast dtype and the memory format there."""
from __future__ import annotations

import re
import sys
import warnings

import torch

from toolkit.errors import UserError
from toolkit.recipe.archs import arch_info
from toolkit.runtime.benchmark.machine import cpu_flags

# On a CPU with native BF16: whether bf16 autocast (amp: auto) and channels_last train faster than fp32 and
# the default layout, per arch family: the fastest of the four combinations. Measured on an Intel Xeon
# (Sapphire Rapids, 2 cores, AVX-512 BF16 + AMX BF16), 224 px, batch 16, scratch (every layer trains),
# one thread, in images per CPU-second (time.process_time: the machine was shared, load average 24-37):
#   arch                fp32   fp32+cl  bf16   bf16+cl
#   vgg16               1.07   1.24     2.55   5.19
#   resnet18            7.86   9.10     16.30  22.35
#   mobilenet_v3_large  9.29   15.32    11.89  11.59
#   mobilenet_v3_small  24.30  39.87    29.85  26.29
#   efficientnet_lite0  7.07   9.45     8.00   7.18
# efficientnet (B0) and convnext were not measured: fp32, default layout. AMX does the bf16 matrix products
# here; on a CPU with AVX-512 BF16 and no AMX (issue 22's AMD EPYC: VGG16 bf16 2.0x, Lite0 channels_last
# 1.17x, MobileNetV3-Large bf16 0.8x) the gains differ, so this is a decision for this CPU family.
CPU_FAST = {  # family: (bf16 autocast faster, channels_last faster)
    "vgg": (True, True), "resnet": (True, True), "mobilenet": (False, True), "lite": (False, True),
    "efficientnet": (False, False), "convnext": (False, False),
}
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = "/proc/cpuinfo"  # where Linux lists the CPU flags


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def pick_device(name: str) -> torch.device:
    """`auto`: CUDA, else MPS, else the CPU; a named device that is not there, or a name that is no device
    (report's and evaluate's --device foo was torch's RuntimeError), is a UserError."""
    name = str(name).strip().lower()
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name):
        raise UserError(f"device {name!r}: expected auto, cpu, cuda, cuda:N or mps")
    if name.startswith("cuda:") and torch.cuda.is_available() and int(name[5:]) >= torch.cuda.device_count():
        raise UserError(f"device {name}: torch sees {torch.cuda.device_count()} CUDA device(s), numbered from 0")
    name = "cuda" if name.startswith("cuda") and not torch.cuda.is_available() else name
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
    return bool(cpu_flags(CPUINFO) & set(BF16_FLAGS))


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
        if mode == "fp16":   # device auto that found no GPU (device: cpu with fp16 is a recipe error)
            warnings.warn("train.amp: fp16 is for CUDA; this run is on the CPU and trains in fp32 (bf16 or auto "
                          "for mixed precision on a CPU)", RuntimeWarning, stacklevel=2)
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
