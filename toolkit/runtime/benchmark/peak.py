"""GFLOP/s's two sides: the FLOPs of one forward pass counted in the ONNX graph (count_flops), and the machine's
GEMM limit per precision at the benchmark's threads, measured once before the timing with ORT's MatMul
(MatMulInteger u8 x s8 for int8) and each engine adapter's gemm_peaks(), the fastest kept.
"""
from __future__ import annotations

import math
import os
import tempfile
from typing import Any, Callable, Optional

import numpy as np

from toolkit.errors import first_line
from toolkit.runtime.benchmark.records import Peak
from toolkit.runtime.benchmark.timing import time_best
from toolkit.runtime.engines import DEFAULT_ENGINE, EngineOptions, adapter_for, open_engine

# op -> index of its weight input, per kind of multiply-accumulate
_CONV_OPS = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3, "FusedConv": 1, "NhwcConv": 1, "NhwcFusedConv": 1,
             "ConvTranspose": 1}
_GEMM_OPS = {"Gemm": 1, "QGemm": 3, "FusedGemm": 1}
_MATMUL_OPS = {"MatMul": 1, "MatMulInteger": 1, "QLinearMatMul": 3, "FusedMatMul": 1, "MatMulIntegerToFloat": 1,
               "DynamicQuantizeMatMul": 1}


def _node_macs(node, shape) -> Optional[int]:
    """Multiply-accumulates of one Conv / Gemm / MatMul node; None when a shape is unknown."""
    op, a, y = node.op_type, shape(node.input[0]), shape(node.output[0])
    if op in _CONV_OPS:
        w = shape(node.input[_CONV_OPS[op]])
        out = a if op == "ConvTranspose" else y  # each input (transposed) or output pixel meets the kernel
        return math.prod(out) * math.prod(w[1:]) if w and out else None
    if op in _GEMM_OPS:
        trans_a = any(at.name == "transA" and at.i for at in node.attribute)
        return math.prod(y) * (a[0] if trans_a else a[1]) if a and y and len(a) == 2 else None
    return math.prod(y) * a[-1] if a and y else None


def count_flops(model: Any, image_size: Optional[int] = None) -> dict:
    """FLOPs of one forward pass of one image: 2 x the multiply-accumulates of Conv / Gemm / MatMul (and
    their quantized and fused forms). `model`: a path or an onnx.ModelProto (not modified). The batch axis
    is set to 1; other symbolic axes (a gap-head export's H and W) to `image_size`.
    Returns {"flops", "by_op": {op: flops}, "uncounted": [node names whose shapes were unknown]}."""
    import onnx

    proto = onnx.ModelProto()
    proto.CopyFrom(onnx.load(os.fspath(model), load_external_data=False) if isinstance(model, (str, os.PathLike))
                   else model)
    for init in (i for i in proto.graph.initializer if math.prod(i.dims) > 4096):
        for desc, _ in init.ListFields():  # shape inference needs only a large weight's name, dims and type
            if desc.name not in ("name", "dims", "data_type"):
                init.ClearField(desc.name)
    inits, batch_fixed = {i.name for i in proto.graph.initializer}, 1
    for inp in (i for i in proto.graph.input if i.name not in inits):
        for axis, dim in enumerate(inp.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                batch_fixed = dim.dim_value if axis == 0 else batch_fixed  # FLOPs are divided by a fixed batch
            elif axis == 0 or image_size is not None:
                dim.dim_value = 1 if axis == 0 else int(image_size)
    try:
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception:  # noqa: BLE001 - fall back to whatever shapes the file carries
        pass
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]  # dim_value 0: unknown
              for vi in [*proto.graph.value_info, *proto.graph.input, *proto.graph.output]
              if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape")}
    shapes.update({init.name: list(init.dims) for init in proto.graph.initializer})
    shapes = {name: dims for name, dims in shapes.items() if all(d > 0 for d in dims)}  # only fully known ones
    by_op: dict[str, int] = {}
    uncounted: list[str] = []
    for node in (n for n in proto.graph.node if n.op_type in {**_CONV_OPS, **_GEMM_OPS, **_MATMUL_OPS}):
        macs = _node_macs(node, shapes.get)
        if macs is None:
            uncounted.append(node.name or node.op_type)
        else:
            by_op[node.op_type] = by_op.get(node.op_type, 0) + 2 * macs
    flops = sum(by_op.values()) / max(1, batch_fixed)
    return {"flops": int(flops), "by_op": by_op, "uncounted": uncounted}


PEAK_MATRIX = {"cpu": 2048, "cuda": 8192}  # square GEMM sizes for the peak measurement
EXTRA_PEAKS = {"cpu": ("bf16", "int8"), "cuda": ("fp16",)}  # measured when rows of that precision run


def _ort_gflops(n: int, precision: str, device: str, threads: int) -> float:
    """GFLOP/s of one n x n MatMul (MatMulInteger u8 x s8 for int8) on ONNX Runtime's adapter, which on CUDA
    binds the inputs to the device (prepared), so the time is the GEMM alone."""
    import onnx
    from onnx import TensorProto, helper

    types = {"int8": (TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32),
             "fp16": (TensorProto.FLOAT16,) * 3}.get(precision, (TensorProto.FLOAT,) * 3)
    io = [helper.make_tensor_value_info(name, t, [n, n]) for name, t in zip("aby", types)]
    node = helper.make_node("MatMulInteger" if precision == "int8" else "MatMul", ["a", "b"], ["y"])
    model = helper.make_model(helper.make_graph([node], "peak", io[:2], io[2:]),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with tempfile.TemporaryDirectory() as tmp:  # the session holds the graph: the file can go
        path = os.path.join(tmp, "peak.onnx")
        onnx.save(model, path)
        engine = open_engine(path, DEFAULT_ENGINE, EngineOptions(device=device, threads=threads))
    rng = np.random.default_rng(0)
    dtype = np.float16 if precision == "fp16" else np.float32
    feed = ({"a": rng.integers(0, 255, (n, n), dtype=np.uint8), "b": rng.integers(-127, 127, (n, n), dtype=np.int8)}
            if precision == "int8" else {k: rng.standard_normal((n, n)).astype(dtype) for k in "ab"})
    return 2.0 * n ** 3 / time_best(engine.prepared(feed), min_runs=3 if device == "cpu" else 10) / 1e9


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
