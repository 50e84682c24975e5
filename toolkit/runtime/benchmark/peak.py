"""Peak: the machine's GEMM limit per precision at the benchmark's threads, measured once, before the
timing, each precision with the fastest engine available.

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
from toolkit.runtime.benchmark.records import Peak
from toolkit.runtime.engines import adapter_for

PEAK_MATRIX = {"cpu": 2048, "cuda": 8192}  # square GEMM sizes for the peak measurement
EXTRA_PEAKS = {"cpu": ("bf16", "int8"), "cuda": ("fp16",)}  # measured when rows of that precision run

# numpy's FP32 BLAS or torch's bfloat16 matmul in a fresh process: their thread pools are fixed at load.
_FRESH_GEMM = r"""
import sys, time
lib, n, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if lib == "torch":
    import torch
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n).to(torch.bfloat16), torch.randn(n, n).to(torch.bfloat16)
    mm, name = torch.matmul, "oneDNN"
else:
    import numpy as np
    a, b = (np.random.default_rng(0).standard_normal((n, n)).astype(np.float32) for _ in range(2))
    mm, name = np.matmul, "BLAS"
    try:
        name = np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
    except Exception:
        pass
mm(a, b)
best, spent, runs = float("inf"), 0.0, 0
while runs < 3 or (spent < 1.5 and runs < 50):
    t = time.perf_counter(); mm(a, b); dt = time.perf_counter() - t
    best, spent, runs = min(best, dt), spent + dt, runs + 1
print(2.0 * n ** 3 / best / 1e9, name)
"""


def _matmul_model(n: int, precision: str):
    from onnx import TensorProto, helper

    types = {"int8": (TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32),
             "fp16": (TensorProto.FLOAT16,) * 3}.get(precision, (TensorProto.FLOAT,) * 3)
    io = [helper.make_tensor_value_info(name, t, [n, n]) for name, t in zip("aby", types)]
    node = helper.make_node("MatMulInteger" if precision == "int8" else "MatMul", ["a", "b"], ["y"])
    graph = helper.make_graph([node], "peak", io[:2], io[2:])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def ort_matmul_session(n: int, precision: str, device: str, threads: int):
    """An ONNX Runtime session of one n x n MatMul (MatMulInteger u8 x s8 for int8) on cpu or cuda."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.log_severity_level = 3
    providers = ["CPUExecutionProvider"] if device == "cpu" else ["CUDAExecutionProvider", "CPUExecutionProvider"]
    sess = ort.InferenceSession(_matmul_model(n, precision).SerializeToString(), so, providers=providers)
    if sess.get_providers()[0] != providers[0]:
        raise RuntimeError(f"{providers[0]} did not load")
    return sess


def time_best(fn: Callable, min_runs: int = 3, budget_s: float = 1.5, max_runs: int = 50) -> float:
    """The fastest of at least `min_runs` calls (and up to `budget_s` seconds), after one warm-up call."""
    fn()
    best, spent, runs = float("inf"), 0.0, 0
    while runs < min_runs or (spent < budget_s and runs < max_runs):
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best, spent, runs = min(best, dt), spent + dt, runs + 1
    return best


def _ort_gflops(n: int, precision: str, device: str, threads: int) -> float:
    import onnxruntime as ort

    sess = ort_matmul_session(n, precision, device, threads)
    rng = np.random.default_rng(0)
    if precision == "int8":
        feed = {"a": rng.integers(0, 255, (n, n), dtype=np.uint8), "b": rng.integers(-127, 127, (n, n), dtype=np.int8)}
    else:
        dtype = np.float16 if precision == "fp16" else np.float32
        feed = {k: rng.standard_normal((n, n)).astype(dtype) for k in "ab"}
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


def _fresh_process_gflops(lib: str, n: int, threads: int) -> tuple[float, str]:
    """(GFLOP/s, the library's BLAS name) of _FRESH_GEMM, its thread pools pinned to `threads`."""
    env = {**os.environ, **{var: str(threads) for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                          "MKL_NUM_THREADS", "BLIS_NUM_THREADS")}}
    proc = subprocess.run([sys.executable, "-c", _FRESH_GEMM, lib, str(n), str(threads)], capture_output=True,
                          text=True, env=env, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError((proc.stderr.strip().splitlines() or ["GEMM failed"])[-1])
    value, _, name = proc.stdout.strip().splitlines()[-1].partition(" ")
    return float(value), name.strip()


def _candidate(engine: str, measure: Callable[[], float]) -> dict:
    """{"engine", "gflops"} of one engine's GEMM, or its error: the benchmark goes on without it."""
    try:
        return {"engine": engine, "gflops": round(measure(), 1)}
    except Exception as exc:  # noqa: BLE001 - a missing or failing engine only loses its candidate
        return {"engine": engine, "gflops": None, "error": first_line(exc, 300)}


def _candidates(kind: str, precision: str, n: int, threads: int, engines: tuple) -> list:
    """Every engine's GEMM of one precision on one device kind (the module docstring lists them)."""
    if kind == "cuda":
        return [_candidate("onnxruntime MatMul", lambda: _ort_gflops(n, precision, "cuda", threads))]
    out = []
    if precision in ("fp32", "int8"):
        out.append(_candidate(f"onnxruntime {'MatMulInteger u8s8' if precision == 'int8' else 'MatMul'}",
                              lambda: _ort_gflops(n, precision, "cpu", threads)))
    if precision == "fp32":
        blas = []  # the BLAS's name, which the fresh process prints beside its figure
        out.append(_candidate("numpy", lambda: blas.append(_fresh_process_gflops("numpy", n, threads)) or blas[0][0]))
        out[-1]["engine"] += f" ({blas[0][1]})" if blas else ""
    out += [_candidate(label, lambda m=measure: m(n, threads, time_best))  # each engine's own GEMM (OpenVINO's)
            for engine in engines for label, measure in adapter_for(engine).gemm_peaks(precision)]
    if precision == "bf16" and importlib.util.find_spec("torch") is not None:
        out.append(_candidate("torch matmul bf16 (oneDNN)", lambda: _fresh_process_gflops("torch", n, threads)[0]))
    return out


def measure_peak(device: str = "cpu", threads: int = 1, precision: str = "fp32", n: Optional[int] = None,
                 engines: tuple = ("onnxruntime",)) -> Peak:
    """The best GFLOP/s of a large square GEMM of `precision` on `device` at `threads`: every candidate
    engine is kept with its figure, the fastest is the peak (`engine`). CUDA: ORT MatMul with IO binding
    (FP32 runs as TF32 on tensor cores where the CUDA EP enables it, its default)."""
    kind = "cpu" if device == "cpu" else "cuda"
    n = int(n or PEAK_MATRIX[kind])
    candidates = _candidates(kind, precision, n, threads, tuple(engines))
    best = max((c for c in candidates if c["gflops"]), key=lambda c: c["gflops"], default=None)
    note = "ORT CUDA EP default use_tf32=1: FP32 MatMul/Conv may run as TF32 on tensor cores" \
        if kind == "cuda" and precision == "fp32" else ""
    return Peak(device=device, precision=precision, engine=best and best["engine"], gflops=best and best["gflops"],
                matrix=n, threads=threads if kind == "cpu" else None, candidates=candidates, note=note, in_rounds=[])


def measure_peaks(devices: tuple, ran: set, threads: int, engines: tuple, progress) -> list[Peak]:
    """The FP32 peak of each device kind, plus BF16 and INT8 (CPU) or FP16 (CUDA) where `ran` holds
    (device kind, precision) of a loaded backend: each measured once."""
    peaks = []
    for kind in dict.fromkeys("cpu" if d == "cpu" else "cuda" for d in devices):
        for precision in ("fp32", *(p for p in EXTRA_PEAKS[kind] if (kind, p) in ran)):
            progress.live(f"measuring the {kind} {precision} GEMM peak")
            pk = measure_peak(kind, threads, precision, engines=engines)
            peaks.append(pk)
            if pk.gflops:
                progress.line(f"peak {precision} GEMM on {kind}: {pk.gflops:.0f} GFLOP/s ({pk.engine}, "
                              f"{pk.matrix}x{pk.matrix}" + (f", {pk.threads} threads)" if pk.threads else ")"))
    return peaks
