"""`toolkit evaluate MODEL.onnx --engine openvino`: the accuracy change against ONNX Runtime FP32, and its gates.

The reference is the FP32 file on ONNX Runtime's CPU provider, run on the same pixels: the file itself,
or for a twin (<stem>.int8.onnx, <stem>.fp16.onnx) its FP32 sibling <stem>.onnx when it is there.
  - bf16 (OpenVINO's bf16 inference precision): the BF16 gate of toolkit.runtime.bf16_gate.
  - an INT8 twin: its top-1 drop against the FP32 file must stay within the export's INT8 budget (read
    from <stem>.report.json; the export default, 1 point, when there is no report).
  - fp32: measured and reported, no gate (the engines differ by float rounding only).
A failed gate is a UserError carrying the numbers. Light module: numpy + onnxruntime.
"""
from __future__ import annotations

import json
import os

import numpy as np

from toolkit.artifacts import base_of
from toolkit.errors import UserError
from toolkit.runtime.bf16_gate import bf16_line, compare_centred, judge_bf16
from toolkit.runtime.engines import reference_engine

__all__ = ["fp32_reference_path", "versus_onnxruntime", "versus_line", "DEFAULT_INT8_BUDGET"]

DEFAULT_INT8_BUDGET = 1.0  # top-1 points; toolkit export's --int8-budget default


def fp32_reference_path(path: str) -> str:
    """The FP32 file a twin was made from, when it sits beside it; else the file itself."""
    sibling = base_of(path)[0]
    return sibling if sibling != path and os.path.isfile(sibling) else path


def _int8_budget(fp32_path: str) -> tuple[float, str]:
    """(budget in top-1 points, where it came from)."""
    report = fp32_path[:-len(".onnx")] + ".report.json"
    try:
        with open(report, encoding="utf-8") as f:
            budget = float(json.load(f)["int8"]["budget"])
        return budget, report
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_INT8_BUDGET, "the export default"


def versus_onnxruntime(model_path: str, precision: str, inference_precision: str, logits: np.ndarray,
                       targets: np.ndarray, run_reference) -> dict:
    """Compare OpenVINO's `logits` with the FP32 reference on ONNX Runtime; raise when a gate fails.

    run_reference(path) -> the reference logits on the same pixels, in the same order. targets are the
    model's label indices."""
    ref_path = fp32_reference_path(model_path)
    ref = np.asarray(run_reference(ref_path), np.float32)
    top1 = float((logits.argmax(1) == targets).mean() * 100)
    ref_top1 = float((ref.argmax(1) == targets).mean() * 100)
    # 6 places: rounding to 3 here and to 2 when printed said 20.23% where the report said 20.22%
    out = {"reference": {"file": ref_path, "engine": reference_engine(), "precision": "fp32", "top1": round(ref_top1, 6)},
           "top1": round(top1, 6), "top1_change": round(top1 - ref_top1, 6),
           "top1_agreement": float((logits.argmax(1) == ref.argmax(1)).mean()),
           "max_abs_logit_diff": float(np.abs(logits - ref).max()) if len(ref) else 0.0}
    if inference_precision == "bf16":
        gate = compare_centred(ref, logits)
        out["bf16_gate"] = gate
        judge_bf16(gate, model_path, f"ONNX Runtime FP32 ({ref_path})")
        out["gate"] = f"bf16: {bf16_line(gate)}"
    elif precision == "int8" and ref_path != model_path:
        budget, source = _int8_budget(ref_path)
        drop = ref_top1 - top1
        out["int8_gate"] = {"budget": budget, "budget_from": source, "top1_drop": round(drop, 3)}
        if drop > budget:
            raise UserError(f"int8 gate failed for {model_path} on OpenVINO: top-1 {top1:.2f}% against "
                            f"{ref_top1:.2f}% for {ref_path} on ONNX Runtime, a drop of {drop:.2f} points over "
                            f"the budget of {budget:g} ({source})")
        out["gate"] = f"int8: top-1 drop {drop:.2f} points (budget {budget:g}, {source})"
    return out


def versus_line(report: dict) -> str | None:
    """One line for `toolkit evaluate` about the engine comparison, or None when there was none."""
    vs = report.get("vs_onnxruntime")
    if not vs:
        return None
    ref = vs["reference"]
    line = (f"{report['provider']} {report['inference_precision']}: top-1 {vs['top1']:.2f}% vs {ref['top1']:.2f}% "
            f"on ONNX Runtime fp32 ({os.path.basename(ref['file'])}): change {vs['top1_change']:+.2f} points, "
            f"top-1 agreement {vs['top1_agreement'] * 100:.1f}%, max |logit diff| {vs['max_abs_logit_diff']:.3g}")
    return line + (f"; gate passed: {vs['gate']}" if vs.get("gate") else "")
