"""Everything engine-specific in the benchmark, in one place (the rest asks these functions):

* which engine x device x precision can run (why_not), and the Predictor's engine options;
* the session options read back from ONNX Runtime or OpenVINO;
* OpenVINO's GEMM peak candidates (FP32, BF16, INT8);
* OpenVINO's cold start with and without a model cache (CACHE_DIR).

openvino is imported only inside these functions, and they run only when `--engine openvino` is asked for.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Callable, Optional

import numpy as np

# precision -> OpenVINO's INFERENCE_PRECISION_HINT for the peak GEMM (INT8 runs as INT8 from its QDQ pattern)
_OV_HINT = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
_OV_GEMM = {"fp32": "MatMul f32", "bf16": "MatMul bf16", "int8": "QDQ MatMul u8s8"}
_ORT_PROVIDER_KEYS = ("device_id", "cudnn_conv_algo_search", "cudnn_conv_use_max_workspace",
                      "do_copy_in_default_stream", "use_tf32", "arena_extend_strategy", "enable_cuda_graph",
                      "trt_fp16_enable", "trt_int8_enable")


def why_not(engine: str, device: str, precision: str) -> Optional[str]:
    """Why `engine` can't run this device x precision here, or None when it can."""
    if engine == "onnxruntime" and precision == "bf16":
        return ("onnxruntime has no bf16 inference precision (it runs a file as exported); bf16 runs on "
                "--engine openvino")
    if engine == "openvino" and device != "cpu":
        return f"openvino runs the cpu device in this benchmark; {device} is an ONNX Runtime device"
    return None


def predictor_options(engine: str, inference_precision: str, cache_dir: Optional[str] = None) -> dict:
    """The Predictor's engine-specific keyword arguments (OpenVINO: its inference precision and model cache)."""
    if engine != "openvino":
        return {}
    return {"precision": inference_precision, "cache_dir": cache_dir}


def read_back(predictor, threads: int) -> tuple[dict, dict]:
    """(session options, provider options) the session really runs with, read back from it."""
    session = predictor.session
    if predictor.engine == "openvino":
        return {"performance_hint": session.hint, "inference_precision": session.inference_precision,
                "optimal_infer_requests": session.optimal_requests, "inference_num_threads": threads,
                "compile_s": round(session.compile_s, 4), "cache_dir": session.cache_dir}, {}
    so = session.get_session_options()
    opts = {"graph_optimization_level": so.graph_optimization_level.name,
            "intra_op_num_threads": so.intra_op_num_threads, "inter_op_num_threads": so.inter_op_num_threads,
            "execution_mode": so.execution_mode.name, "enable_cpu_mem_arena": so.enable_cpu_mem_arena,
            "enable_mem_pattern": so.enable_mem_pattern}
    for key in ("session.intra_op.allow_spinning", "session.disable_prepacking"):
        try:
            opts[key] = so.get_session_config_entry(key)
        except Exception:  # noqa: BLE001 - the lookup raises when the entry is unset
            pass
    prov = {k: {kk: vv for kk, vv in v.items() if kk in _ORT_PROVIDER_KEYS}
            for k, v in session.get_provider_options().items()}
    return opts, prov


def _ov_matmul_model(n: int, precision: str):
    """x[n, n] @ w[n, n] with w a constant, as OpenVINO's FullyConnected runs a model's layers. INT8: the
    QDQ pattern of the toolkit's INT8 twin (u8 activations, s8 weights): an integer FullyConnected."""
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


def _ov_gemm_gflops(n: int, precision: str, threads: int, time_best: Callable) -> float:
    """GFLOP/s of an n x n x n GEMM on OpenVINO's CPU at `threads`, LATENCY hint (one stream)."""
    import openvino as ov

    core = ov.Core()
    if precision == "bf16" and "BF16" not in [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]:
        raise RuntimeError("OpenVINO's CPU has no BF16 support on this machine")
    compiled = core.compile_model(core.read_model(_ov_matmul_model(n, precision).SerializeToString(), b""), "CPU",
                                  {"INFERENCE_PRECISION_HINT": _OV_HINT[precision], "PERFORMANCE_HINT": "LATENCY",
                                   "INFERENCE_NUM_THREADS": int(threads)})
    request = compiled.create_infer_request()
    x = np.random.default_rng(1).random((n, n), dtype=np.float32)
    return 2.0 * n ** 3 / time_best(lambda: request.infer({0: x})) / 1e9


def gemm_candidates(engines: tuple, precision: str, n: int, threads: int,
                    time_best: Callable) -> list[tuple[str, Callable[[], float]]]:
    """[(engine label, measure)] of the engines' own CPU GEMMs for a precision's peak (beyond ORT's)."""
    if "openvino" not in engines or precision not in _OV_GEMM:
        return []
    return [(f"openvino {_OV_GEMM[precision]}", lambda: _ov_gemm_gflops(n, precision, threads, time_best))]


def _first(probe: dict) -> dict:
    """The cold-start figures of one probe: compile (session) and the first inference per batch size."""
    keep = ("error",) if "error" in probe else ("session_s", "compile_s", "first_inference_s", "process_wall_s")
    return {k: probe.get(k) for k in keep}


def cold_start(spec: dict, run_probe: Callable[[dict], dict]) -> dict:
    """The fresh-process probe of one backend. OpenVINO: also `model_cache` {"none", "cold", "warm"} from two
    more fresh processes, one with an empty CACHE_DIR it fills, one with that filled cache."""
    plain = run_probe(spec)
    if spec["kind"] != "openvino" or "error" in plain:
        return plain
    cache = tempfile.mkdtemp(prefix="toolkit-ov-cache-")
    try:
        cold = run_probe({**spec, "cache_dir": cache})
        filled = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(cache) for f in files)
        warm = run_probe({**spec, "cache_dir": cache})
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    plain["model_cache"] = {"none": _first(plain), "cold": {**_first(cold), "cache_bytes": filled},
                            "warm": _first(warm)}
    return plain


def probe_extras(predictor) -> dict:
    """Engine-specific figures of the cold-start probe (OpenVINO: its compile seconds)."""
    return {"compile_s": predictor.session.compile_s} if predictor.engine == "openvino" else {}
