"""The export formats `toolkit export --format` knows: each one options dataclass and one function.

A new format is one more row here (and its dataclass on the export command's @options line in toolkit/cli.py).
Standard library only: the CLI imports it when `toolkit export` runs, and the format's code only once named.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import NamedTuple, Optional

from toolkit.errors import UserError


class Format(NamedTuple):
    what: str  # what it writes, for the error that lists the formats
    run: str  # "module:function", called as function(run, **flags)
    options: Optional[str] = None  # "module:Class" of its own options, or None
    out: Optional[str] = None  # the field of its options that --out fills (a folder), or None: ExportOptions.out


FORMATS = {
    "onnx": Format("one file and its twins", "toolkit.export.pipeline:export_run"),
    "triton": Format("a Triton model repository", "toolkit.export.pipeline:export_triton",
                     "toolkit.export.triton:TritonOptions", out="repo"),
    "web": Format("a static web folder, checked in headless chromium", "toolkit.export.web:export_web",
                  "toolkit.export.web:WebOptions", out="folder"),
    "tflite": Format("one .tflite file for LiteRT and MediaPipe", "toolkit.export.tflite_pipeline:export_tflite",
                     "toolkit.export.tflite:TfliteOptions"),
}


def _load(spec: str):
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _fields(fmt: Format) -> set:
    return {f.name for f in dataclasses.fields(_load(fmt.options))} - {fmt.out} if fmt.options else set()


def export_as(format: str, run, given: dict):
    """Run `format`'s export with the flags given; one error for an unknown format or another format's flag."""
    if format not in FORMATS:
        known = ", ".join(f"{name} ({fmt.what})" for name, fmt in FORMATS.items())
        raise UserError(f"--format {format!r}: expected {known}")
    fmt = FORMATS[format]
    for name, other in FORMATS.items():
        stray = sorted(set(given) & (_fields(other) - _fields(fmt)))
        if name != format and stray:
            raise UserError(f"--{stray[0].replace('_', '-')} goes with --format {name}")
    flags = {(fmt.out if k == "out" and fmt.out else k): v for k, v in given.items()}
    return _load(fmt.run)(run, **flags)
