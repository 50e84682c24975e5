"""Peak: the machine's GEMM limit per precision at the benchmark's threads, measured once before the timing with
ORT's MatMul (MatMulInteger u8 x s8 for int8; CUDA: with IO binding) and each engine adapter's gemm_peaks()
(OpenVINO's), the fastest kept; a row's GFLOP/s is read against the FP32 peak and its own precision's.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from toolkit.errors import first_line
from toolkit.runtime.benchmark.records import Peak
from toolkit.runtime.benchmark.timing import time_best
from toolkit.runtime.engines import adapter_for

PEAK_MATRIX = {"cpu": 2048, "cuda": 8192}  # square GEMM sizes for the peak measurement
EXTRA_PEAKS = {"cpu": ("bf16", "int8"), "cuda": ("fp16",)}  # measured when rows of that precision run


def ort_matmul_session(n: int, precision: str, device: str, threads: int):
    """An ONNX Runtime session of one n x n MatMul (MatMulInteger u8 x s8 for int8) on cpu or cuda."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    types = {"int8": (TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32),
             "fp16": (TensorProto.FLOAT16,) * 3}.get(precision, (TensorProto.FLOAT,) * 3)
    io = [helper.make_tensor_value_info(name, t, [n, n]) for name, t in zip("aby", types)]
    node = helper.make_node("MatMulInteger" if precision == "int8" else "MatMul", ["a", "b"], ["y"])
    model = helper.make_model(helper.make_graph([node], "peak", io[:2], io[2:]),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.log_severity_level = int(threads), 3
    providers = ["CPUExecutionProvider"] if device == "cpu" else ["CUDAExecutionProvider", "CPUExecutionProvider"]
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=providers)
    if sess.get_providers()[0] != providers[0]:
        raise RuntimeError(f"{providers[0]} did not load")
    return sess


def _ort_gflops(n: int, precision: str, device: str, threads: int) -> float:
    import onnxruntime as ort

    sess = ort_matmul_session(n, precision, device, threads)
    rng = np.random.default_rng(0)
    dtype = np.float16 if precision == "fp16" else np.float32
    feed = ({"a": rng.integers(0, 255, (n, n), dtype=np.uint8), "b": rng.integers(-127, 127, (n, n), dtype=np.int8)}
            if precision == "int8" else {k: rng.standard_normal((n, n)).astype(dtype) for k in "ab"})
    if device == "cpu":
        return 2.0 * n ** 3 / time_best(lambda: sess.run(None, feed)) / 1e9
    binding = sess.io_binding()
    for k, v in feed.items():
        binding.bind_ortvalue_input(k, ort.OrtValue.ortvalue_from_numpy(v, "cuda", 0))
    binding.bind_output("y", "cuda", 0)

    def call():
        sess.run_with_iobinding(binding)
        binding.synchronize_outputs()
    return 2.0 * n ** 3 / time_best(call, min_runs=10) / 1e9


def _candidate(engine: str, measure: Callable[[], float]) -> dict:
    """{"engine", "gflops"} of one engine's GEMM, or its error: the benchmark goes on without it."""
    try:
        return {"engine": engine, "gflops": round(measure(), 1)}
    except Exception as exc:  # noqa: BLE001 - a missing or failing engine only loses its candidate
        return {"engine": engine, "gflops": None, "error": first_line(exc, 300)}


def measure_peak(device: str = "cpu", threads: int = 1, precision: str = "fp32", n: int = 0,
                 engines: tuple = ("onnxruntime",)) -> Peak:
    """The best GFLOP/s of a large square GEMM of `precision` on `device` at `threads`: every candidate
    engine is kept with its figure, the fastest is the peak (`engine`). CUDA: ORT MatMul with IO binding
    (FP32 runs as TF32 on tensor cores where the CUDA EP enables it, its default)."""
    kind = "cpu" if device == "cpu" else "cuda"
    n = int(n or PEAK_MATRIX[kind])
    candidates = [] if precision == "bf16" and kind == "cpu" else [_candidate(
        f"onnxruntime {'MatMulInteger u8s8' if precision == 'int8' else 'MatMul'}",
        lambda: _ort_gflops(n, precision, kind, threads))]
    candidates += [_candidate(label, lambda m=measure: m(n, threads, time_best))  # each engine's own (OpenVINO's)
                   for engine in engines for label, measure in adapter_for(engine).gemm_peaks(precision)
                   if kind == "cpu"]
    best = max((c for c in candidates if c["gflops"]), key=lambda c: c["gflops"], default=None)
    note = "ORT CUDA EP default use_tf32=1: FP32 MatMul/Conv may run as TF32 on tensor cores" \
        if kind == "cuda" and precision == "fp32" else ""
    return Peak(device=device, precision=precision, engine=best and best["engine"], gflops=best and best["gflops"],
                matrix=n, threads=threads if kind == "cpu" else None, candidates=candidates, note=note)


def measure_peaks(devices: tuple, ran: set, threads: int, engines: tuple, progress) -> list[Peak]:
    """The FP32 peak of each device kind, plus BF16 and INT8 (CPU) or FP16 (CUDA) where `ran` holds
    (device kind, precision) of a loaded backend: each measured once."""
    peaks = []
    for kind in dict.fromkeys("cpu" if d == "cpu" else "cuda" for d in devices):
        for precision in ("fp32", *(p for p in EXTRA_PEAKS[kind] if (kind, p) in ran)):
            progress.live(f"measuring the {kind} {precision} GEMM peak")
            peaks.append(pk := measure_peak(kind, threads, precision, engines=engines))
            if pk.gflops:
                progress.line(f"peak {precision} GEMM on {kind}: {pk.gflops:.0f} GFLOP/s ({pk.engine}, "
                              f"{pk.matrix}x{pk.matrix}" + (f", {pk.threads} threads)" if pk.threads else ")"))
    return peaks
