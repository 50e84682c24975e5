"""Kept for the documented `toolkit.benchmark_report.validate_record` and `SCHEMAS`; see toolkit.runtime.benchmark."""
from toolkit.runtime.benchmark import SCHEMAS, validate_record  # noqa: F401

__all__ = ["SCHEMAS", "validate_record"]
