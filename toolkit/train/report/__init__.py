"""`toolkit report [RUN]`: report.html (one self-contained page) and report.json of a run or an .onnx file.
Also written at the end of `toolkit train` (write_after_training: a failure there is one warning line).

    from toolkit.train.report import ReportOptions, build_report, report_command

The builder (toolkit/train/report/build.py) is imported when first used: ReportOptions alone needs no torch,
so `toolkit report --help` works on the base install."""
from __future__ import annotations

from toolkit.train.report.options import ReportOptions

__all__ = ["ReportOptions", "report_command", "build_report", "write_after_training"]
_BUILT = ("report_command", "build_report", "write_after_training", "gather")


def __getattr__(name: str):
    if name in _BUILT:
        from toolkit.train.report import build

        return getattr(build, name)
    raise AttributeError(f"module 'toolkit.train.report' has no attribute {name!r}")
