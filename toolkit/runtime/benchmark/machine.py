"""What the benchmark ran on (CPU, its ISA flags, cores, GPU, library versions, peak memory) and the head of every
record. torch is never imported here: its CUDA build is read only when the --torch / --train path imported it.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import subprocess
import sys
from importlib import metadata
from typing import Optional

import toolkit
from toolkit.runtime.benchmark.records import ISA_FLAGS, SCHEMA_VERSION, Files, Machine, Versions

_CPU_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
              "amx_tile", "amx_int8", "amx_bf16", "asimd", "sve", "i8mm", "bf16")


def maxrss_mb() -> Optional[float]:
    """Peak resident set size of this process so far, in MiB. Linux: VmHWM of /proc/self/status, not
    getrusage's ru_maxrss, which keeps the parent's RSS across fork + exec (a fresh probe would report it)."""
    try:
        with open("/proc/self/status") as fh:
            return next(round(int(line.split()[1]) / 1024, 1) for line in fh if line.startswith("VmHWM:"))
    except (OSError, ValueError, IndexError, StopIteration):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


def _usable_cpus() -> list:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


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


def _nvidia_smi(query: str) -> list:
    """nvidia-smi's CSV rows for `query` (e.g. --query-gpu=name), [] without a GPU or the tool."""
    try:
        proc = subprocess.run(["nvidia-smi", query, "--format=csv,noheader,nounits"], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    rows = [[c.strip() for c in line.split(",")] for line in proc.stdout.splitlines() if "," in line]
    return rows if proc.returncode == 0 else []


def gpu_mem_of_pid(pid: int) -> Optional[float]:
    """GPU memory (MiB) nvidia-smi reports for process `pid`; None when it reports none."""
    used = [float(mb) for p, mb, *_ in _nvidia_smi("--query-compute-apps=pid,used_memory")
            if p == str(pid) and mb.replace(".", "").isdigit()]
    return sum(used) if used else None


def _cpuinfo(keys: tuple, path: str = "/proc/cpuinfo") -> str:
    """The first value of any of `keys` in /proc/cpuinfo; '' when there is none or the file is unreadable."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return next((v.strip() for k, _, v in (line.partition(":") for line in fh) if k.strip() in keys), "")
    except OSError:
        return ""


def cpu_flags(path: str = "/proc/cpuinfo") -> set:
    """The first CPU's feature flags ("flags" on x86, "Features" on ARM); empty when the file is unreadable."""
    return set(_cpuinfo(("flags", "Features"), path).split())


def isa_of(flags: list) -> dict:
    """The instruction sets that decide FP32 / BF16 / INT8 speed, each present or not, and one line
    saying what that means (e.g. "AVX-512 BF16 + VNNI, no AMX")."""
    have = {f: f in flags for f in ISA_FLAGS}
    parts = [name for flag, name in (("avx512_bf16", "BF16"), ("avx512_vnni", "VNNI")) if have[flag]]
    parts += ["AVX-VNNI"] if have["avx_vnni"] and not have["avx512_vnni"] else []
    amx = [name for flag, name in (("amx_bf16", "BF16"), ("amx_int8", "INT8")) if have[flag]]
    base = "AVX-512" if have["avx512f"] else ("AVX2" if have["avx2"] else "no AVX2")
    summary = base + (" " + " + ".join(parts) if parts else "") + (f", AMX {' + '.join(amx)}" if amx else ", no AMX")
    return {**have, "summary": summary}


def machine_info(gpu: bool = False) -> Machine:
    """The CPU's name and the instruction-set flags that decide FP32/INT8 speed (/proc/cpuinfo); the GPU when asked."""
    cpu = _cpuinfo(("model name", "Model", "Hardware")) or platform.processor() or platform.machine()
    flags = [f for f in _CPU_FLAGS if f in cpu_flags()]
    if sys.platform == "darwin":
        brand = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True)
        cpu = brand.stdout.strip() or cpu
    name, driver, mem = ((_nvidia_smi("--query-gpu=name,driver_version,memory.total") or [[]])[0] + [""] * 3)[:3] \
        if gpu else ("", "", "")
    return Machine(cpu=cpu, cpu_flags=flags, isa=isa_of(flags), logical_cpus=os.cpu_count() or 1,
                   usable_cpus=len(_usable_cpus()), physical_cores=physical_cores(),
                   os=f"{platform.system()} {platform.release()}", python=platform.python_version(), gpu=name or None,
                   gpu_driver=driver or None, gpu_memory_mb=float(mem) if mem.replace(".", "").isdigit() else None)


def versions() -> Versions:
    """Library versions, read from package metadata: torch is not imported for this."""
    def version(*dists: str) -> Optional[str]:
        for dist in dists:
            with contextlib.suppress(metadata.PackageNotFoundError):
                return metadata.version(dist)
        return None
    ort = version("onnxruntime-gpu", "onnxruntime", "onnxruntime-openvino", "onnxruntime-directml")
    out = Versions(toolkit.__version__, ort, *map(version, ("openvino", "onnx", "numpy", "pillow", "torch",
                                                           "torchvision")), None, None, None)
    try:
        import onnxruntime

        cuda = getattr(onnxruntime, "cuda_version", None)
        cuda = cuda() if callable(cuda) else cuda
        if cuda and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            out.cuda_onnxruntime = str(cuda)
    except Exception:  # noqa: BLE001 - a version lookup must never stop a benchmark
        pass
    torch = sys.modules.get("torch")
    if torch is not None:  # only when the --torch / --train path imported it already
        out.cuda_torch = getattr(torch.version, "cuda", None)
        out.cudnn_torch = str(torch.backends.cudnn.version()) if torch.cuda.is_available() else None
    return out


def record_head(kind: str, command: str, notes: list, folder: str, files: tuple, gpu: bool) -> dict:
    """The fields every record kind starts with (records.Head); files: (json, markdown) names in `folder`."""
    created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    return {"schema_version": SCHEMA_VERSION, "kind": kind, "created": created, "command": command,
            "machine": machine_info(gpu=gpu), "versions": versions(), "notes": notes,
            "files": Files(*(os.path.join(folder, name) for name in files))}


def default_out_dir(name: str) -> str:
    """benchmarks/<name>-<YYYYmmdd-HHMMSS>: where a run writes when no out_dir is given."""
    return os.path.join("benchmarks", f"{name}-{_dt.datetime.now():%Y%m%d-%H%M%S}")
