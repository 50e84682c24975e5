"""Peak: the machine's measured GEMM limit, with the same engine and threads as the benchmark.

A model's achieved GFLOP/s is read against it (fraction_of_peak in the record).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Callable, Optional

import numpy as np

from toolkit.errors import first_line

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
