"""The engine interface: one protocol, one adapter per engine, one options object.

    from toolkit.runtime.engines import EngineOptions, OpenVinoOptions, open_engine
    engine = open_engine("exports/flowers.onnx", "openvino",
                         EngineOptions(device="cpu", threads=4, precision="bf16",
                                       openvino=OpenVinoOptions(hint="THROUGHPUT", cache_dir="ov-cache")))
    logits = engine.run({"input": batch}, ["logits"])[0]
    engine.describe()   # EngineInfo: engine, device / precision asked vs obtained, threads, hint, load_s, version

    names.py               the names table (ENGINES, aliases, parse_engine / parse_precision, adapter_for)
    base.py                Engine (the protocol), Adapter (shared parts, capabilities), EngineInfo, EngineOptions
    onnxruntime_adapter.py ONNX Runtime (provider truth in toolkit.runtime.session)
    openvino_adapter.py    OpenVINO (openvino_core: the process-wide Core; openvino_bench: its GEMM peaks)

Importing this package imports no engine library and no numpy: adapters load on first use.
"""
from __future__ import annotations

import os

from toolkit.runtime.engines.base import Adapter, Engine, EngineInfo, EngineOptions, OpenVinoOptions, Port, parse_hint
from toolkit.runtime.engines.names import (DEFAULT_ENGINE, ENGINES, INFERENCE_PRECISIONS, adapter_for, parse_engine,
                                           engines_with, parse_engines, parse_precision,
                                           reference_engine)

__all__ = ["Engine", "Adapter", "EngineInfo", "EngineOptions", "OpenVinoOptions", "Port", "open_engine",
           "adapter_for", "reference_engine", "engines_with", "ENGINES", "DEFAULT_ENGINE", "INFERENCE_PRECISIONS",
           "parse_engine", "parse_engines", "parse_precision", "parse_hint"]


def open_engine(path: str | os.PathLike, engine: str | None = None, options: EngineOptions | None = None):
    """Open an ONNX file on `engine` (a name or alias; None: onnxruntime) with `options` -> an Engine."""
    return adapter_for(engine).open(os.fspath(path), options or EngineOptions())
