"""The formats of `toolkit export --format`: each one an export function and the options dataclass whose
flags belong to it alone. A new format is one more row here (and its dataclass in the CLI's @options)."""
from __future__ import annotations

import dataclasses
import importlib

from toolkit.errors import UserError

# format -> (export function, its own options dataclass or None, what it writes)
FORMATS = {
    "onnx": ("toolkit.export.pipeline:export_run", None, "one file and its twins"),
    "triton": ("toolkit.export.pipeline:export_triton", "toolkit.export.triton:TritonOptions",
               "a Triton model repository"),
    "tflite": ("toolkit.export.tflite_pipeline:export_tflite", "toolkit.export.tflite:TfliteOptions",
               "one .tflite file for LiteRT and MediaPipe"),
}
RENAMED = {"triton": {"out": "repo"}}  # a shared flag that means the format's own option


def _load(source: str):
    module, _, name = source.partition(":")
    return getattr(importlib.import_module(module), name)


def _own_fields(fmt: str) -> set:
    source = FORMATS[fmt][1]
    return {f.name for f in dataclasses.fields(_load(source))} if source else set()


def export_as(fmt: str, run, given: dict) -> dict:
    """Check that every flag belongs to `fmt` (or to every format), then export."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: expected " + ", ".join(f"{k} ({v[2]})" for k, v in FORMATS.items()))
    for other in FORMATS:
        stray = sorted((set(given) & _own_fields(other)) - _own_fields(fmt))
        if stray:
            raise UserError(f"--{stray[0].replace('_', '-')} goes with --format {other}")
    renamed = RENAMED.get(fmt, {})
    return _load(FORMATS[fmt][0])(run, **{renamed.get(k, k): v for k, v in given.items()})
