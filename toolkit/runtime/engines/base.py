"""The engine interface: what every adapter answers, the one options object, and the typed read-back.

    engine = open_engine("exports/flowers.onnx", "openvino", EngineOptions(device="cpu", precision="bf16"))
    engine.inputs[0]                          # Port(name='input', shape=(None, 3, 224, 224), dtype='float32')
    engine.run({"input": batch}, ["logits"])  # numpy in, numpy out
    engine.describe()                         # EngineInfo: device and precision asked vs obtained, load_s, ...

An adapter (one per engine: onnxruntime_adapter, openvino_adapter; later onnxruntime-web, TFLite) is a
subclass of `Adapter` whose class attributes say what it can do, so no caller compares engine names.
Standard library only.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Optional, Protocol, Sequence, runtime_checkable

from toolkit.errors import UserError
from toolkit import contract

__all__ = ["Port", "EngineInfo", "OpenVinoOptions", "EngineOptions", "Engine", "Adapter", "OPENVINO_HINTS"]

OPENVINO_HINTS = ("LATENCY", "THROUGHPUT")


# The end of a provider error that `allow_fallback` would have avoided; commands without --allow-fallback
# (benchmark, evaluate) cut it with without_fallback_hint and say what they offer instead.
FALLBACK_HINT = ", or pass allow_fallback=True / --allow-fallback to run on {}"


def without_fallback_hint(message: str) -> str:
    """A provider error with FALLBACK_HINT cut off its end."""
    return message.partition(FALLBACK_HINT.split("{}")[0])[0]


@dataclass(frozen=True)
class Port:
    """One input or output of the loaded model."""

    name: str  # the tensor name in the graph
    shape: tuple  # ints, with None for a dynamic dimension
    dtype: str  # numpy's name: float32, float16, uint8, ...


@dataclass(frozen=True)
class EngineInfo:
    """What an engine runs, read back from it after loading (never assumed from what was asked)."""

    engine: str  # the adapter's name: onnxruntime, openvino
    version: str  # the engine library's version
    device_asked: str  # the toolkit's device word: auto, cpu, cuda:0, gpu, npu
    device: str  # the device that runs: CPU, CUDA, TensorRT (ORT's provider) or OpenVINO's EXECUTION_DEVICES
    provider: str  # the same in the engine's words: CPUExecutionProvider, OpenVINO:CPU
    providers: tuple  # every provider the session holds, in order
    precision_asked: str  # the inference precision asked for: fp32 or bf16
    precision: str  # what floating-point layers compute in: the file's own on ORT, the read-back hint on OpenVINO
    threads: Optional[int]  # intra-op / inference threads read back (None: the engine's default)
    load_s: float  # session creation, or OpenVINO's read + compile, in seconds
    runs_on: str  # one phrase for a log line: "CPUExecutionProvider", "OpenVINO:CPU bf16"
    requests: int = 1  # run() calls the engine serves at once (OpenVINO: OPTIMAL_NUMBER_OF_INFER_REQUESTS)
    hint: Optional[str] = None  # OpenVINO's PERFORMANCE_HINT, read back
    streams: Optional[int] = None  # OpenVINO's NUM_STREAMS, read back
    cache_dir: Optional[str] = None  # OpenVINO's model cache, when one was given
    session_options: dict = field(default_factory=dict)  # the engine's own settings, read back (for records)
    provider_options: dict = field(default_factory=dict)  # ORT's execution-provider options, read back

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def settings(self) -> dict:
        """How it runs, read back: hint, streams, threads and requests (the ones this engine has)."""
        got = {"hint": self.hint, "streams": self.streams, "threads": self.threads, "requests": self.requests}
        return {key: value for key, value in got.items() if value is not None}

    def settings_line(self) -> str:
        """The read-back settings for a log line: "LATENCY hint, 1 stream, 2 threads, 1 request"."""
        words = [f"{self.hint} hint"] if self.hint else []
        if self.streams is not None:
            words.append(f"{self.streams} stream{'s' * (self.streams != 1)}")
        words.append(f"{self.threads} threads" if self.threads else "the engine's default threads")
        words.append(f"{self.requests} request{'s' * (self.requests != 1)} at once")
        return ", ".join(words)


def parse_hint(value: str | None) -> str:
    """OpenVINO's performance hint: None -> LATENCY."""
    name = "LATENCY" if value is None else str(value).strip().upper()
    if name not in OPENVINO_HINTS:
        raise UserError(f"hint: {value!r}; expected one of {', '.join(OPENVINO_HINTS)}")
    return name


def _check_count(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise UserError(f"{name}: {value!r}; expected a positive whole number (or leave it unset)")


@dataclass(frozen=True)
class OpenVinoOptions:
    """OpenVINO's own settings; every other engine ignores them."""

    hint: Optional[str] = None  # PERFORMANCE_HINT: LATENCY (None) or THROUGHPUT (several requests in flight)
    streams: Optional[int] = None  # NUM_STREAMS; None: what the hint picks
    cache_dir: Optional[str] = None  # CACHE_DIR: a second compile of the same file loads the cached blob

    def __post_init__(self):
        object.__setattr__(self, "hint", parse_hint(self.hint))
        _check_count("streams", self.streams)
        if self.cache_dir is not None and os.path.exists(self.cache_dir) and not os.path.isdir(self.cache_dir):
            raise UserError(f"cache_dir: {self.cache_dir!r} is a file; expected a folder for OpenVINO's compiled "
                            "models (made if missing)")


@dataclass(frozen=True)
class EngineOptions:
    """Everything an engine is opened with, for any engine: one object, passed through unchanged."""

    device: str = "auto"  # auto, cpu, cuda[:N], tensorrt[:N] (ORT) / gpu[:N], npu (OpenVINO)
    threads: Optional[int] = None  # intra-op threads; None: the engine's default
    precision: Optional[str] = None  # inference precision: fp32 (None) or bf16 (engines that take it)
    allow_fallback: bool = False  # ORT: run on the CPU, with a warning, when CUDA / TensorRT can't load
    openvino: OpenVinoOptions = OpenVinoOptions()

    def __post_init__(self):
        _check_count("threads", self.threads)
        if not isinstance(self.openvino, OpenVinoOptions):   # a dict was an AttributeError when OpenVINO opened
            raise UserError(f"openvino: a {type(self.openvino).__name__}; expected OpenVinoOptions(hint=..., "
                            "streams=..., cache_dir=...)")
        if not isinstance(self.allow_fallback, bool):   # the string 'false' is true
            raise UserError(f"allow_fallback: {self.allow_fallback!r}; expected True or False")


@runtime_checkable
class Engine(Protocol):
    """An opened model on one engine: numpy arrays in, numpy arrays out."""

    name: ClassVar[str]
    inputs: list  # [Port]
    outputs: list  # [Port]

    @classmethod
    def open(cls, path: str, options: EngineOptions) -> "Engine": ...

    def run(self, inputs: Mapping[str, Any], outputs: Optional[Sequence[str]] = None) -> list: ...

    def describe(self) -> EngineInfo: ...

    def metadata(self) -> dict: ...  # the file's metadata_props, as stored (toolkit.contract reads them)


class Adapter:
    """What adapters share, and the capabilities callers ask instead of comparing engine names."""

    name: ClassVar[str] = ""
    inference_precisions: ClassVar[tuple] = ("fp32",)  # what `EngineOptions.precision` may name here
    reference: ClassVar[bool] = False  # the engine the export gates ran on: others are compared with it
    devices: ClassVar[tuple] = ("cpu",)  # the device kinds (auto, cpu, cuda, ...) this adapter can open
    takes_streams: ClassVar[bool] = False  # EngineOptions.openvino.streams means something here (--streams)
    inputs: list
    outputs: list
    path: str

    def metadata(self) -> dict:
        """The file's metadata_props as stored (toolkit.contract reads them)."""

        return contract.raw_props(self.path)

    def output_names(self, inputs: Mapping[str, Any], outputs: Optional[Sequence[str]] = None) -> list[str]:
        """The outputs run() returns, in order (all when None); one UserError, the same on every engine, for
        an input or output name the model does not have, or a missing input."""
        expected, known = self._port_names   # every run() passes here: the names read once
        given = list(inputs)
        if sorted(given) != sorted(expected):
            wrong = [n for n in given if n not in expected]
            raise UserError(f"{self.path}: given inputs {given}; expected {expected}"
                            + (f" (no input {wrong[0]!r})" if wrong else ""))
        names = list(outputs) if outputs else list(known)
        if unknown := [n for n in names if n not in known]:
            raise UserError(f"{self.path}: no output {unknown[0]!r}; expected one of {', '.join(known)}")
        return names

    @functools.cached_property
    def _port_names(self) -> tuple[list, list]:
        return [p.name for p in self.inputs], [p.name for p in self.outputs]

    def prepared(self, inputs: Mapping[str, Any], outputs: Optional[Sequence[str]] = None) -> Callable[[], Any]:
        """A call that runs these inputs again and again (for timing): inputs already where the engine
        wants them. The default just calls run."""
        return lambda: self.run(inputs, outputs)

    @classmethod
    def serving_options(cls, options: EngineOptions) -> EngineOptions:
        """The options serve-local opens this engine with, from the ones it was given (default: as given)."""
        return options

    @property
    def optimal_requests(self) -> int:
        """How many run() calls this engine serves at once (serve-local runs that many batch workers)."""
        return self.describe().requests

    # ---- capabilities the benchmark asks --------------------------------------------------
    @classmethod
    def supports_device(cls, device: str) -> bool:
        return str(device).split(":")[0].lower() in cls.devices

    @classmethod
    def gemm_peaks(cls, precision: str) -> list:
        """[(label, measure(n, threads, time_best) -> GFLOP/s)]: this engine's own GEMM peak candidates."""
        return []

    @classmethod
    def require(cls, precision: str, device: str = "cpu", where: str = "precision", fix: str = "") -> None:
        """A UserError starting with `where` (ending with `fix`), before any slow work, when this machine
        can't run `precision` on `device`. Nothing to check by default: parse_precision has checked the name."""


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(fn(), its seconds)."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start
