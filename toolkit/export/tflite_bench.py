"""`toolkit benchmark --tflite FILE`: a .tflite export on LiteRT (ai-edge-litert, XNNPACK), timed beside ONNX Runtime.

TfliteBackend (toolkit.runtime.benchmark.Backend) runs the file on tflite.LiteRtSession, as the export's checks do:
XNNPACK (the BUILTIN op resolver), `threads` threads, input 1 x H x W x 3 float32 RGB / 255 (the graph
normalises). The file's batch is 1, so a batch of B is B invokes, each timed call returning the logits.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import time

import numpy as np

from toolkit.errors import UserError, first_line
from toolkit.export.tflite import EXTRA, LiteRtSession
from toolkit.runtime.benchmark.records import BackendRecord


def _invoke_all(session: LiteRtSession, inputs: list) -> None:
    it = session.interpreter
    for x in inputs:
        it.set_tensor(session.input, x)
        it.invoke()
        it.get_tensor(session.output)


def _inputs(pixels: np.ndarray) -> list:
    """uint8 N x H x W x 3 pixels -> N float32 1 x H x W x 3 tensors scaled to [0, 1]."""
    return [np.ascontiguousarray(p[None].astype(np.float32) / np.float32(255.0)) for p in pixels]


class TfliteBackend:
    """One .tflite file on LiteRT's XNNPACK kernels."""

    modes = ("model",)
    may_fail = False

    def __init__(self, path: str, threads: int, precision: str, flops: int):
        t = time.perf_counter()
        try:
            self.session = LiteRtSession(path, "xnnpack", threads)
        except (ValueError, RuntimeError) as exc:  # not a TFLite flatbuffer, or an op LiteRT lacks
            raise UserError(f"--tflite {path}: LiteRT cannot load it ({first_line(exc, 200)}); expected a file "
                            "written by toolkit export --format tflite") from None
        self.session_s = time.perf_counter() - t
        self.threads = threads
        self.record = BackendRecord(
            key=f"litert/cpu/{precision}", backend="litert",
            engine=f"ai-edge-litert {importlib.metadata.version('ai-edge-litert')}", engine_device="XNNPACK",
            inference_precision="fp32", device="cpu", precision=precision,
            provider=f"xnnpack, {threads} thread{'s' if threads != 1 else ''}", providers=["XNNPACK"], file=path,
            file_bytes=os.path.getsize(path), flops_per_image=flops, flops_by_op={}, provider_options={},
            session_options={"num_threads": threads, "op_resolver": "BUILTIN (XNNPACK)",
                             "batch": "the file's batch is 1: a batch of B is B invokes"})

    def prepare(self, batch: int, pixels: np.ndarray, jpegs: dict) -> None:
        self.inputs = _inputs(pixels)

    def run(self, mode: str) -> None:
        _invoke_all(self.session, self.inputs)

    def decode_share(self, mode: str):
        return None

    def cold_start(self, threads: int, sizes: tuple) -> dict:
        """A new interpreter (load + allocate), then the first call per batch size, in this process (no peak RSS)."""
        t = time.perf_counter()
        session = LiteRtSession(self.record.file, "xnnpack", threads)
        out = {"session_s": round(time.perf_counter() - t, 4), "first_inference_s": {}, "peak_rss_mb": {},
               "isolated": False, "how": "a new interpreter in the benchmark process"}
        shape = session.interpreter.get_input_details()[0]["shape"]
        for n in sorted(sizes):
            inputs = _inputs(np.zeros((n, *shape[1:]), np.uint8))
            t = time.perf_counter()
            _invoke_all(session, inputs)
            out["first_inference_s"][str(n)] = round(time.perf_counter() - t, 4)
        return out


def tflite_rows(path: str, precisions: list, threads: int, flops: int) -> tuple[list, list]:
    """([TfliteBackend] of `path` (fp32) and <stem>.int8.tflite beside it, as `precisions` ask), [notes]).
    No ai-edge-litert here: no backends, one note naming the extra."""
    if importlib.util.find_spec("ai_edge_litert") is None:
        return [], [f"no LiteRT rows: ai-edge-litert is not installed ({EXTRA})"]
    files = {"fp32": path, "int8": path[:-len(".tflite")] + ".int8.tflite"}
    there = [p for p in precisions if p in files and os.path.isfile(files[p])]
    notes = [f"no LiteRT {p} row: no {files[p]}" for p in precisions if p in files and p not in there]
    return [TfliteBackend(files[p], threads, p, flops) for p in there], notes
