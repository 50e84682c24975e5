"""The OpenVINO adapter: the same ONNX file compiled by OpenVINO, read back, behind the engine interface.

What it reports is read back from the compiled model (EXECUTION_DEVICES, INFERENCE_PRECISION_HINT,
PERFORMANCE_HINT, NUM_STREAMS, OPTIMAL_NUMBER_OF_INFER_REQUESTS), and a read-back that differs from the
request is an error, never a silent fallback. run() is thread-safe: it borrows one of `requests` infer
requests, so up to that many threads (serve-local's batch workers under THROUGHPUT) run at once.
Every compile goes through the process-wide Core (openvino_core.shared_core).
"""
from __future__ import annotations

import dataclasses
import os
import queue
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from toolkit.errors import UserError
from toolkit.runtime.engines import openvino_core
from toolkit.runtime.engines.base import Adapter, EngineInfo, EngineOptions, Port, timed
from toolkit.runtime.engines.names import parse_precision
from toolkit.runtime.engines import openvino_bench

__all__ = ["OpenVinoEngine", "ADAPTER", "openvino_device"]

# the toolkit's precision names <-> OpenVINO's INFERENCE_PRECISION_HINT values
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}
_TOOLKIT_PRECISION = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}
_DTYPES = {"f32": "float32", "f16": "float16", "u8": "uint8", "f64": "float64", "i64": "int64", "i32": "int32",
           "bf16": "bfloat16", "i8": "int8"}


def openvino_device(device: str | None) -> str:
    """The toolkit's device words for OpenVINO: auto / cpu -> CPU, gpu[:N] -> GPU[.N], npu -> NPU.

    'auto' is the CPU here (not OpenVINO's AUTO plugin, which picks a device itself): what runs is what
    was asked for. cuda / tensorrt are ONNX Runtime providers, so they are an error on this engine."""
    low = str(device or "auto").strip().lower()
    if low in ("auto", "cpu"):
        return "CPU"
    kind, _, index = low.partition(":") if ":" in low else low.partition(".")
    if kind in ("gpu", "npu") and (not index or index.isdigit()):
        return kind.upper() + (f".{index}" if index else "")
    raise UserError(f"device: {device!r} with engine openvino; expected auto, cpu, gpu[:N] or npu "
                    "(cuda and tensorrt are ONNX Runtime devices: use --engine onnxruntime for them)")


def _port(port) -> Port:
    shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
    kind = port.get_element_type().get_type_name()
    return Port(port.get_any_name(), shape, _DTYPES.get(kind, kind))


def _check_device(core, device: str, precision: str) -> None:
    available = [str(d) for d in core.available_devices]
    if device not in available and device.split(".")[0] not in available:
        raise UserError(f"device {device} with engine openvino: OpenVINO sees {', '.join(available) or 'no device'} "
                        f"here; expected one of those")
    if precision == "bf16":
        openvino_core.require_bf16(device, "precision bf16", "use --precision fp32")


def _config(precision: str, options: EngineOptions) -> dict:
    ov = options.openvino
    config = {"INFERENCE_PRECISION_HINT": _OV_PRECISION[precision], "PERFORMANCE_HINT": ov.hint}
    if options.threads:
        config["INFERENCE_NUM_THREADS"] = int(options.threads)
    if ov.streams:
        config["NUM_STREAMS"] = int(ov.streams)
    if ov.cache_dir:   # per call: the shared Core keeps no cache setting between callers
        config["CACHE_DIR"] = os.fspath(ov.cache_dir)
    return config


class OpenVinoEngine(Adapter):
    """A compiled OpenVINO model (`compiled`) with a pool of infer requests."""

    name = "openvino"
    inference_precisions = ("fp32", "bf16")
    devices = ("auto", "cpu", "gpu", "npu")
    takes_streams = True

    def __init__(self, compiled, path: str, options: EngineOptions, precision: str, load_s: float):
        self.compiled, self.path, self.options, self.load_s = compiled, path, options, load_s
        self.inputs = [_port(p) for p in compiled.inputs]
        self.outputs = [_port(p) for p in compiled.outputs]
        self._ports = {info.name: port for info, port in zip(self.outputs, compiled.outputs)}
        self.info = self._read_back(precision)
        self._idle: queue.Queue = queue.Queue()
        for _ in range(self.info.requests):
            self._idle.put(compiled.create_infer_request())

    def _read_back(self, precision: str) -> EngineInfo:
        openvino = openvino_core.import_openvino()
        get = self.compiled.get_property
        device = ",".join(str(d) for d in get("EXECUTION_DEVICES"))
        got = get("INFERENCE_PRECISION_HINT").get_type_name()
        obtained = _TOOLKIT_PRECISION.get(got, got)
        streams, hint = get("NUM_STREAMS"), str(get("PERFORMANCE_HINT")).rsplit(".", 1)[-1]
        requests, cache_dir = max(1, int(get("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))), self.options.openvino.cache_dir
        return EngineInfo(
            engine=self.name, version=openvino.__version__.split("-")[0], device_asked=str(self.options.device),
            device=device, provider=f"OpenVINO:{device}", providers=(f"OpenVINO:{device}",),
            precision_asked=precision, precision=obtained, threads=int(get("INFERENCE_NUM_THREADS")) or None,
            load_s=self.load_s, runs_on=f"OpenVINO:{device} {obtained}", requests=requests, hint=hint,
            streams=int(getattr(streams, "num", streams)), cache_dir=cache_dir or None,
            session_options={"performance_hint": hint, "inference_precision": obtained,
                             "optimal_infer_requests": requests, "inference_num_threads": self.options.threads,
                             "compile_s": round(self.load_s, 4), "cache_dir": cache_dir or None})

    @classmethod
    def open(cls, path: str, options: EngineOptions) -> "OpenVinoEngine":
        """Compile an ONNX file (device via openvino_device, precision fp32 / bf16, the OpenVINO options)."""
        path = os.fspath(path)
        precision = parse_precision(options.precision, cls.name)
        device = openvino_device(options.device)
        if not os.path.isfile(path):
            raise UserError(f"{path}: no such model file; expected an .onnx file written by toolkit export")
        core = openvino_core.shared_core()
        _check_device(core, device, precision)
        if options.openvino.cache_dir:
            os.makedirs(options.openvino.cache_dir, exist_ok=True)
        try:
            compiled, seconds = timed(lambda: core.compile_model(path, device, _config(precision, options)))
        except Exception as exc:  # OpenVINO raises RuntimeError / its own types with a long C++ trace
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"{path}: OpenVINO cannot compile it ({first[:300]}); expected an ONNX file written "
                            "by toolkit export") from None
        engine = cls(compiled, path, options, precision, seconds)
        check_read_back(engine.info, path, device, precision, options.openvino.hint, options.openvino.streams)
        return engine

    def describe(self) -> EngineInfo:
        return self.info

    @classmethod
    def serving_options(cls, options: EngineOptions) -> EngineOptions:
        """serve-local: one stream with every core (LATENCY hint) unless more streams are asked for.

        Measured (docs/serve.md): under THROUGHPUT a 2-core machine runs two 1-core streams, so a lone
        request runs on half the machine; with one stream the micro-batcher grows its batches under
        load instead, and a batched stream with every core keeps up with the streams. streams > 1: the
        THROUGHPUT hint with that many streams, and serve-local runs a batch worker per infer request."""
        ov = options.openvino
        hint = "THROUGHPUT" if ov.streams and ov.streams > 1 else "LATENCY"
        return dataclasses.replace(options, openvino=dataclasses.replace(ov, hint=hint))

    def run(self, inputs: Mapping[str, Any], outputs: Optional[Sequence[str]] = None) -> list:
        """The named outputs (all when None), as numpy arrays of their own."""
        names = self.output_names(inputs, outputs)
        request = self._idle.get()   # blocks while every request is busy in another thread
        try:
            request.infer({name: np.ascontiguousarray(value) for name, value in inputs.items()})
            # copies: the request reuses its output buffers on the next call
            return [np.array(request.get_tensor(self._ports[n]).data, copy=True) for n in names]
        finally:
            self._idle.put(request)

    # ---- capabilities the benchmark and export ask ----------------------------------------
    @classmethod
    def require(cls, precision: str, device: str = "cpu", where: str = "precision bf16",
                fix: str = "use precision fp32") -> None:
        if precision == "bf16":
            openvino_core.require_bf16(openvino_device(device), where, fix)

    @classmethod
    def gemm_peaks(cls, precision: str) -> list:

        return openvino_bench.gemm_peaks(precision)

    def __repr__(self) -> str:
        i = self.info
        return f"OpenVinoEngine({self.path!r}, device={i.device}, precision={i.precision}, hint={i.hint}, " \
               f"requests={i.requests})"


def check_read_back(info: EngineInfo, path: str, device: str, precision: str, hint: str,
                    streams: Optional[int] = None) -> None:
    """What the compiled model says it runs must be what was asked for: no silent fallback."""
    wrong = []
    if info.device.split(".")[0] != device.split(".")[0]:
        wrong.append(f"device {info.device} (asked for {device})")
    if info.precision != precision:
        wrong.append(f"inference precision {info.precision} (asked for {precision})")
    if info.hint != hint:
        wrong.append(f"performance hint {info.hint} (asked for {hint})")
    if streams and info.streams != streams:
        wrong.append(f"{info.streams} streams (asked for {streams})")
    if wrong:
        raise UserError(f"{path}: OpenVINO compiled it with {'; '.join(wrong)}; refusing to run it on "
                        "something other than what was asked for")


ADAPTER = OpenVinoEngine
