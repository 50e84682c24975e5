"""Honest throughput and latency: ONNX Runtime vs PyTorch, per batch size, precision and device.

    toolkit benchmark                                  # the newest export, ORT FP32 on CPU, batch 1,8,32
    toolkit benchmark exports/flowers.onnx --precision fp32,int8 --torch --batch-sizes 1,8
    toolkit benchmark --train recipes/flowers.yaml     # training step vs data loader

What a number means is written into the record beside it (`timed`), and the README section
"Benchmark" documents every field. The rules the measurements follow:

* Every backend (ORT per precision x device, PyTorch eager, torch.compile) is loaded once and
  warmed up per batch size before anything is timed (first runs, arena growth and cuDNN
  algorithm search stay outside the timed part; the first run is reported separately).
* Backends are timed interleaved in rounds: in round r every backend runs its block of
  iterations, the order rotated by r, so a noisy neighbour hits them all alike. Medians are
  reported with their spread (min/max over rounds for throughput, IQR for latency).
* Cold start and peak RSS are measured per backend in a fresh Python process (`isolate`).
* Achieved GFLOP/s uses FLOPs counted from the ONNX graph (Conv/Gemm/MatMul MACs x 2, shapes
  inferred), read against the FP32 GEMM peak measured on this machine at the same thread count.
* On CUDA: ORT runs with IO binding on device buffers, PyTorch synchronises after each call.

Light module: no torch at import time (only the --torch and --train paths import it).
"""
from __future__ import annotations

import datetime as _dt
import io
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

from toolkit.errors import UserError
from toolkit.runtime.benchmark_report import (DEVICES, E2E_IMAGE, E2E_JPEG_QUALITY, E2E_TOP_K, MODES, PRECISIONS, SCHEMA_VERSION, TIMED, _write_outputs, format_table, format_train_table)
from toolkit.errors import first_line

TWIN_SUFFIX = {"fp32": ".onnx", "fp16": ".fp16.onnx", "int8": ".int8.onnx"}
DEFAULT_DURATION_S = 5.0  # timed seconds per backend x mode x batch size, spread over the rounds
DEFAULT_ROUNDS = 5
PEAK_MATRIX = {"cpu": 2048, "cuda": 8192}  # square GEMM sizes for the peak measurement
_CPU_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
              "amx_tile", "amx_int8", "amx_bf16", "asimd", "sve", "i8mm", "bf16")



# ================================================================================================
# Small helpers
# ================================================================================================

def _as_tuple(value: Any, cast: Callable = str, name: str = "value") -> tuple:
    """'1,8,32' / (1, 8, 32) / 8 -> tuple; what fire and Python callers hand over."""
    if value is None:
        return ()
    items = list(value) if isinstance(value, (list, tuple, set)) else str(value).split(",")
    out = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        try:
            out.append(cast(text))
        except (TypeError, ValueError):
            raise UserError(f"{name}: {item!r} is not a valid entry; expected a comma-separated list") from None
    return tuple(out)


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _maxrss_mb() -> Optional[float]:
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


def _gpu_mem_of_pid(pid: int) -> Optional[float]:
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


def machine_info(gpu: bool = False) -> dict:
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
    info = {"cpu": cpu, "cpu_flags": flags, "logical_cpus": os.cpu_count() or 1,
            "usable_cpus": len(_usable_cpus()), "physical_cores": physical_cores(),
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version()}
    info.update(_gpu_info() if gpu else {"gpu": None, "gpu_driver": None, "gpu_memory_mb": None})
    return info


def versions() -> dict:
    """Library versions, read from package metadata: torch is not imported for this."""
    import toolkit
    out = {"toolkit": toolkit.__version__,
           "onnxruntime": _version("onnxruntime-gpu", "onnxruntime", "onnxruntime-openvino",
                                   "onnxruntime-directml", "onnxruntime-silicon"),
           "onnx": _version("onnx"), "numpy": np.__version__, "pillow": _version("Pillow", "pillow"),
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
    return out


# ================================================================================================
# FLOPs from the ONNX graph
# ================================================================================================

_CONV_OPS = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3, "FusedConv": 1, "NhwcConv": 1,
             "NhwcFusedConv": 1, "ConvTranspose": 1}
_GEMM_OPS = {"Gemm": 1, "QGemm": 3, "FusedGemm": 1}
_MATMUL_OPS = {"MatMul": 1, "MatMulInteger": 1, "QLinearMatMul": 3, "FusedMatMul": 1,
               "MatMulIntegerToFloat": 1, "DynamicQuantizeMatMul": 1}


def _prod(xs: Iterable) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


def _strip_weights(model) -> None:
    """Drop the data of large initializers (shape inference only needs their dims)."""
    for init in model.graph.initializer:
        if _prod(init.dims) > 4096:
            for f in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data",
                      "string_data", "external_data"):
                init.ClearField(f)
            init.data_location = 0


def count_flops(model: Any, image_size: Optional[int] = None) -> dict:
    """FLOPs of one forward pass of one image: 2 x the multiply-accumulates of Conv / Gemm / MatMul
    (and their quantized and fused forms), with shapes from ONNX shape inference.

    `model`: a path or an onnx.ModelProto (not modified). The batch axis is set to 1; other
    symbolic axes of a 4-D image input (a gap-head export with dynamic H and W) to `image_size`.
    Returns {"flops", "macs", "by_op": {op: flops}, "uncounted": [node names whose shapes were unknown]}.
    """
    import onnx
    from onnx import shape_inference

    if isinstance(model, (str, os.PathLike)):
        proto = onnx.load(os.fspath(model), load_external_data=False)
    else:
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
    _strip_weights(proto)
    init_names = {i.name for i in proto.graph.initializer}
    batch_fixed = 1
    for inp in proto.graph.input:
        if inp.name in init_names:
            continue
        dims = inp.type.tensor_type.shape.dim
        for axis, dim in enumerate(dims):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                if axis == 0:
                    batch_fixed = dim.dim_value
                continue
            value = 1 if axis == 0 else image_size  # symbolic H / W of a gap-head export
            if value is None:
                continue
            dim.ClearField("dim_param")
            dim.dim_value = int(value)
    try:
        inferred = shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception:  # noqa: BLE001 - fall back to whatever shapes the file carries
        inferred = proto
    shapes: dict[str, list] = {}

    def add(vi):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None
                               for d in vi.type.tensor_type.shape.dim]

    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        add(vi)
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)

    def shape(name):
        s = shapes.get(name)
        return s if s is not None and all(isinstance(d, int) and d > 0 for d in s) else None

    by_op: dict[str, int] = {}
    uncounted: list[str] = []
    for node in inferred.graph.node:
        op = node.op_type
        macs = None
        if op in _CONV_OPS:
            w, y, x = shape(node.input[_CONV_OPS[op]]), shape(node.output[0]), shape(node.input[0])
            if op == "ConvTranspose":
                macs = _prod(x) * _prod(w[1:]) if w and x else None
            else:
                macs = _prod(y) * _prod(w[1:]) if w and y else None
        elif op in _GEMM_OPS:
            a, y = shape(node.input[0]), shape(node.output[0])
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            if a and y and len(a) == 2:
                macs = _prod(y) * (a[0] if trans_a else a[1])
        elif op in _MATMUL_OPS:
            a, y = shape(node.input[0]), shape(node.output[0])
            if a and y:
                macs = _prod(y) * a[-1]
        else:
            continue
        if macs is None:
            uncounted.append(node.name or op)
            continue
        by_op[op] = by_op.get(op, 0) + 2 * macs
    flops = sum(by_op.values()) / max(1, batch_fixed)
    return {"flops": int(flops), "macs": int(flops // 2), "by_op": by_op, "uncounted": uncounted}


# ================================================================================================
# The model file: metadata, twins, size
# ================================================================================================

def _decode_meta(props) -> dict:
    out = {}
    for p in props:
        value = p.value
        if value[:1] in "[{\"":
            try:
                value = json.loads(value)
            except ValueError:
                pass
        out[p.key] = value
    return out


def inspect_model(path: str) -> dict:
    """Metadata (JSON decoded), graph input, file size (external data included) and FLOPs of one file."""
    import onnx

    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises its own types
        raise UserError(f"{path}: not a readable ONNX model ({first_line(exc, 300)}); expected a .onnx file "
                        "written by toolkit export") from None
    size = os.path.getsize(path)
    external = set()
    for init in proto.graph.initializer:
        if init.data_location == 1:
            for kv in init.external_data:
                if kv.key == "location":
                    external.add(kv.value)
    for loc in external:
        ext = os.path.join(os.path.dirname(os.path.abspath(path)), loc)
        if os.path.isfile(ext):
            size += os.path.getsize(ext)
    meta = _decode_meta(proto.metadata_props)
    init_names = {i.name for i in proto.graph.initializer}
    graph_inputs = [i for i in proto.graph.input if i.name not in init_names]
    dims = []
    if graph_inputs:
        for d in graph_inputs[0].type.tensor_type.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?"))
    crop = None
    if isinstance(meta.get("preprocess"), dict):
        crop = meta["preprocess"].get("crop")
    flops = count_flops(proto, image_size=crop)
    return {"path": path, "metadata": meta, "input_dims": dims, "file_bytes": size, "flops": flops}


def twin_path(base: str, precision: str) -> str:
    stem = base[:-len(".onnx")] if base.endswith(".onnx") else base
    return stem + TWIN_SUFFIX[precision]


def _base_of(path: str) -> tuple[str, Optional[str]]:
    """exports/x.int8.onnx -> (exports/x.onnx, 'int8'); a plain file -> (path, None)."""
    for precision, suffix in TWIN_SUFFIX.items():
        if precision != "fp32" and path.endswith(suffix):
            return path[:-len(suffix)] + ".onnx", precision
    return path, None


def _resolve_model(model: Optional[str], exports_dir: str, say: Callable) -> str:
    from toolkit import artifacts

    if model is None:
        path = artifacts.newest_export(exports_dir)
        say(f"benchmark: using the newest export {path}")
        return path
    model = os.fspath(model)
    if os.path.isdir(model):
        path = artifacts.newest_export(model)
        say(f"benchmark: using the newest export {path}")
        return path
    if not os.path.isfile(model):
        raise UserError(f"{model}: no such model file; expected an ONNX export (exports/<name>.onnx) or leave it "
                        "out to use the newest export")
    if not model.endswith(".onnx"):
        raise UserError(f"{model}: not an .onnx file; expected an export written by toolkit export "
                        "(exports/<name>.onnx)")
    return model


def _export_hint(meta: dict, precision: str) -> str:
    run = meta.get("source_run")
    target = f" {run}" if isinstance(run, str) and run else ""
    return f"toolkit export{target} --{precision}"


# ================================================================================================
# Peak: the machine's measured GEMM limit, same engine and threads as the benchmark
# ================================================================================================

def _matmul_model(n: int, precision: str):
    from onnx import TensorProto, helper

    if precision == "int8":
        a = helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])
        b = helper.make_tensor_value_info("b", TensorProto.INT8, [n, n])
        y = helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])
        node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
    else:
        t = TensorProto.FLOAT16 if precision == "fp16" else TensorProto.FLOAT
        a = helper.make_tensor_value_info("a", t, [n, n])
        b = helper.make_tensor_value_info("b", t, [n, n])
        y = helper.make_tensor_value_info("y", t, [n, n])
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
    graph = helper.make_graph([node], "peak", [a, b], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _time_best(fn: Callable, min_runs: int = 3, budget_s: float = 1.5, max_runs: int = 50) -> float:
    fn()  # warm-up
    best, spent, runs = float("inf"), 0.0, 0
    while runs < min_runs or (spent < budget_s and runs < max_runs):
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best, spent, runs = min(best, dt), spent + dt, runs + 1
    return best


def _ort_gemm_peak(n: int, precision: str, device: str, threads: int) -> float:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.log_severity_level = 3
    providers = ["CPUExecutionProvider"] if device == "cpu" else [("CUDAExecutionProvider", {}), "CPUExecutionProvider"]
    sess = ort.InferenceSession(_matmul_model(n, precision).SerializeToString(), so, providers=providers)
    if device != "cpu" and sess.get_providers()[0] != "CUDAExecutionProvider":
        raise RuntimeError("CUDAExecutionProvider did not load")
    rng = np.random.default_rng(0)
    if precision == "int8":
        a = rng.integers(0, 255, (n, n), dtype=np.uint8)
        b = rng.integers(-127, 127, (n, n), dtype=np.int8)
    else:
        dtype = np.float16 if precision == "fp16" else np.float32
        a = rng.standard_normal((n, n)).astype(dtype)
        b = rng.standard_normal((n, n)).astype(dtype)
    if device == "cpu":
        best = _time_best(lambda: sess.run(None, {"a": a, "b": b}))
    else:
        binding = sess.io_binding()
        binding.bind_ortvalue_input("a", ort.OrtValue.ortvalue_from_numpy(a, "cuda", 0))
        binding.bind_ortvalue_input("b", ort.OrtValue.ortvalue_from_numpy(b, "cuda", 0))
        binding.bind_output("y", "cuda", 0)

        def call():
            sess.run_with_iobinding(binding)
            binding.synchronize_outputs()
        best = _time_best(call, min_runs=10)
    return 2.0 * n ** 3 / best / 1e9


_NUMPY_PEAK_SCRIPT = r"""
import sys, time, numpy as np
n = int(sys.argv[1])
rng = np.random.default_rng(0)
a = rng.standard_normal((n, n)).astype(np.float32); b = rng.standard_normal((n, n)).astype(np.float32)
a @ b
best, spent, runs = float("inf"), 0.0, 0
while runs < 3 or (spent < 1.5 and runs < 50):
    t = time.perf_counter(); a @ b; dt = time.perf_counter() - t
    best, spent, runs = min(best, dt), spent + dt, runs + 1
blas = ""
try:
    cfg = np.show_config(mode="dicts")
    blas = cfg.get("Build Dependencies", {}).get("blas", {}).get("name", "")
except Exception:
    pass
print(2.0 * n ** 3 / best / 1e9, blas)
"""


def _numpy_gemm_peak(n: int, threads: int) -> tuple[float, str]:
    """numpy's BLAS in a fresh process, its thread pools pinned to `threads` (they are fixed at load)."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS"):
        env[var] = str(threads)
    proc = subprocess.run([sys.executable, "-c", _NUMPY_PEAK_SCRIPT, str(n)], capture_output=True, text=True,
                          env=env, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError((proc.stderr.strip().splitlines() or ["numpy GEMM failed"])[-1])
    value, _, blas = proc.stdout.strip().partition(" ")
    return float(value), blas.strip() or "BLAS"


def _merge_peak(first: dict, again: dict) -> None:
    """Fold a second peak measurement into the first: per engine the best, overall the best."""
    first["samples_gflops"] = [first["gflops"], again["gflops"]]
    for cand in again["candidates"]:
        mine = next((c for c in first["candidates"] if c["engine"] == cand["engine"]), None)
        if mine is None:
            first["candidates"].append(cand)
        elif cand.get("gflops") and (not mine.get("gflops") or cand["gflops"] > mine["gflops"]):
            mine.clear()
            mine.update(cand)
    ok = [c for c in first["candidates"] if c.get("gflops")]
    best = max(ok, key=lambda c: c["gflops"]) if ok else None
    first["engine"], first["gflops"] = (best["engine"], best["gflops"]) if best else (None, None)


def measure_peak(device: str = "cpu", threads: int = 1, precision: str = "fp32",
                 n: Optional[int] = None) -> dict:
    """The best GFLOP/s of a large square GEMM on `device` at `threads`.

    FP32 on CPU: ONNX Runtime's MatMul (the engine the benchmark runs) and numpy's BLAS (in a fresh
    process with its threads pinned to the same count); the higher one is the peak, both are kept.
    INT8 on CPU: ORT MatMulInteger (u8 x s8). CUDA: ORT MatMul with IO binding (FP32 runs as TF32 on
    tensor cores where the CUDA EP enables it, its default).
    """
    kind = "cpu" if device == "cpu" else "cuda"
    n = int(n or PEAK_MATRIX[kind])
    candidates = []
    try:
        candidates.append({"engine": f"onnxruntime {'MatMulInteger u8s8' if precision == 'int8' else 'MatMul'}",
                           "gflops": round(_ort_gemm_peak(n, precision, kind, threads), 1)})
    except Exception as exc:  # noqa: BLE001 - the benchmark goes on without a peak
        candidates.append({"engine": "onnxruntime MatMul", "gflops": None, "error": first_line(exc, 300)})
    if kind == "cpu" and precision == "fp32":
        try:
            value, blas = _numpy_gemm_peak(n, threads)
            candidates.append({"engine": f"numpy ({blas})", "gflops": round(value, 1)})
        except Exception as exc:  # noqa: BLE001
            candidates.append({"engine": "numpy", "gflops": None, "error": first_line(exc, 300)})
    ok = [c for c in candidates if c.get("gflops")]
    best = max(ok, key=lambda c: c["gflops"]) if ok else None
    note = ""
    if kind == "cuda" and precision == "fp32":
        note = "ORT CUDA EP default use_tf32=1: FP32 MatMul/Conv may run as TF32 on tensor cores"
    return {"device": device, "precision": precision, "engine": best["engine"] if best else None,
            "gflops": best["gflops"] if best else None, "matrix": n, "threads": threads if kind == "cpu" else None,
            "candidates": candidates, "note": note, "in_rounds": []}


# ================================================================================================
# Synthetic inputs
# ================================================================================================

def synthetic_jpegs(count: int, size: tuple = E2E_IMAGE, seed: int = 0) -> list:
    """Photo-like JPEG files in memory: smooth colour fields plus noise, so they compress like pictures."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    out = []
    for _ in range(count):
        small = rng.integers(0, 256, (h // 25 + 1, w // 25 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
        arr = np.asarray(img).astype(np.int16) + rng.integers(-12, 13, (h, w, 3), dtype=np.int16)
        buf = io.BytesIO()
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=E2E_JPEG_QUALITY)
        out.append(buf.getvalue())
    return out


# ================================================================================================
# Backends
# ================================================================================================

class _Backend:
    """One loaded model: ORT session for a precision x device, or a PyTorch model."""

    key: str = ""
    backend: str = ""
    device: str = "cpu"
    precision: str = "fp32"
    provider: str = ""
    providers: list = []
    file: Optional[str] = None
    file_bytes: Optional[int] = None
    flops: Optional[int] = None
    flops_by_op: dict = {}
    session_options: dict = {}
    provider_options: dict = {}
    session_s: Optional[float] = None

    def prepare(self, batch: int, pixels: np.ndarray, jpegs: list) -> None:
        raise NotImplementedError

    def run(self, mode: str) -> None:
        raise NotImplementedError


def _ort_options(session) -> tuple[dict, dict]:
    """What the session really runs with, read back from it."""
    so = session.get_session_options()
    level = so.graph_optimization_level
    opts = {"graph_optimization_level": getattr(level, "name", str(level)),
            "intra_op_num_threads": so.intra_op_num_threads, "inter_op_num_threads": so.inter_op_num_threads,
            "execution_mode": getattr(so.execution_mode, "name", str(so.execution_mode)),
            "enable_cpu_mem_arena": so.enable_cpu_mem_arena, "enable_mem_pattern": so.enable_mem_pattern}
    try:
        for key in ("session.intra_op.allow_spinning", "session.disable_prepacking"):
            value = so.get_session_config_entry(key)
            if value:
                opts[key] = value
    except Exception:  # noqa: BLE001 - config entry lookup raises when unset
        pass
    try:
        prov = {k: dict(v) for k, v in session.get_provider_options().items()}
    except Exception:  # noqa: BLE001
        prov = {}
    keep = ("device_id", "cudnn_conv_algo_search", "cudnn_conv_use_max_workspace", "do_copy_in_default_stream",
            "use_tf32", "arena_extend_strategy", "enable_cuda_graph", "trt_fp16_enable", "trt_int8_enable")
    prov = {k: {kk: vv for kk, vv in v.items() if kk in keep} for k, v in prov.items()}
    return opts, prov


class _OrtBackend(_Backend):
    backend = "onnxruntime"

    def __init__(self, info: dict, precision: str, device: str, threads: int, max_batch: int):
        from toolkit.runtime.predictor import Predictor

        self.precision, self.device, self.file = precision, device, info["path"]
        self.key = f"onnxruntime/{device}/{precision}"
        self.file_bytes = info["file_bytes"]
        self.flops, self.flops_by_op = info["flops"]["flops"], info["flops"]["by_op"]
        t = time.perf_counter()
        # The Predictor owns provider truth: asking for CUDA where it can't load is a UserError there.
        try:
            self.predictor = Predictor(self.file, device=device, threads=threads, batch_size=max_batch)
        except UserError as exc:
            if device == "cpu":
                raise
            import re
            msg = re.sub(r",? or pass allow_fallback=True / --allow-fallback to run on \w+$", "", str(exc))
            raise UserError(f"--device {device}: {msg}; or leave {device} out of --device") from None
        self.session_s = time.perf_counter() - t
        self.session = self.predictor.session
        self.provider = self.predictor.provider
        self.providers = list(self.predictor.providers)
        self.session_options, self.provider_options = _ort_options(self.session)
        inp = self.session.get_inputs()[0]
        self.in_name = inp.name
        self.in_dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
                         "tensor(uint8)": np.uint8}.get(inp.type, np.float32)
        outs = [o.name for o in self.session.get_outputs()]
        self.out_names = ["logits"] if "logits" in outs else outs[:1]
        self.on_gpu = self.provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        self._binding = None

    def prepare(self, batch: int, pixels: np.ndarray, jpegs: list) -> None:
        pre = self.predictor.preprocess
        x = pixels if self.predictor.raw else pre.normalize(pixels)
        self._x = np.ascontiguousarray(x.astype(self.in_dtype, copy=False))
        self._jpegs = jpegs
        self._binding = None
        if self.on_gpu:
            import onnxruntime as ort

            device_id = int(self.provider_options.get(self.provider, {}).get("device_id", 0) or 0)
            self._x_dev = ort.OrtValue.ortvalue_from_numpy(self._x, "cuda", device_id)
            binding = self.session.io_binding()
            binding.bind_ortvalue_input(self.in_name, self._x_dev)
            for name in self.out_names:
                binding.bind_output(name, "cuda", device_id)
            self._binding = binding

    def run(self, mode: str) -> None:
        if mode == "end_to_end":
            self.predictor.predict(self._jpegs, top_k=E2E_TOP_K)
        elif self._binding is not None:
            self.session.run_with_iobinding(self._binding)
            self._binding.synchronize_outputs()
        else:
            self.session.run(self.out_names, {self.in_name: self._x})


class _TorchBackend(_Backend):
    def __init__(self, checkpoint: str, device: str, threads: int, compiled: bool, amp: bool, preprocess):
        import torch

        from toolkit.train.checkpoint import model_from_checkpoint

        self.torch = torch
        self.backend = "torch-compile" if compiled else "torch-eager"
        self.device = device  # cpu, cuda or cuda:N
        self.precision = "fp16-amp" if amp else "fp32"
        self.key = f"{self.backend}/{self.device}/{self.precision}"
        self.provider = "torch.compile (inductor)" if compiled else "PyTorch eager"
        self.file = checkpoint
        self.file_bytes = os.path.getsize(checkpoint)
        self.amp = amp
        self.preprocess = preprocess
        self.compile_error: Optional[str] = None
        torch.set_num_threads(int(threads))
        t = time.perf_counter()
        model, _ = model_from_checkpoint(checkpoint)
        self.dev = torch.device(self.device)
        model = model.to(self.dev).eval()
        self.params_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        self.model = torch.compile(model) if compiled else model
        self.session_s = time.perf_counter() - t
        self.session_options = {"torch_threads": torch.get_num_threads(), "inference_mode": True,
                                "autocast": "float16" if amp else None, "compile": compiled}
        self.providers = [self.provider]

    def _sync(self):
        if self.dev.type == "cuda":
            self.torch.cuda.synchronize()

    def _forward(self, x):
        torch = self.torch
        with torch.inference_mode():
            if self.amp:
                with torch.autocast("cuda", dtype=torch.float16):
                    return self.model(x)
            return self.model(x)

    def prepare(self, batch: int, pixels: np.ndarray, jpegs: list) -> None:
        self._x = self.torch.from_numpy(self.preprocess.normalize(pixels)).to(self.dev)
        self._jpegs = jpegs

    def run(self, mode: str) -> None:
        torch = self.torch
        if mode == "end_to_end":
            from toolkit.preprocess import SERVE_FORMATS, open_image

            pixels = np.stack([self.preprocess.resize_crop(open_image(j, formats=SERVE_FORMATS))
                               for j in self._jpegs])
            x = torch.from_numpy(self.preprocess.normalize(pixels)).to(self.dev)
            logits = self._forward(x)
            with torch.inference_mode():
                top = torch.softmax(logits.float(), dim=1).topk(min(E2E_TOP_K, logits.shape[1]), dim=1)
                top.values.cpu(), top.indices.cpu()
        else:
            self._forward(self._x)
            self._sync()


class _GemmReference:
    """The FP32 GEMM of the peak measurement as one more entry of the rounds: the same engine (ORT
    MatMul), threads and noise as the models, so a model's GFLOP/s can be read against it."""

    key, mode = "gemm/cpu/fp32", "reference"

    def __init__(self, threads: int, n: int):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads)
        so.log_severity_level = 3
        self.session = ort.InferenceSession(_matmul_model(n, "fp32").SerializeToString(), so,
                                            providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        self.feed = {"a": rng.standard_normal((n, n)).astype(np.float32),
                     "b": rng.standard_normal((n, n)).astype(np.float32)}
        self.n, self.flops = n, 2.0 * n ** 3

    def run(self) -> None:
        self.session.run(None, self.feed)


# ================================================================================================
# Cold start and peak RSS in a fresh process
# ================================================================================================

def _probe(spec: dict) -> dict:
    """Runs in a fresh interpreter: create one backend, first inference per batch size, memory."""
    t0 = time.perf_counter()
    out: dict = {"rss_start_mb": _maxrss_mb()}
    if spec["kind"] == "onnxruntime":
        from toolkit.runtime.predictor import Predictor
        out["import_s"] = time.perf_counter() - t0
        out["rss_base_mb"] = _maxrss_mb()
        t = time.perf_counter()
        pred = Predictor(spec["path"], device=spec["device"], threads=spec["threads"],
                         batch_size=max(spec["batch_sizes"]))
        out["session_s"] = time.perf_counter() - t
        out["provider"] = pred.provider
        sess = pred.session
        inp = sess.get_inputs()[0]
        dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
                 "tensor(uint8)": np.uint8}.get(inp.type, np.float32)
        c = pred.preprocess.crop
        names = ["logits"] if "logits" in [o.name for o in sess.get_outputs()] else None

        def make(b):
            rng = np.random.default_rng(0)
            if pred.raw:
                return rng.integers(0, 256, (b, c, c, 3), dtype=np.uint8)
            return rng.standard_normal((b, 3, c, c)).astype(dtype)

        def call(x):
            sess.run(names, {inp.name: x})
    else:
        import torch

        from toolkit.train.checkpoint import model_from_checkpoint
        out["import_s"] = time.perf_counter() - t0
        out["rss_base_mb"] = _maxrss_mb()
        torch.set_num_threads(int(spec["threads"]))
        t = time.perf_counter()
        model, ckpt = model_from_checkpoint(spec["checkpoint"])
        dev = torch.device(spec["device"].replace("tensorrt", "cuda"))
        model = model.to(dev).eval()
        if spec.get("compile"):
            model = torch.compile(model)
        out["session_s"] = time.perf_counter() - t
        out["provider"] = "torch.compile (inductor)" if spec.get("compile") else "PyTorch eager"
        c = int(ckpt["recipe"]["preprocess"]["crop"])

        def make(b):
            return torch.randn(b, 3, c, c, generator=torch.Generator().manual_seed(0)).to(dev)

        def call(x):
            with torch.inference_mode():
                if spec.get("amp"):
                    with torch.autocast("cuda", dtype=torch.float16):
                        model(x)
                else:
                    model(x)
            if dev.type == "cuda":
                torch.cuda.synchronize()
    out["rss_session_mb"] = _maxrss_mb()
    out["first_inference_s"], out["peak_rss_mb"] = {}, {}
    for b in sorted(spec["batch_sizes"]):
        x = make(b)
        t = time.perf_counter()
        call(x)
        out["first_inference_s"][str(b)] = time.perf_counter() - t
        call(x)
        out["peak_rss_mb"][str(b)] = _maxrss_mb()
    if spec["device"] != "cpu":
        out["gpu_mem_mb"] = _gpu_mem_of_pid(os.getpid())
        if spec["kind"] != "onnxruntime":
            import torch
            out["torch_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def _run_probe(spec: dict, timeout: float = 3600) -> dict:
    import shutil

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cache = None
    if spec.get("compile"):  # a cold start compiles from nothing: inductor's on-disk cache starts empty
        cache = tempfile.mkdtemp(prefix="toolkit-inductor-")
        env["TORCHINDUCTOR_CACHE_DIR"] = cache
    t = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "toolkit.runtime.benchmark", "--probe", json.dumps(spec)],
                              capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"cold-start probe timed out after {timeout:.0f}s"}
    finally:
        if cache:
            shutil.rmtree(cache, ignore_errors=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"cold-start probe failed: {tail[:300]}"}
    out = json.loads(lines[-1])
    out["process_wall_s"] = round(time.perf_counter() - t, 3)
    out["isolated"] = True
    return out


# ================================================================================================
# Timing: warm-up, then interleaved rounds
# ================================================================================================

class _Progress:
    """A live line on stderr when it is a terminal; one line per round otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.tty = enabled and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        self.start = time.perf_counter()

    def live(self, text: str) -> None:
        if self.tty:
            elapsed = time.perf_counter() - self.start
            sys.stderr.write(f"\rbenchmark: {text}  [{elapsed:.0f}s]\x1b[K")
            sys.stderr.flush()

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            sys.stderr.write("\r\x1b[K")
        elapsed = time.perf_counter() - self.start
        print(f"benchmark: {text}  [{elapsed:.0f}s]", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def interleaved_rounds(entries: Sequence[tuple[str, Callable[[], None]]], rounds: int,
                       iterations: dict, on_block: Optional[Callable] = None) -> tuple[dict, dict, list]:
    """Time `entries` [(name, fn)] in `rounds` rounds; in round r the order starts at entry r mod n.

    iterations: {name: calls per block}. Returns ({name: [seconds per call]}, {name: [seconds per
    block]}, [the execution order as (round, name, calls)])."""
    n = len(entries)
    lat: dict[str, list] = {name: [] for name, _ in entries}
    blocks: dict[str, list] = {name: [] for name, _ in entries}
    order: list = []
    for r in range(rounds):
        shift = r % n if n else 0
        for name, fn in list(entries[shift:]) + list(entries[:shift]):
            k = int(iterations[name])
            order.append((r, name, k))
            total = 0.0
            for _ in range(k):
                t = time.perf_counter()
                fn()
                dt = time.perf_counter() - t
                lat[name].append(dt)
                total += dt
            blocks[name].append(total)
            if on_block:
                on_block(r, name, k, total)
    return lat, blocks, order


def _warm_up(fn: Callable[[], None], warmup: Optional[int]) -> tuple[float, float]:
    """Run `fn` until warm: `warmup` calls, or by default at least 2 and at least 0.5 s (at most 20).
    Returns (seconds of the first call, seconds of the last call)."""
    t = time.perf_counter()
    fn()
    first = last = time.perf_counter() - t
    calls, spent = 1, 0.0
    while (calls < int(warmup)) if warmup is not None else (calls < 3 or (spent < 0.5 and calls < 20)):
        t = time.perf_counter()
        fn()
        last = time.perf_counter() - t
        calls, spent = calls + 1, spent + last
    return first, last


def _stats(lat: list, blocks: list, k: int, batch: int) -> dict:
    a = np.asarray(lat, dtype=np.float64) * 1e3
    q25, p50, q75, p90, p95, p99 = (float(v) for v in np.percentile(a, [25, 50, 75, 90, 95, 99]))
    latency = {"p50": p50, "p90": p90, "p95": p95, "p99": p99, "mean": float(a.mean()), "min": float(a.min()),
               "max": float(a.max()), "q25": q25, "q75": q75, "iqr": q75 - q25}
    ips = np.asarray([k * batch / b if b > 0 else float("inf") for b in blocks], dtype=np.float64)
    throughput = {"median": float(np.median(ips)), "min": float(ips.min()), "max": float(ips.max()),
                  "q25": float(np.percentile(ips, 25)), "q75": float(np.percentile(ips, 75))}
    per_image = {key: latency[key] / batch for key in ("p50", "p90", "p95", "p99")}
    rnd = lambda d: {key: round(v, 4) for key, v in d.items()}  # noqa: E731
    return {"latency_ms": rnd(latency), "latency_per_image_ms": rnd(per_image), "throughput_ips": rnd(throughput)}


# ================================================================================================
# run_benchmark
# ================================================================================================

def _check_choices(values: tuple, allowed: tuple, name: str) -> None:
    bad = [v for v in values if v not in allowed]
    if bad:
        raise UserError(f"{name}: {', '.join(map(str, bad))} not known; expected one or more of {', '.join(allowed)}")


def _parse_devices(device: Any) -> tuple:
    out = []
    for d in _as_tuple(device or ("cpu",), str, "device"):
        d = d.lower()
        d = "cuda" if d == "gpu" else d
        if d.split(":")[0] not in DEVICES:
            raise UserError(f"device: {d!r} not known; expected one or more of {', '.join(DEVICES)} (or cuda:N)")
        if d not in out:
            out.append(d)
    return tuple(out)


def _find_checkpoint(meta: dict, model_path: str, checkpoint: Optional[str]) -> str:
    from toolkit import artifacts

    if checkpoint:
        path = artifacts.run_checkpoint(os.fspath(checkpoint))
        return path
    tried = []
    ckpt = meta.get("checkpoint")
    if isinstance(ckpt, str) and ckpt:
        candidates = [ckpt]
        if not os.path.isabs(ckpt):  # written relative to the project root, which holds exports/
            candidates.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(model_path))), ckpt))
        for c in candidates:
            if os.path.isfile(c):
                return c
        tried.append(ckpt)
    run = meta.get("source_run")
    if isinstance(run, str) and run:
        try:
            return artifacts.run_checkpoint(run)
        except UserError:
            tried.append(run)
    where = f" (looked for {', '.join(tried)})" if tried else " (its metadata names no checkpoint)"
    raise UserError(f"--torch: the PyTorch checkpoint of {model_path} is not here{where}; expected the run that "
                    "exported it, or pass checkpoint=PATH")


def _accuracy(path: str, data: str, split: str, threads: int) -> dict:
    from toolkit.runtime.onnx_eval import evaluate_onnx

    res = evaluate_onnx(path, data, split=split, threads=threads, quiet=True)
    return {"split": split, "top1": res.get("top1"), "top5": res.get("top5"), "n": res.get("n"),
            "provider": "CPUExecutionProvider"}


def run_benchmark(model: Optional[str] = None, batch_sizes: Any = (1, 8, 32), precision: Any = ("fp32",),
                  device: Any = ("cpu",), torch: bool = False, compile: bool = False,
                  duration: Optional[float] = None, iterations: Optional[int] = None, warmup: Optional[int] = None,
                  rounds: int = DEFAULT_ROUNDS, threads: Optional[int] = None, data: Optional[str] = None,
                  end_to_end: bool = True, out_dir: Optional[str] = None, exports_dir: str = "exports",
                  quiet: bool = False, isolate: bool = True, checkpoint: Optional[str] = None,
                  split: str = "val", plot: bool = True, reference: bool = True) -> dict:
    """Benchmark an export (default: the newest in `exports_dir`) and return the JSON record.

    batch_sizes, precision (fp32 / fp16 / int8: the export's twins <name>.fp16.onnx, <name>.int8.onnx),
    device (cpu / cuda / tensorrt) take lists or comma-separated strings. torch: add the same run's
    PyTorch model (eager FP32; on CUDA also autocast FP16) as the baseline; compile: add torch.compile.
    duration: timed seconds per backend x mode x batch size (default 5), or iterations: timed calls per
    backend x mode x batch size; either is spread over `rounds` interleaved rounds. warmup: calls per
    backend and batch size before timing (default: at least 2 and at least 0.5 s). threads: intra-op
    threads for ORT and PyTorch (default: physical cores). data: a recipe whose `split` measures each
    precision's accuracy. isolate: cold start and peak RSS in a fresh process per backend.
    reference: time the peak's FP32 GEMM as one more entry of every round (CPU), so each row's
    GFLOP/s can also be read against a GEMM that met the same noise (fraction_of_gemm_in_rounds).
    Writes benchmark.json, benchmark.md and benchmark.png into out_dir (default
    benchmarks/<model>-<YYYYmmdd-HHMMSS>/).
    """
    say = (lambda *a, **k: None) if quiet else (lambda *a, **k: print(*a, file=sys.stderr, **k))
    use_torch, use_compile = bool(torch), bool(compile)
    sizes = tuple(sorted(set(_as_tuple(batch_sizes, int, "batch_sizes"))))
    if not sizes or min(sizes) < 1:
        raise UserError(f"batch_sizes: {batch_sizes!r}; expected positive whole numbers, e.g. 1,8,32")
    precisions = tuple(dict.fromkeys(p.lower() for p in _as_tuple(precision or ("fp32",), str, "precision")))
    _check_choices(precisions, PRECISIONS, "precision")
    devices = _parse_devices(device)
    if duration is not None and iterations is not None:
        raise UserError("benchmark: pass --duration or --iterations, not both")
    if duration is not None and not float(duration) > 0:
        raise UserError(f"duration: {duration!r}; expected a positive number of seconds")
    if iterations is not None and (int(iterations) != iterations or int(iterations) < 1):
        raise UserError(f"iterations: {iterations!r}; expected a positive whole number")
    if int(rounds) < 1:
        raise UserError(f"rounds: {rounds!r}; expected at least 1")
    if warmup is not None and int(warmup) < 1:
        raise UserError(f"warmup: {warmup!r}; expected at least 1 (warm-up always runs before timing)")
    if threads is not None and (int(threads) != threads or int(threads) < 1):
        raise UserError(f"threads: {threads!r}; expected a positive whole number")
    rounds = int(rounds)
    if duration is None and iterations is None:
        duration = DEFAULT_DURATION_S
    n_threads, threads_source = (int(threads), "given") if threads else (physical_cores(), "physical cores")
    modes = MODES if end_to_end else ("model",)

    if data:  # a bad recipe fails now, not after minutes of timing
        from toolkit import recipe as recipe_mod
        recipe_mod.load(os.fspath(data))
        from toolkit.runtime.onnx_eval import SPLITS
        if split not in SPLITS:
            raise UserError(f"split: {split!r}; expected one of {', '.join(SPLITS)}")

    # ---- the model and its twins ----------------------------------------------------------------
    path = _resolve_model(model, exports_dir, say)
    base, twin_precision = _base_of(path)
    if twin_precision:
        if not os.path.isfile(base):
            base = path
        elif tuple(_as_tuple(precision, str)) == ("fp32",):
            precisions = (twin_precision,)
        say(f"benchmark: {path} is the {twin_precision} twin of {base}")
    info_base = inspect_model(base)
    meta = info_base["metadata"]
    missing = [twin_path(base, p) for p in precisions if p != "fp32" and not os.path.isfile(twin_path(base, p))]
    if missing:
        lines = [f"{m}: no {p} twin of {base}; make it with: {_export_hint(meta, p)}"
                 for m, p in ((twin_path(base, p), p) for p in precisions if twin_path(base, p) in missing)]
        raise UserError("\n".join(lines))
    dims = info_base["input_dims"]
    if dims and isinstance(dims[0], int) and any(b != dims[0] for b in sizes):
        raise UserError(f"{base}: the batch axis is fixed at {dims[0]}; expected a dynamic batch axis to run batch "
                        f"sizes {', '.join(map(str, sizes))} (re-export it with toolkit export)")
    infos = {p: (info_base if p == "fp32" else inspect_model(twin_path(base, p))) for p in precisions}
    name = os.path.basename(base)[:-len(".onnx")]
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = out_dir or os.path.join("benchmarks", f"{name}-{stamp}")

    # ---- backends (device problems surface here, before anything is timed) ------------------------
    progress = _Progress(not quiet)
    backends: list[_Backend] = []
    failed: list[dict] = []
    max_batch = max(sizes)
    for dev in devices:
        for p in precisions:
            progress.live(f"loading {p} on {dev}")
            backends.append(_OrtBackend(infos[p], p, dev, n_threads, max_batch))
    preprocess = backends[0].predictor.preprocess
    ckpt_path = None
    if use_torch or use_compile:
        ckpt_path = _find_checkpoint(meta, base, checkpoint)
        torch_devices = []
        for dev in devices:
            tdev = dev.replace("tensorrt", "cuda")  # PyTorch runs on the card TensorRT would use
            if tdev not in torch_devices:
                torch_devices.append(tdev)
        for tdev in torch_devices:
            variants = [(False, False)] if use_torch else []
            if tdev != "cpu" and use_torch:
                variants.append((False, True))
            if use_compile:
                variants.append((True, False))
            for compiled, amp in variants:
                progress.live(f"loading PyTorch {'compile' if compiled else 'eager'} on {tdev}")
                if tdev != "cpu":
                    import torch as torch_mod
                    if not torch_mod.cuda.is_available():
                        raise UserError("device cuda: torch sees no CUDA device for the --torch baseline; "
                                        "install a CUDA build of torch or drop --torch")
                try:
                    backends.append(_TorchBackend(ckpt_path, tdev, n_threads, compiled, amp, preprocess))
                except UserError:
                    raise
                except Exception as exc:  # noqa: BLE001 - torch.compile may not work here; say why
                    if not compiled:
                        raise
                    failed.append({"key": f"torch-compile/{tdev}/fp32", "backend": "torch-compile", "device": tdev,
                                   "precision": "fp32", "error": first_line(exc, 300)})

    # ---- peaks ------------------------------------------------------------------------------------
    peaks = []
    for dev in dict.fromkeys("cpu" if d == "cpu" else "cuda" for d in devices):
        progress.live(f"measuring the {dev} GEMM peak")
        peaks.append(measure_peak(dev, n_threads, "fp32"))
        extra = "int8" if dev == "cpu" and "int8" in precisions else ("fp16" if dev == "cuda" and "fp16" in precisions
                                                                     else None)
        if extra:
            peaks.append(measure_peak(dev, n_threads, extra))
    peak_of = {(pk["device"], pk["precision"]): pk["gflops"] for pk in peaks}
    for pk in peaks:
        if pk["gflops"]:
            progress.line(f"peak {pk['precision']} GEMM on {pk['device']}: {pk['gflops']:.0f} GFLOP/s "
                          f"({pk['engine']}, {pk['matrix']}x{pk['matrix']}"
                          + (f", {pk['threads']} threads)" if pk["threads"] else ")"))

    # ---- cold start + peak RSS --------------------------------------------------------------------
    cold: dict[str, dict] = {}
    if isolate:
        for b in backends:
            progress.live(f"cold start of {b.key} in a fresh process")
            if isinstance(b, _OrtBackend):
                spec = {"kind": "onnxruntime", "path": b.file, "device": b.device, "threads": n_threads,
                        "batch_sizes": list(sizes)}
            else:
                spec = {"kind": "torch", "checkpoint": b.file, "device": b.device, "threads": n_threads,
                        "batch_sizes": list(sizes), "compile": b.backend == "torch-compile",
                        "amp": b.precision == "fp16-amp"}
            cold[b.key] = _run_probe(spec)

    # ---- timing -----------------------------------------------------------------------------------
    gemm = _GemmReference(n_threads, PEAK_MATRIX["cpu"]) if reference and "cpu" in devices else None
    gemm_in_rounds: dict[int, dict] = {}
    jpegs = synthetic_jpegs(min(max_batch, 8))
    from toolkit.preprocess import SERVE_FORMATS, open_image
    decoded = [preprocess.resize_crop(open_image(j, formats=SERVE_FORMATS)) for j in jpegs]
    results: list[dict] = []
    schedule: list[dict] = []
    first_runs: dict[tuple, float] = {}
    live = [b for b in backends]
    for batch in sizes:
        pixels = np.stack([decoded[i % len(decoded)] for i in range(batch)])
        batch_jpegs = [jpegs[i % len(jpegs)] for i in range(batch)]
        entries: list[tuple[str, Callable]] = []
        iters: dict[str, int] = {}
        owners: dict[str, tuple] = {}
        for b in list(live):
            mine: list = []
            try:
                b.prepare(batch, pixels, batch_jpegs)
                for mode in modes:
                    fn = (lambda b=b, mode=mode: b.run(mode))
                    progress.live(f"batch {batch}: warming up {b.key} {mode}")
                    first, last = _warm_up(fn, warmup)
                    mine.append((f"{b.key}|{mode}", fn, mode, first, last))
            except Exception as exc:  # noqa: BLE001 - torch.compile may fail on its first call; say why
                if b.backend != "torch-compile":
                    raise
                failed.append({"key": b.key, "backend": b.backend, "device": b.device, "precision": b.precision,
                               "error": first_line(exc, 300)})
                live.remove(b)
                continue
            for entry, fn, mode, first, last in mine:
                first_runs[(b.key, mode, batch)] = first
                if iterations is not None:
                    k = max(1, math.ceil(int(iterations) / rounds))
                else:
                    k = max(1, int(round(float(duration) / rounds / max(last, 1e-6))))
                entries.append((entry, fn))
                iters[entry] = k
                owners[entry] = (b, mode)

        if gemm is not None:
            _, last = _warm_up(gemm.run, 1)
            k = max(1, int(round(min(float(duration or 1.0), 2.0) / rounds / max(last, 1e-6))))
            entries.append((f"{gemm.key}|{gemm.mode}", gemm.run))
            iters[f"{gemm.key}|{gemm.mode}"] = k
            owners[f"{gemm.key}|{gemm.mode}"] = (gemm, gemm.mode)

        def on_block(r, entry, k, total, batch=batch):
            b, mode = owners[entry]
            if b is gemm:
                return
            progress.live(f"batch {batch} round {r + 1}/{rounds}: {b.key} {mode} "
                          f"{k * batch / total if total else 0:.1f} img/s")
        lat, blocks, order = interleaved_rounds(entries, rounds, iters, on_block)
        schedule.extend({"round": r, "batch": batch, "key": owners[e][0].key, "mode": owners[e][1],
                         "iterations": k} for r, e, k in order)
        for entry, _ in entries:
            b, mode = owners[entry]
            if b is gemm:
                g = np.asarray([iters[entry] * gemm.flops / t / 1e9 for t in blocks[entry]])
                gemm_in_rounds[batch] = {"batch": batch, "median_gflops": round(float(np.median(g)), 1),
                                         "min_gflops": round(float(g.min()), 1), "max_gflops": round(float(g.max()), 1),
                                         "calls": len(lat[entry])}
                continue
            row = {"key": b.key, "backend": b.backend, "device": b.device, "precision": b.precision,
                   "provider": b.provider, "mode": mode, "batch": batch, "iterations": len(lat[entry]),
                   "rounds": rounds}
            row.update(_stats(lat[entry], blocks[entry], iters[entry], batch))
            row["first_run_s"] = round(first_runs[(b.key, mode, batch)], 4)
            results.append(row)
        best = max((r for r in results if r["batch"] == batch), key=lambda r: r["throughput_ips"]["median"],
                   default=None)
        if best:
            progress.line(f"batch {batch} done; fastest {best['key']} {best['mode']} "
                          f"{best['throughput_ips']['median']:.1f} img/s")

    # ---- accuracy -----------------------------------------------------------------------------------
    accuracy: dict[str, dict] = {}
    if data:
        for p in precisions:
            progress.live(f"accuracy of {p} on the {split} split of {data}")
            accuracy[p] = _accuracy(infos[p]["path"], data, split, n_threads)

    # ---- the peak once more, now that the timing is done: the best of both samples counts ------------
    for pk in peaks:
        progress.live(f"measuring the {pk['device']} {pk['precision']} GEMM peak again")
        _merge_peak(pk, measure_peak(pk["device"], n_threads, pk["precision"]))
    for pk in peaks:
        if pk["device"] == "cpu" and pk["precision"] == "fp32":
            pk["in_rounds"] = [gemm_in_rounds[b] for b in sizes if b in gemm_in_rounds]
            best_round = max((x["max_gflops"] for x in pk["in_rounds"]), default=None)
            mine = next((c for c in pk["candidates"] if c["engine"] == "onnxruntime MatMul"), None)
            if best_round and mine is not None and best_round > (mine.get("gflops") or 0):
                mine["gflops"], mine["from"] = best_round, "its best round in the timing"
                if best_round > (pk["gflops"] or 0):
                    pk["gflops"], pk["engine"] = best_round, mine["engine"]
    peak_of = {(pk["device"], pk["precision"]): pk["gflops"] for pk in peaks}
    progress.close()

    # ---- assemble the record ------------------------------------------------------------------------
    by_key = {b.key: b for b in backends}
    base_flops = info_base["flops"]["flops"]
    for row in results:
        b = by_key[row["key"]]
        flops = b.flops if b.flops else base_flops  # PyTorch runs the FP32 graph's FLOPs
        ips = row["throughput_ips"]["median"]
        gdev = "cpu" if row["device"] == "cpu" else "cuda"
        peak = peak_of.get((gdev, "fp32"))
        own = peak_of.get((gdev, "int8" if row["precision"] == "int8" else
                           ("fp16" if row["precision"].startswith("fp16") else "fp32")))
        row["gflops"] = round(flops * ips / 1e9, 2) if flops else None
        row["fraction_of_peak"] = round(row["gflops"] / peak, 4) if row["gflops"] and peak else None
        row["fraction_of_precision_peak"] = round(row["gflops"] / own, 4) if row["gflops"] and own else None
        ref = gemm_in_rounds.get(row["batch"]) if gdev == "cpu" else None
        row["fraction_of_gemm_in_rounds"] = round(row["gflops"] / ref["median_gflops"], 4) \
            if row["gflops"] and ref and ref["median_gflops"] else None
        c = cold.get(row["key"], {})
        if c and "error" not in c:
            row["cold_start_s"] = round(c["session_s"] + c["first_inference_s"].get(str(row["batch"]), 0.0), 4)
            row["peak_rss_mb"] = c["peak_rss_mb"].get(str(row["batch"]))
            row["gpu_mem_mb"] = c.get("gpu_mem_mb")
        elif not isolate:
            row["cold_start_s"] = round((b.session_s or 0.0) + first_runs[(b.key, "model", row["batch"])], 4)
            row["peak_rss_mb"] = _maxrss_mb()
            row["gpu_mem_mb"] = _gpu_mem_of_pid(os.getpid()) if row["device"] != "cpu" else None
        else:
            row["cold_start_s"] = row["peak_rss_mb"] = row["gpu_mem_mb"] = None
        row["file_bytes"] = b.file_bytes
        acc = accuracy.get(row["precision"]) if b.backend == "onnxruntime" else None
        row["top1"] = acc.get("top1") if acc else None
    # Speed-ups against the baseline of the same device: PyTorch eager FP32, else ORT FP32.
    for row in results:
        tdev = row["device"].replace("tensorrt", "cuda")
        candidates = [f"torch-eager/{tdev}/fp32", f"onnxruntime/{row['device']}/fp32"]
        base_key = next((k for k in candidates if k in by_key and k not in {f["key"] for f in failed}), None)
        ref = next((r for r in results if r["key"] == base_key and r["mode"] == row["mode"]
                    and r["batch"] == row["batch"]), None)
        row["baseline"] = base_key if ref else None
        row["speedup"] = round(row["throughput_ips"]["median"] / ref["throughput_ips"]["median"], 3) \
            if ref and ref["throughput_ips"]["median"] else None

    backend_records = []
    for b in backends:
        backend_records.append({
            "key": b.key, "backend": b.backend, "device": b.device, "precision": b.precision,
            "provider": b.provider, "providers": list(b.providers), "file": b.file, "file_bytes": b.file_bytes,
            "flops_per_image": b.flops if b.flops else base_flops,
            "flops_by_op": b.flops_by_op or info_base["flops"]["by_op"],
            "session_options": b.session_options, "provider_options": b.provider_options,
            "status": "failed" if b.key in {f["key"] for f in failed} else "ok",
            "error": next((f["error"] for f in failed if f["key"] == b.key), None),
            "cold_start": _cold_record(cold.get(b.key), b, first_runs, sizes, isolate),
            "accuracy": accuracy.get(b.precision) if b.backend == "onnxruntime" else None})
    for f in failed:
        if f["key"] not in by_key:
            backend_records.append({"key": f["key"], "backend": f["backend"], "device": f["device"],
                                    "precision": f["precision"], "provider": None, "providers": [], "file": ckpt_path,
                                    "file_bytes": None, "flops_per_image": base_flops, "flops_by_op": {},
                                    "session_options": {}, "provider_options": {}, "status": "failed",
                                    "error": f["error"], "cold_start": None, "accuracy": None})

    notes = []
    if info_base["flops"]["uncounted"]:
        notes.append(f"FLOPs: {len(info_base['flops']['uncounted'])} Conv/Gemm/MatMul nodes had unknown shapes "
                     "and are not counted")
    for f in failed:
        notes.append(f"{f['key']} failed: {f['error']}")
    if any(pk["candidates"] and len(pk["candidates"]) > 1 for pk in peaks):
        notes.append("FP32 peak: the best of ONNX Runtime MatMul and numpy's BLAS at the same thread count")
    if ckpt_path and meta.get("checkpoint_sha256"):
        from toolkit.train.checkpoint import sha256_file
        if sha256_file(ckpt_path) != meta["checkpoint_sha256"]:
            notes.append(f"{ckpt_path} is not the checkpoint this model was exported from (sha256 differs); the "
                         "PyTorch rows time another set of weights of the same architecture")
    if "fp16" in precisions and "cpu" in devices:
        notes.append("FP16 on CPU runs through ORT's CPU kernels (often slower than FP32); FP16 is for GPUs")

    g = machine_info(gpu=any(d != "cpu" for d in devices))
    cmd = ["toolkit benchmark", base, "--batch-sizes", ",".join(map(str, sizes)), "--precision",
           ",".join(precisions), "--device", ",".join(devices)]
    cmd += ["--torch"] if use_torch else []
    cmd += ["--compile"] if use_compile else []
    cmd += ["--iterations", str(iterations)] if iterations is not None else ["--duration", str(duration)]
    cmd += ["--threads", str(threads)] if threads else []
    cmd += ["--data", str(data)] if data else []
    record = {
        "schema_version": SCHEMA_VERSION, "kind": "inference", "created": _now_iso(),
        "command": " ".join(cmd),
        "model": {"path": base, "name": name, "arch": meta.get("arch"), "head": meta.get("head"),
                  "classes": len(meta["labels"]) if isinstance(meta.get("labels"), list) else None,
                  "input": meta.get("input") if isinstance(meta.get("input"), dict) else {"shape": dims},
                  "preprocess": meta.get("preprocess") if isinstance(meta.get("preprocess"), dict) else None,
                  "source_run": meta.get("source_run"), "checkpoint": ckpt_path or meta.get("checkpoint"),
                  "flops_per_image": base_flops},
        "machine": g, "versions": versions(),
        "settings": {"batch_sizes": list(sizes), "precisions": list(precisions), "devices": list(devices),
                     "torch": use_torch, "compile": use_compile, "threads": n_threads,
                     "threads_source": threads_source, "warmup": int(warmup) if warmup is not None else "auto",
                     "rounds": rounds, "iterations": int(iterations) if iterations is not None else None,
                     "duration_s": float(duration) if iterations is None else None,
                     "end_to_end": bool(end_to_end), "isolate": bool(isolate), "reference": gemm is not None,
                     "data": data,
                     "split": split if data else None,
                     "e2e_image": {"format": "JPEG", "width": E2E_IMAGE[0], "height": E2E_IMAGE[1],
                                   "quality": E2E_JPEG_QUALITY, "distinct": len(jpegs),
                                   "bytes_mean": int(np.mean([len(j) for j in jpegs]))}},
        "timed": dict(TIMED), "peaks": peaks, "backends": backend_records, "results": results,
        "schedule": schedule, "notes": notes,
        "files": {"json": os.path.join(out_dir, "benchmark.json"), "markdown": os.path.join(out_dir, "benchmark.md"),
                  "png": os.path.join(out_dir, "benchmark.png") if plot else None},
    }
    _write_outputs(record, out_dir, plot, say)
    if not quiet:
        print(format_table(record))
        say(f"benchmark: wrote {', '.join(v for v in record['files'].values() if v)}")
    return record


def _cold_record(probe: Optional[dict], b: _Backend, first_runs: dict, sizes: tuple, isolate: bool) -> Optional[dict]:
    if probe:
        keep = {k: v for k, v in probe.items() if k != "rss_start_mb"}
        for k in ("import_s", "session_s", "process_wall_s"):
            if isinstance(keep.get(k), float):
                keep[k] = round(keep[k], 4)
        if isinstance(keep.get("first_inference_s"), dict):
            keep["first_inference_s"] = {k: round(v, 4) for k, v in keep["first_inference_s"].items()}
        return keep
    if isolate:
        return None
    return {"isolated": False, "session_s": round(b.session_s or 0.0, 4),
            "first_inference_s": {str(s): round(first_runs[(b.key, "model", s)], 4)
                                  for s in sizes if (b.key, "model", s) in first_runs},
            "peak_rss_mb": {"process": _maxrss_mb()}}


def _main(argv: list) -> None:
    if len(argv) >= 2 and argv[0] == "--probe":
        print(json.dumps(_probe(json.loads(argv[1]))))
        return
    print("usage: toolkit benchmark [MODEL] (this module's own entry point is for its cold-start probes)",
          file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    _main(sys.argv[1:])
