"""OpenVINO as a second engine for the same ONNX file, behind the few calls the toolkit makes of a session.

    session = open_openvino("exports/flowers.onnx", device="CPU", precision="bf16")
    session.run(["logits"], {"input": batch})      # like onnxruntime.InferenceSession.run
    session.device, session.inference_precision     # read back from the compiled model

`OpenVinoSession` duck-types what Predictor, ONNX evaluation and the benchmark use of onnxruntime's
InferenceSession: get_inputs() / get_outputs() (.name, .shape, .type), run(), get_providers()
(["OpenVINO:CPU"]) and get_modelmeta().custom_metadata_map (the file's metadata_props, through
toolkit.contract). What it reports is read back from the compiled model (EXECUTION_DEVICES,
INFERENCE_PRECISION_HINT, PERFORMANCE_HINT, OPTIMAL_NUMBER_OF_INFER_REQUESTS), and a read-back that
differs from the request is an error, never a silent fallback.

run() is thread-safe: it borrows one of `optimal_requests` infer requests, so up to that many threads
(serve-local's batch workers under the THROUGHPUT hint) run at once, one per OpenVINO stream.
openvino is imported only inside open_openvino: the runtime layer stays importable without it.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from toolkit import contract
from toolkit.errors import UserError
from toolkit.runtime.engines import parse_hint, parse_precision

__all__ = ["open_openvino", "OpenVinoSession", "PortInfo", "INSTALL_HINT", "shared_core"]

INSTALL_HINT = "pip install 'toolkit[openvino]'"
# OpenVINO element type names -> ONNX Runtime's type strings (what Predictor's ORT_TYPES reads)
_ORT_TYPE = {"f32": "tensor(float)", "f16": "tensor(float16)", "u8": "tensor(uint8)", "f64": "tensor(double)",
             "i64": "tensor(int64)", "i32": "tensor(int32)", "bf16": "tensor(bfloat16)"}
# the toolkit's precision names <-> OpenVINO's INFERENCE_PRECISION_HINT values
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}
_TOOLKIT_PRECISION = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}


@dataclass
class PortInfo:
    """One input or output, shaped like onnxruntime's NodeArg."""

    name: str  # the tensor name in the ONNX graph
    shape: list  # ints, with None for a dynamic dimension
    type: str  # onnxruntime's spelling: tensor(float), tensor(uint8), ...


@dataclass
class ModelMeta:
    """What get_modelmeta() returns: only the field the toolkit reads."""

    custom_metadata_map: dict = field(default_factory=dict)  # the file's metadata_props, as stored


def _port(port) -> PortInfo:
    shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
    kind = port.get_element_type().get_type_name()
    return PortInfo(name=port.get_any_name(), shape=shape, type=_ORT_TYPE.get(kind, f"tensor({kind})"))


class OpenVinoSession:
    """A compiled OpenVINO model with onnxruntime's session interface (see the module docstring).

    Attributes read back from the compiled model: `device` ("CPU", "GPU", ...), `inference_precision`
    ("fp32" / "bf16"), `hint` ("LATENCY" / "THROUGHPUT"), `optimal_requests`; and `compile_s` (read +
    compile seconds), `cache_dir` (OpenVINO's model cache, or None), `path`.
    """

    def __init__(self, compiled, path: str, compile_s: float, cache_dir: str | None):
        self.compiled = compiled
        self.path = path
        self.compile_s = compile_s
        self.cache_dir = cache_dir
        self.device = ",".join(str(d) for d in compiled.get_property("EXECUTION_DEVICES"))
        hint_type = compiled.get_property("INFERENCE_PRECISION_HINT")
        self.inference_precision = _TOOLKIT_PRECISION.get(hint_type.get_type_name(), hint_type.get_type_name())
        self.hint = str(compiled.get_property("PERFORMANCE_HINT")).rsplit(".", 1)[-1]
        self.optimal_requests = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._inputs = [_port(p) for p in compiled.inputs]
        self._outputs = [_port(p) for p in compiled.outputs]
        self._output_ports = {info.name: port for info, port in zip(self._outputs, compiled.outputs)}
        self._idle: queue.Queue = queue.Queue()
        for _ in range(self.optimal_requests):
            self._idle.put(compiled.create_infer_request())
        self._meta: ModelMeta | None = None

    def get_inputs(self) -> list[PortInfo]:
        return list(self._inputs)

    def get_outputs(self) -> list[PortInfo]:
        return list(self._outputs)

    def get_providers(self) -> list[str]:
        return [f"OpenVINO:{self.device}"]

    def get_modelmeta(self) -> ModelMeta:
        if self._meta is None:
            self._meta = ModelMeta(contract.raw_props(self.path))
        return self._meta

    def run(self, output_names: list[str] | None, feeds: dict[str, Any]) -> list[np.ndarray]:
        """Like InferenceSession.run: the named outputs (all when None), as numpy arrays of their own."""
        names = list(output_names) if output_names else [o.name for o in self._outputs]
        unknown = [n for n in names if n not in self._output_ports]
        if unknown:
            raise UserError(f"{self.path}: no output {unknown[0]!r}; expected one of {', '.join(self._output_ports)}")
        request = self._idle.get()   # blocks while every request is busy in another thread
        try:
            request.infer({name: np.ascontiguousarray(value) for name, value in feeds.items()})
            # copies: the request reuses its output buffers on the next call
            return [np.array(request.get_tensor(self._output_ports[n]).data, copy=True) for n in names]
        finally:
            self._idle.put(request)

    def __repr__(self) -> str:
        return (f"OpenVinoSession({self.path!r}, device={self.device}, precision={self.inference_precision}, "
                f"hint={self.hint}, requests={self.optimal_requests})")


def _import_openvino():
    try:
        import openvino
    except ImportError as exc:
        raise UserError(f"engine openvino: the openvino package is not installed ({exc}); {INSTALL_HINT}, "
                        "or use the default engine onnxruntime") from None
    return openvino


_core = None   # the process-wide openvino.Core: created once, never released (see shared_core)
_core_lock = threading.Lock()


def shared_core():
    """The one openvino.Core of this process, created on first use and never released.

    OpenVINO's CPU plugin maps an alternate signal stack per Core and, when that Core is released, puts
    the saved stack back only if its own is still current. Two Cores released oldest-first leave the
    thread with an unmapped alternate stack, and the next signal Python handles there (SIGCHLD, Ctrl-C)
    kills the process with SIGSEGV. One Core that lives as long as the process cannot do that, so every
    OpenVINO path of the toolkit (sessions, the BF16 checks, the benchmark's peaks) goes through it; the
    model cache is passed per compile_model call (CACHE_DIR), never set on the shared Core."""
    global _core
    with _core_lock:
        if _core is None:
            _core = _import_openvino().Core()
        return _core


def _capabilities(core, device: str) -> list[str]:
    """OpenVINO's OPTIMIZATION_CAPABILITIES of a device (BF16, FP32, INT8, ...)."""
    return [str(c) for c in core.get_property(device, "OPTIMIZATION_CAPABILITIES")]


def _check_device(core, device: str, precision: str) -> None:
    available = [str(d) for d in core.available_devices]
    if device not in available and device.split(".")[0] not in available:
        raise UserError(f"device {device} with engine openvino: OpenVINO sees {', '.join(available) or 'no device'} "
                        f"here; expected one of those")
    if precision == "bf16" and "BF16" not in _capabilities(core, device):
        raise UserError(f"precision bf16: OpenVINO's {device} has no BF16 support on this machine (it offers "
                        f"{', '.join(_capabilities(core, device))}; BF16 needs AVX-512 BF16 or AMX); use --precision "
                        "fp32")


def _config(precision: str, hint: str, threads: int | None, cache_dir: str | None) -> dict:
    config = {"INFERENCE_PRECISION_HINT": _OV_PRECISION[precision], "PERFORMANCE_HINT": hint}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if cache_dir:   # per call: the shared Core keeps no cache setting between callers
        config["CACHE_DIR"] = os.fspath(cache_dir)
    return config


def _check_read_back(session: OpenVinoSession, device: str, precision: str, hint: str) -> None:
    """What the compiled model says it runs must be what was asked for: no silent fallback."""
    wrong = []
    if session.device.split(".")[0] != device.split(".")[0]:
        wrong.append(f"device {session.device} (asked for {device})")
    if session.inference_precision != precision:
        wrong.append(f"inference precision {session.inference_precision} (asked for {precision})")
    if session.hint != hint:
        wrong.append(f"performance hint {session.hint} (asked for {hint})")
    if wrong:
        raise UserError(f"{session.path}: OpenVINO compiled it with {'; '.join(wrong)}; refusing to run it on "
                        "something other than what was asked for")


def open_openvino(path: str | os.PathLike, device: str = "CPU", precision: str = "fp32", threads: int | None = None,
                  hint: str = "LATENCY", cache_dir: str | None = None) -> OpenVinoSession:
    """Compile an ONNX file with OpenVINO. device: CPU, GPU[.N] or NPU (engines.openvino_device maps the
    toolkit's words); precision: fp32 or bf16; hint: LATENCY or THROUGHPUT; threads: INFERENCE_NUM_THREADS;
    cache_dir: OpenVINO's model cache (a second compile of the same file loads the cached blob)."""
    path = os.fspath(path)
    precision = parse_precision(precision, "openvino")
    hint = parse_hint(hint)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise UserError(f"threads: {threads!r}; expected a positive whole number (or leave it unset)")
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such model file; expected an .onnx file written by toolkit export")
    core = shared_core()
    _check_device(core, device, precision)
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
    start = time.perf_counter()
    try:
        compiled = core.compile_model(path, device, _config(precision, hint, threads, cache_dir))
    except Exception as exc:  # OpenVINO raises RuntimeError / its own types with a long C++ trace
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{path}: OpenVINO cannot compile it ({first[:300]}); expected an ONNX file written by "
                        "toolkit export") from None
    session = OpenVinoSession(compiled, path, time.perf_counter() - start, cache_dir or None)
    _check_read_back(session, device, precision, hint)
    return session
