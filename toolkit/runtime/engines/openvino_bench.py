"""OpenVINO's share of the benchmark, asked through its adapter (OpenVinoEngine.gemm_peaks / cold_starts):
its GEMM peaks (FP32, BF16, INT8) and its cold start with and without a model cache (CACHE_DIR).

These run only when `--engine openvino` is asked for; every compile goes through the shared Core.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Callable

import numpy as np
from toolkit.runtime.engines.openvino_core import capabilities, shared_core

# precision -> OpenVINO's INFERENCE_PRECISION_HINT for the peak GEMM (INT8 runs as INT8 from its QDQ pattern)
_HINT = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


def _matmul_model(n: int, precision: str):
    """x[n, n] @ w[n, n] with w a constant, as OpenVINO's FullyConnected runs a model's layers. INT8: the
    QDQ pattern the toolkit's INT8 twin uses (u8 activations, s8 weights), which OpenVINO compiles
    into an integer FullyConnected."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])
    if precision == "int8":
        inits = [numpy_helper.from_array(rng.integers(-127, 128, (n, n), dtype=np.int8), "wq"),
                 numpy_helper.from_array(np.array(0.02, np.float32), "scale"),
                 numpy_helper.from_array(np.array(0, np.uint8), "zero_u8"),
                 numpy_helper.from_array(np.array(0, np.int8), "zero_s8")]
        nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zero_u8"], ["xq"]),
                 helper.make_node("DequantizeLinear", ["xq", "scale", "zero_u8"], ["xd"]),
                 helper.make_node("DequantizeLinear", ["wq", "scale", "zero_s8"], ["wd"]),
                 helper.make_node("MatMul", ["xd", "wd"], ["y"])]
    else:
        inits = [numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "w")]
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    graph = helper.make_graph(nodes, "peak", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def ov_gemm_peak(n: int, precision: str, threads: int, time_best: Callable) -> float:
    """GFLOP/s of an n x n x n GEMM on OpenVINO's CPU at `threads`, LATENCY hint (one stream).
    Raises when OpenVINO can't run that precision here (e.g. bf16 without BF16 support)."""

    core = shared_core()   # never a Core of its own: see shared_core on OpenVINO's signal stack
    if precision == "bf16" and "BF16" not in capabilities("CPU"):
        raise RuntimeError("OpenVINO's CPU has no BF16 support on this machine")
    compiled = core.compile_model(core.read_model(_matmul_model(n, precision).SerializeToString(), b""), "CPU",
                                  {"INFERENCE_PRECISION_HINT": _HINT[precision], "PERFORMANCE_HINT": "LATENCY",
                                   "INFERENCE_NUM_THREADS": int(threads)})
    request = compiled.create_infer_request()
    x = np.random.default_rng(1).random((n, n), dtype=np.float32)
    best = time_best(lambda: request.infer({0: x}))
    return 2.0 * n ** 3 / best / 1e9


_PEAK_LABELS = {"fp32": "MatMul f32", "bf16": "MatMul bf16", "int8": "QDQ MatMul u8s8"}


def gemm_peaks(precision: str) -> list:
    """[(label, measure(n, threads, time_best))]: OpenVINO's GEMM peak candidate for `precision`, if any."""
    if precision not in _PEAK_LABELS:
        return []
    return [(f"openvino {_PEAK_LABELS[precision]}",
             lambda n, threads, time_best: ov_gemm_peak(n, precision, threads, time_best))]


def _first(probe: dict) -> dict:
    """The cold-start figures of one probe: compile (session) and the first inference per batch size."""
    if "error" in probe:
        return {"error": probe["error"]}
    return {"session_s": round(probe["session_s"], 4), "compile_s": round(probe.get("compile_s") or 0.0, 4),
            "first_inference_s": {k: round(v, 4) for k, v in probe["first_inference_s"].items()},
            "process_wall_s": probe.get("process_wall_s")}


def _folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def cold_starts_with_cache(spec: dict, run_probe: Callable[[dict], dict]) -> tuple[dict, dict]:
    """(the probe without a model cache, {"none", "cold", "warm"}): three fresh processes, one without
    CACHE_DIR, one with an empty cache it fills, one with that filled cache."""
    plain = run_probe(spec)
    cache = tempfile.mkdtemp(prefix="toolkit-ov-cache-")
    try:
        cold = run_probe({**spec, "cache_dir": cache})
        filled = _folder_bytes(cache)
        warm = run_probe({**spec, "cache_dir": cache})
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return plain, {"none": _first(plain), "cold": {**_first(cold), "cache_bytes": filled}, "warm": _first(warm)}
