"""OpenVINO's share of the benchmark, asked through its adapter (OpenVinoEngine.gemm_peaks): its GEMM peaks
(FP32, BF16, INT8).

These run only when `--engine openvino` is asked for; every compile goes through the shared Core.
"""
from __future__ import annotations

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
