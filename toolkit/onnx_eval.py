"""Kept for the documented `toolkit.onnx_eval.evaluate_onnx`; the module lives in toolkit.runtime.onnx_eval."""
from toolkit.runtime.onnx_eval import evaluate_onnx, read_metadata  # noqa: F401

__all__ = ["evaluate_onnx", "read_metadata"]
