"""Honest throughput and latency: ONNX Runtime and OpenVINO vs PyTorch, per batch size, precision and device.

    toolkit benchmark                                  # the newest export, ORT FP32 on CPU, batch 1,8,32
    toolkit benchmark exports/flowers.onnx --precision fp32,int8 --torch --batch-sizes 1,8
    toolkit benchmark --train recipes/flowers.yaml     # training step vs data loader (toolkit.train.benchmark)
    toolkit benchmark a.onnx b.onnx --data R.yaml      # which model for this box: top-1 vs img/s, Pareto

The rules the measurements follow (docs/benchmark.md has them all, and the record says what each
number means in `timed`):

* Every backend is loaded once and warmed up per batch size before anything is timed.
* Backends are timed interleaved in rounds (the order rotated per round), every model of a comparison
  in the same rounds, so a noisy neighbour hits them all alike. Medians with their spread.
* Cold start and peak RSS per backend in a fresh Python process (`isolate`).
* GFLOP/s from FLOPs counted in the ONNX graph, read against each precision's GEMM peak, measured
  once, and against the same GEMM timed inside the rounds.

The modules, in the order a run uses them: options (BenchmarkOptions, the Plan, which engine x device x
precision runs: asked of the engine adapters, toolkit.runtime.engines), model_file (the export, its twins,
FLOPs), backends (the Backend protocol, ONNX backends on the adapters, the reference GEMM, the fresh-process
cold-start probe), peak, timing (rounds, statistics), run (run_benchmark: the one loop), assemble (a model's
record), compare (compare_models, Pareto), records (the record dataclasses, their JSON Schema,
validate_record), report (tables, Markdown, plots). The PyTorch backends live on the torch side
(toolkit.train.torch_backend) and reach run_benchmark through its `torch_backends` argument. No torch at
import time here.
"""
from toolkit.artifacts import twin_path
from toolkit.runtime.benchmark.backends import Backend, BackendLoader, ExtraBackends
from toolkit.runtime.benchmark.compare import compare_models, pareto_flags
from toolkit.runtime.benchmark.model_file import count_flops
from toolkit.runtime.benchmark.options import BenchmarkOptions
from toolkit.runtime.benchmark.records import SCHEMA_VERSION, SCHEMAS, BackendRecord, validate_record
from toolkit.runtime.benchmark.report import format_table
from toolkit.runtime.benchmark.run import run_benchmark
from toolkit.runtime.benchmark.timing import interleaved_rounds

__all__ = ["Backend", "BackendLoader", "BackendRecord", "BenchmarkOptions", "ExtraBackends", "SCHEMAS",
           "SCHEMA_VERSION", "compare_models", "count_flops", "format_table", "interleaved_rounds", "pareto_flags",
           "run_benchmark", "twin_path", "validate_record"]
