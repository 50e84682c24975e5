"""Honest throughput and latency: ONNX Runtime and OpenVINO vs PyTorch, per batch size, precision and device.
docs/benchmark.md has the rules the measurements follow, docs/architecture.md the modules."""
from toolkit.artifacts import twin_path
from toolkit.runtime.benchmark.backends import Backend, BackendLoader, ExtraBackends
from toolkit.runtime.benchmark.options import BenchmarkOptions
from toolkit.runtime.benchmark.peak import count_flops
from toolkit.runtime.benchmark.records import SCHEMA_VERSION, SCHEMAS, BackendRecord, validate_record
from toolkit.runtime.benchmark.report import format_table, pareto_flags
from toolkit.runtime.benchmark.run import compare_models, run_benchmark
from toolkit.runtime.benchmark.timing import interleaved_rounds

__all__ = ["Backend", "BackendLoader", "BackendRecord", "BenchmarkOptions", "ExtraBackends", "SCHEMAS",
           "SCHEMA_VERSION", "compare_models", "count_flops", "format_table", "interleaved_rounds", "pareto_flags",
           "run_benchmark", "twin_path", "validate_record"]
