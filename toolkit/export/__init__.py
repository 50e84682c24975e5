"""Export: a training run -> one verified, self-describing ONNX file (+ FP16 / INT8 twins, Triton layout).

    from toolkit.export import export_run, export_triton, ExportOptions, TritonOptions

Imported lazily, so `import toolkit.export.triton` stays light (onnx only, no torch).
"""
from __future__ import annotations

__all__ = ["ExportOptions", "TritonOptions", "export_run", "export_triton"]


def __getattr__(name: str):
    if name in ("export_run", "export_triton"):
        from toolkit.export import pipeline

        return getattr(pipeline, name)
    if name == "ExportOptions":
        from toolkit.export.options import ExportOptions

        return ExportOptions
    if name == "TritonOptions":
        from toolkit.export.triton import TritonOptions

        return TritonOptions
    raise AttributeError(f"module 'toolkit.export' has no attribute {name!r}")
