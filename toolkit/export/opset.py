"""Opset and IR version: what the installed ONNX Runtime can load, checked before any export work."""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Optional

from toolkit.errors import UserError

MIN_OPSET = 11  # ONNX Runtime's quantizer needs 10+, nothing older is worth supporting
INT8_MIN_OPSET = 13  # per-channel QDQ (DequantizeLinear's axis attribute)


@lru_cache(maxsize=None)
def ort_max_opset() -> int:
    """The newest default-domain opset the installed ONNX Runtime loads.

    onnxruntime has no public API for this, and its support lags onnx's own opset number, so we
    ask the runtime itself: build a one-node model per opset and try to open a session on it
    (milliseconds each). ORT refuses an opset it doesn't implement when the model is loaded."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    best = 0
    options = ort.SessionOptions()
    options.log_severity_level = 4
    for opset in range(MIN_OPSET, onnx.defs.onnx_opset_version() + 4):
        graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8  # every ORT since 1.10 reads IR 8
        try:
            ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception:
            break
        best = opset
    return best


def _integer(value: Any, flag: str, example: int) -> int:
    """An option that must be a whole number (fire may hand over 17, 17.0 or '17')."""
    try:
        number = int(value)
        if isinstance(value, bool) or number != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise UserError(f"{flag} {value!r}: expected an integer such as {example}") from None
    return number


def check_opset(opset: Any, int8: bool = False) -> int:
    """`opset` as an int the installed ONNX Runtime loads (and, with int8, per-channel QDQ needs)."""
    import onnxruntime as ort

    value = _integer(opset, "--opset", 17)
    top = ort_max_opset()
    if value > top:
        raise UserError(f"--opset {value}: too new for the installed ONNX Runtime {ort.__version__}, which loads "
                        f"opsets up to {top}; expected {MIN_OPSET}..{top} (the default 17 loads in ONNX Runtime "
                        "1.13 and later)")
    if value < MIN_OPSET:
        raise UserError(f"--opset {value}: too old; expected {MIN_OPSET}..{top}")
    if int8 and value < INT8_MIN_OPSET:
        raise UserError(f"--opset {value} with --int8: per-channel INT8 (QDQ) needs opset {INT8_MIN_OPSET} or "
                        f"newer; expected {INT8_MIN_OPSET}..{top}")
    return value


def check_ir_version(ir_version: Any, opset: int) -> Optional[int]:
    """None (keep the exporter's) or an IR version that can carry `opset`."""
    if ir_version is None:
        return None
    import onnx
    from onnx import helper

    value = _integer(ir_version, "--ir-version", 8)
    low = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    if not low <= value <= onnx.IR_VERSION:
        raise UserError(f"--ir-version {value}: opset {opset} needs IR version {low} or newer, and the installed "
                        f"onnx {onnx.__version__} writes up to {onnx.IR_VERSION}; expected {low}..{onnx.IR_VERSION} "
                        "(lower --opset for an older IR version)")
    return value
