"""Peak: the machine's measured GEMM limit per precision, with the benchmark's threads, taken with the
fastest engine available.

A model's achieved GFLOP/s is read against the FP32 peak (fraction_of_peak) and against its own
precision's peak (fraction_of_precision_peak). Candidates per precision on CPU:
    fp32  ORT MatMul, numpy's BLAS (fresh process), OpenVINO MatMul f32 (with --engine openvino)
    bf16  OpenVINO MatMul at bf16 (with --engine openvino), torch.matmul in bfloat16 (oneDNN, in a
          fresh process, when torch is installed: the runtime itself never imports torch)
    int8  ORT MatMulInteger u8 x s8, OpenVINO's QDQ MatMul (with --engine openvino)
CUDA: ORT MatMul (FP32, FP16) with IO binding.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from typing import Callable, Optional

import numpy as np

from toolkit.errors import first_line
from toolkit.runtime.engines import adapter_for

PEAK_MATRIX = {"cpu": 2048, "cuda": 8192}  # square GEMM sizes for the peak measurement


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


_TORCH_BF16_PEAK_SCRIPT = r"""
import sys, time, torch
n, threads = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(threads)
a = torch.randn(n, n).to(torch.bfloat16); b = torch.randn(n, n).to(torch.bfloat16)
torch.matmul(a, b)
best, spent, runs = float("inf"), 0.0, 0
while runs < 3 or (spent < 1.5 and runs < 50):
    t = time.perf_counter(); torch.matmul(a, b); dt = time.perf_counter() - t
    best, spent, runs = min(best, dt), spent + dt, runs + 1
print(2.0 * n ** 3 / best / 1e9, torch.__version__)
"""


def _fresh_process_peak(script: str, args: list, threads: int) -> tuple[float, str]:
    """A GEMM timed in a fresh process, its thread pools pinned to `threads` (they are fixed at load).
    Returns (GFLOP/s, the second word it printed)."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS"):
        env[var] = str(threads)
    proc = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError((proc.stderr.strip().splitlines() or ["GEMM failed"])[-1])
    value, _, word = proc.stdout.strip().splitlines()[-1].partition(" ")
    return float(value), word.strip()


def _numpy_gemm_peak(n: int, threads: int) -> tuple[float, str]:
    """numpy's BLAS in a fresh process."""
    value, blas = _fresh_process_peak(_NUMPY_PEAK_SCRIPT, [n], threads)
    return value, blas or "BLAS"


def _candidate(engine: str, measure: Callable[[], float]) -> dict:
    """{"engine", "gflops"} of one engine's GEMM, or its error: the benchmark goes on without it."""
    try:
        return {"engine": engine, "gflops": round(measure(), 1)}
    except Exception as exc:  # noqa: BLE001 - a missing or failing engine only loses its candidate
        return {"engine": engine, "gflops": None, "error": first_line(exc, 300)}


def _cpu_candidates(n: int, precision: str, threads: int, engines: tuple) -> list:
    """The CPU GEMM candidates of one precision (the module docstring lists them)."""
    out = []
    if precision in ("fp32", "int8", "fp16"):
        out.append(_candidate(f"onnxruntime {'MatMulInteger u8s8' if precision == 'int8' else 'MatMul'}",
                              lambda: _ort_gemm_peak(n, precision, "cpu", threads)))
    if precision == "fp32":
        blas = []  # the BLAS's name, which the fresh process prints beside its figure
        out.append(_candidate("numpy", lambda: (blas.append(_numpy_gemm_peak(n, threads)) or blas[0][0])))
        if blas:
            out[-1]["engine"] = f"numpy ({blas[0][1]})"
    for engine in engines:   # each engine's own GEMM, from its adapter (OpenVINO's MatMul; ORT's is above)
        for label, measure in adapter_for(engine).gemm_peaks(precision):
            out.append(_candidate(label, lambda m=measure: m(n, threads, _time_best)))
    if precision == "bf16" and importlib.util.find_spec("torch") is not None:
        out.append(_candidate("torch matmul bf16 (oneDNN)",
                              lambda: _fresh_process_peak(_TORCH_BF16_PEAK_SCRIPT, [n, threads], threads)[0]))
    return out


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
                 n: Optional[int] = None, engines: tuple = ("onnxruntime",)) -> dict:
    """The best GFLOP/s of a large square GEMM of `precision` on `device` at `threads`: every candidate
    engine (the module docstring) is kept with its figure, the fastest is the peak (`engine`).
    CUDA: ORT MatMul with IO binding (FP32 runs as TF32 on tensor cores where the CUDA EP enables it,
    its default)."""
    kind = "cpu" if device == "cpu" else "cuda"
    n = int(n or PEAK_MATRIX[kind])
    if kind == "cpu":
        candidates = _cpu_candidates(n, precision, threads, tuple(engines))
    else:
        candidates = [_candidate("onnxruntime MatMul", lambda: _ort_gemm_peak(n, precision, kind, threads))]
    ok = [c for c in candidates if c.get("gflops")]
    best = max(ok, key=lambda c: c["gflops"]) if ok else None
    note = ""
    if kind == "cuda" and precision == "fp32":
        note = "ORT CUDA EP default use_tf32=1: FP32 MatMul/Conv may run as TF32 on tensor cores"
    return {"device": device, "precision": precision, "engine": best["engine"] if best else None,
            "gflops": best["gflops"] if best else None, "matrix": n, "threads": threads if kind == "cpu" else None,
            "candidates": candidates, "note": note, "in_rounds": []}
