"""Kept for the documented `toolkit.benchmark.run_benchmark`; the package lives in toolkit.runtime.benchmark."""
from toolkit.runtime.benchmark import BenchmarkOptions, run_benchmark  # noqa: F401

__all__ = ["BenchmarkOptions", "run_benchmark"]
