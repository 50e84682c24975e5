"""What the benchmark ran on: CPU and its flags, cores, GPU, library versions, peak memory.

Torch is never imported here: versions are read from package metadata, and torch's CUDA build is
reported only when the --torch / --train path imported torch already.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from typing import Optional

import numpy as np

from toolkit.runtime.benchmark.records import ISA_FLAGS, Machine, Versions

_CPU_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
              "amx_tile", "amx_int8", "amx_bf16", "asimd", "sve", "i8mm", "bf16")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def maxrss_mb() -> Optional[float]:
    """Peak resident set size of this process so far, in MiB.

    Linux: VmHWM of /proc/self/status, the high-water mark of this process's own address space.
    getrusage's ru_maxrss is not used there: across fork + exec it keeps the parent's RSS at the fork,
    so a fresh child started from a big benchmark process would report the parent's size."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


def _usable_cpus() -> list:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads counted once)."""
    seen = set()
    for cpu in _usable_cpus():
        base = f"/sys/devices/system/cpu/cpu{cpu}/topology/"
        try:
            with open(base + "core_id") as a, open(base + "physical_package_id") as b:
                seen.add((b.read().strip(), a.read().strip()))
        except OSError:
            seen.add(("cpu", str(cpu)))
    return max(1, len(seen))


def _version(*dists: str) -> Optional[str]:
    from importlib import metadata
    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _run_quiet(cmd: list, timeout: float = 10) -> Optional[str]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _gpu_info() -> dict:
    out = _run_quiet(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                      "--format=csv,noheader,nounits"])
    if not out:
        return {"gpu": None, "gpu_driver": None, "gpu_memory_mb": None}
    name, driver, mem = (list(map(str.strip, out.splitlines()[0].split(","))) + ["", "", ""])[:3]
    return {"gpu": name or None, "gpu_driver": driver or None,
            "gpu_memory_mb": float(mem) if mem.replace(".", "").isdigit() else None}


def gpu_mem_of_pid(pid: int) -> Optional[float]:
    out = _run_quiet(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"])
    if not out:
        return None
    total = 0.0
    found = False
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid):
            try:
                total += float(parts[1])
                found = True
            except ValueError:
                pass
    return total if found else None


def isa_of(flags: list) -> dict:
    """The instruction sets that decide FP32 / BF16 / INT8 speed, each present or not, and one line
    saying what that means (e.g. "AVX-512 BF16 + VNNI, no AMX")."""
    have = {f: f in flags for f in ISA_FLAGS}
    parts = ["AVX-512" if have["avx512f"] else ("AVX2" if have["avx2"] else "no AVX2")]
    parts += [name for flag, name in (("avx512_bf16", "BF16"), ("avx512_vnni", "VNNI")) if have[flag]]
    if have["avx_vnni"] and not have["avx512_vnni"]:
        parts.append("AVX-VNNI")
    amx = [name for flag, name in (("amx_bf16", "BF16"), ("amx_int8", "INT8")) if have[flag]]
    summary = " ".join(parts[:1]) + (" " + " + ".join(parts[1:]) if parts[1:] else "")
    summary += f", AMX {' + '.join(amx)}" if amx else ", no AMX"
    return {**have, "summary": summary}


def machine_info(gpu: bool = False) -> Machine:
    """CPU name and the instruction-set flags that decide FP32/INT8 speed; the GPU when asked."""
    cpu, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as fh:
            text = fh.read()
        for line in text.splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model", "Hardware") and cpu in ("", platform.machine(), platform.processor()):
                cpu = value.strip()
            if key in ("flags", "Features") and not flags:
                present = set(value.split())
                flags = [f for f in _CPU_FLAGS if f in present]
    except OSError:
        pass
    if sys.platform == "darwin":
        cpu = _run_quiet(["sysctl", "-n", "machdep.cpu.brand_string"]) or cpu
    return Machine(cpu=cpu, cpu_flags=flags, isa=isa_of(flags), logical_cpus=os.cpu_count() or 1,
                   usable_cpus=len(_usable_cpus()), physical_cores=physical_cores(),
                   os=f"{platform.system()} {platform.release()}", python=platform.python_version(),
                   **(_gpu_info() if gpu else {"gpu": None, "gpu_driver": None, "gpu_memory_mb": None}))


def versions() -> Versions:
    """Library versions, read from package metadata: torch is not imported for this."""
    import toolkit
    out = {"toolkit": toolkit.__version__,
           "onnxruntime": _version("onnxruntime-gpu", "onnxruntime", "onnxruntime-openvino",
                                   "onnxruntime-directml", "onnxruntime-silicon"),
           "openvino": _version("openvino"), "onnx": _version("onnx"), "numpy": np.__version__,
           "pillow": _version("Pillow", "pillow"),
           "torch": _version("torch"), "torchvision": _version("torchvision"),
           "cuda_onnxruntime": None, "cuda_torch": None, "cudnn_torch": None}
    try:
        import onnxruntime as ort
        out["onnxruntime"] = out["onnxruntime"] or ort.__version__
        cuda = getattr(ort, "cuda_version", None)
        cuda = cuda() if callable(cuda) else cuda
        out["cuda_onnxruntime"] = str(cuda) if cuda and "CUDAExecutionProvider" in ort.get_available_providers() \
            else None
    except Exception:  # noqa: BLE001 - a version lookup must never stop a benchmark
        pass
    torch = sys.modules.get("torch")
    if torch is not None:  # only when the --torch / --train path imported it already
        out["cuda_torch"] = getattr(torch.version, "cuda", None)
        try:
            out["cudnn_torch"] = str(torch.backends.cudnn.version()) if torch.cuda.is_available() else None
        except Exception:  # noqa: BLE001
            pass
    return Versions(**out)
