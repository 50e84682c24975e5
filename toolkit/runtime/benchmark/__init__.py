"""Honest throughput and latency: ONNX Runtime and OpenVINO vs PyTorch, per batch size, precision and device
(docs/benchmark.md has the rules the measurements follow; the record says what each number means in `timed`).

In the order a run uses them: options (BenchmarkOptions, parse: the run's Settings), model_file (the export, its twins, FLOPs),
backends (the Backend protocol, ONNX backends on the engine adapters, the fresh-process cold start), peak,
timing, run (the one loop: run_benchmark, compare_models), records (the record dataclasses, their JSON Schema,
validate_record), report (the records, Pareto marks, the tables and files). The PyTorch backends live on
the torch side (toolkit.train.torch_backend) and reach run_benchmark through `torch_backends`. No torch here.
"""
from toolkit.artifacts import twin_path
from toolkit.runtime.benchmark.backends import Backend, BackendLoader, ExtraBackends
from toolkit.runtime.benchmark.model_file import count_flops
from toolkit.runtime.benchmark.options import BenchmarkOptions
from toolkit.runtime.benchmark.records import SCHEMA_VERSION, SCHEMAS, BackendRecord, validate_record
from toolkit.runtime.benchmark.report import format_table, pareto_flags
from toolkit.runtime.benchmark.run import compare_models, run_benchmark
from toolkit.runtime.benchmark.timing import interleaved_rounds

__all__ = ["Backend", "BackendLoader", "BackendRecord", "BenchmarkOptions", "ExtraBackends", "SCHEMAS",
           "SCHEMA_VERSION", "compare_models", "count_flops", "format_table", "interleaved_rounds", "pareto_flags",
           "run_benchmark", "twin_path", "validate_record"]
