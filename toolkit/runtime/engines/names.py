"""The engines by name: the names table, the spellings users type, and the adapter behind each name.

    engine       onnxruntime (the default) | openvino (the `openvino` package: pip install 'toolkit[openvino]')
    precision    fp32 | bf16: the precision the engine computes floating-point layers in. Which engine takes
                 which is the adapter's `inference_precisions` (only OpenVINO takes bf16); None means fp32
                 everywhere, so a file runs as it was gated at export unless bf16 is asked for by name.

This is the one place that maps a name to an adapter; everything else asks the adapter (`adapter_for`).
Standard library only: the CLI and the benchmark check names before anything heavy is imported (an
adapter's module is imported only when its capabilities are asked for).
"""
from __future__ import annotations

import importlib

from toolkit.errors import UserError

__all__ = ["ENGINES", "DEFAULT_ENGINE", "INFERENCE_PRECISIONS", "adapter_for", "reference_engine", "engines_with",
           "parse_engine", "parse_engines", "parse_precision"]

# name -> the module whose ADAPTER class runs it (a future engine, e.g. TFLite, is one more row)
_ADAPTER_MODULES = {"onnxruntime": "toolkit.runtime.engines.onnxruntime_adapter",
                    "openvino": "toolkit.runtime.engines.openvino_adapter"}
ENGINES = tuple(_ADAPTER_MODULES)
DEFAULT_ENGINE = ENGINES[0]
INFERENCE_PRECISIONS = ("fp32", "bf16")
# Spellings users type for an engine -> its name.
_ENGINE_ALIASES = {"ort": "onnxruntime", "onnx-runtime": "onnxruntime", "ov": "openvino"}
_PRECISION_ALIASES = {"f32": "fp32", "float32": "fp32", "bfloat16": "bf16"}


def parse_engine(value: str | None) -> str:
    """'onnxruntime' | 'openvino' (also 'ort', 'ov'; None -> onnxruntime), else a UserError naming the choices."""
    if value is None:
        return DEFAULT_ENGINE
    name = str(value).strip().lower()
    name = _ENGINE_ALIASES.get(name, name)
    if name not in ENGINES:
        raise UserError(f"engine: {value!r}; expected one of {', '.join(ENGINES)}")
    return name


def parse_engines(value) -> list[str]:
    """'onnxruntime,openvino' (or a list) -> the engine names in order, without duplicates."""
    items = value if isinstance(value, (list, tuple)) else str(value or DEFAULT_ENGINE).split(",")
    out: list[str] = []
    for item in items:
        if str(item).strip():
            name = parse_engine(item)
            if name not in out:
                out.append(name)
    if not out:
        raise UserError(f"engine: {value!r}; expected one or more of {', '.join(ENGINES)}, comma-separated")
    return out


def adapter_for(engine: str | None):
    """The adapter class of an engine name (or alias): its capabilities and its `open`."""
    return importlib.import_module(_ADAPTER_MODULES[parse_engine(engine)]).ADAPTER


def reference_engine() -> str:
    """The engine the export gates run on (its adapter's `reference`): other engines are compared with it."""
    return next(name for name in ENGINES if adapter_for(name).reference)


def engines_with(precision: str) -> list[str]:
    """The engines whose adapter computes in `precision` (fp32: all; bf16: OpenVINO)."""
    return [name for name in ENGINES if precision in adapter_for(name).inference_precisions]


def parse_precision(value: str | None, engine: str = DEFAULT_ENGINE) -> str:
    """The inference precision for `engine`: None -> fp32; else one the engine's adapter takes."""
    engine = parse_engine(engine)
    if value is None:
        return "fp32"
    name = str(value).strip().lower()
    name = _PRECISION_ALIASES.get(name, name)
    if name not in INFERENCE_PRECISIONS:
        raise UserError(f"precision: {value!r}; expected one of {', '.join(INFERENCE_PRECISIONS)} (an INT8 or "
                        "FP16 twin is chosen by its file, e.g. exports/<name>.int8.onnx)")
    if name not in adapter_for(engine).inference_precisions:
        able = engines_with(name)
        raise UserError(f"precision: {name} needs engine {' or '.join(able)}; {engine} runs a file in the "
                        f"precision it was exported in: pass --engine {able[0]}, or leave --precision unset")
    return name
