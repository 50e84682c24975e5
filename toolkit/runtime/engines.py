"""Which engine runs an exported ONNX file, and at which inference precision: the names and their checks.

    engine       onnxruntime (the default) | openvino (the `openvino` package: pip install 'toolkit[openvino]')
    precision    fp32 | bf16: the precision the engine computes floating-point layers in. Only OpenVINO takes
                 bf16 (its INFERENCE_PRECISION_HINT); None means fp32 on both engines, so a file runs as it
                 was gated at export unless bf16 is asked for by name (OpenVINO's own default on a CPU with
                 BF16 is bf16: the toolkit does not inherit it).
    hint         LATENCY | THROUGHPUT: OpenVINO's PERFORMANCE_HINT (one stream, or several requests in flight)

Standard library only: the CLI and the benchmark check these before anything heavy is imported.
"""
from __future__ import annotations

from toolkit.errors import UserError

__all__ = ["ENGINES", "DEFAULT_ENGINE", "INFERENCE_PRECISIONS", "OPENVINO_HINTS", "OPENVINO_DEVICES",
           "parse_engine", "parse_engines", "parse_precision", "parse_hint", "openvino_device"]

ENGINES = ("onnxruntime", "openvino")
DEFAULT_ENGINE = "onnxruntime"
INFERENCE_PRECISIONS = ("fp32", "bf16")
OPENVINO_HINTS = ("LATENCY", "THROUGHPUT")
OPENVINO_DEVICES = ("CPU", "GPU", "NPU")
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


def parse_precision(value: str | None, engine: str = DEFAULT_ENGINE) -> str:
    """The inference precision for `engine`: None -> fp32; bf16 only on OpenVINO."""
    engine = parse_engine(engine)
    if value is None:
        return "fp32"
    name = str(value).strip().lower()
    name = _PRECISION_ALIASES.get(name, name)
    if name not in INFERENCE_PRECISIONS:
        raise UserError(f"precision: {value!r}; expected one of {', '.join(INFERENCE_PRECISIONS)} (an INT8 or "
                        "FP16 twin is chosen by its file, e.g. exports/<name>.int8.onnx)")
    if name != "fp32" and engine != "openvino":
        raise UserError(f"precision: {name} needs engine openvino; onnxruntime runs a file in the precision it "
                        "was exported in: pass --engine openvino, or leave --precision unset")
    return name


def parse_hint(value: str | None) -> str:
    """OpenVINO's performance hint: None -> LATENCY."""
    name = "LATENCY" if value is None else str(value).strip().upper()
    if name not in OPENVINO_HINTS:
        raise UserError(f"hint: {value!r}; expected one of {', '.join(OPENVINO_HINTS)}")
    return name


def openvino_device(device: str | None) -> str:
    """The toolkit's device words for OpenVINO: auto / cpu -> CPU, gpu[:N] -> GPU[.N], npu -> NPU.

    'auto' is the CPU here (not OpenVINO's AUTO plugin, which picks a device itself): what runs is what
    was asked for. cuda / tensorrt are ONNX Runtime providers, so they are an error on this engine."""
    dev = str(device or "auto").strip()
    low = dev.lower()
    if low in ("auto", "cpu"):
        return "CPU"
    kind, _, index = low.partition(":") if ":" in low else low.partition(".")
    if kind in ("gpu", "npu") and (not index or index.isdigit()):
        return kind.upper() + (f".{index}" if index else "")
    raise UserError(f"device: {device!r} with engine openvino; expected auto, cpu, gpu[:N] or npu "
                    "(cuda and tensorrt are ONNX Runtime devices: use --engine onnxruntime for them)")
