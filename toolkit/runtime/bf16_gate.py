"""The BF16 gate: logits computed in bfloat16 (OpenVINO's bf16 inference precision) against an FP32 reference.

One gate, used at export (`toolkit export --bf16-check`, against PyTorch) and by `toolkit evaluate
--engine openvino --precision bf16` (against the same file on ONNX Runtime), so the two can't disagree.

bfloat16 keeps 8 bits of mantissa: a value near 1000 is stored to the nearest 4. What decides a class is
the difference between logits, not their level (softmax and top-1 ignore a common offset), so the gate
compares logits centred per row (each row minus its mean) against a tolerance relative to the spread of
the reference's centred logits: a model whose logits ride on a large common offset, with class
differences below bf16's resolution there, fails it, where a tolerance relative to |logit| would pass it.
Like the FP16 twin's gate: a top-1 flip between two classes closer than the tolerance is a tie, not a
disagreement, and at least 99% of the inputs must agree. numpy only.
"""
from __future__ import annotations

import numpy as np

from toolkit.errors import UserError

__all__ = ["BF16_ATOL_REL", "BF16_MIN_AGREEMENT", "compare_centred", "judge_bf16", "bf16_line"]

BF16_ATOL_REL = 5e-2  # allowed |centred logit| difference, as a fraction of the reference's largest |centred logit|
BF16_MIN_AGREEMENT = 0.99  # top-1 agreement needed (ties excluded), as for the FP16 twin


def compare_centred(ref: np.ndarray, got: np.ndarray, atol_rel: float = BF16_ATOL_REL) -> dict:
    """Closeness and top-1 agreement of `got` against `ref` (both N x classes), on per-row centred logits."""
    ref = np.asarray(ref, np.float64)
    got = np.asarray(got, np.float64)
    ref_c = ref - ref.mean(axis=1, keepdims=True)
    got_c = got - got.mean(axis=1, keepdims=True)
    n = len(ref)
    scale = float(np.abs(ref_c).max()) if ref_c.size else 0.0
    atol = atol_rel * max(scale, 1e-6)
    diff = np.abs(got_c - ref_c)
    a_ref, a_got = ref.argmax(1), got.argmax(1)
    rows = np.arange(n)
    tie = (a_ref != a_got) & (ref[rows, a_ref] - ref[rows, a_got] <= 2 * atol)
    mismatches = int(((a_ref != a_got) & ~tie).sum())
    max_diff = float(diff.max()) if diff.size else 0.0
    return {"n": n, "max_abs_diff_centred": max_diff, "max_abs_diff": float(np.abs(got - ref).max()) if n else 0.0,
            "atol": atol, "atol_rel": atol_rel, "logit_spread": scale, "close": bool(max_diff <= atol),
            "top1_agreement": (n - mismatches) / n if n else 1.0, "ties": int(tie.sum()), "mismatches": mismatches,
            "min_top1_agreement": BF16_MIN_AGREEMENT}


def bf16_line(result: dict) -> str:
    return (f"centred logits within {result['max_abs_diff_centred']:.3g} (allowed {result['atol']:.3g}), top-1 "
            f"agreement {result['top1_agreement'] * 100:.1f}% over {result['n']} inputs")


def judge_bf16(result: dict, where: str, against: str) -> None:
    """A UserError naming the file, the reference and every failed criterion; nothing when it passes."""
    problems = []
    if not result["close"]:
        problems.append(f"centred logits differ by up to {result['max_abs_diff_centred']:.3g} (allowed "
                        f"{result['atol']:.3g}, {result['atol_rel']:g} of the logit spread {result['logit_spread']:.3g})")
    if result["top1_agreement"] < BF16_MIN_AGREEMENT:
        problems.append(f"top-1 agreement {result['top1_agreement'] * 100:.1f}% (expected at least "
                        f"{BF16_MIN_AGREEMENT * 100:g}%, {result['mismatches']} of {result['n']} inputs differ)")
    if problems:
        raise UserError(f"bf16 gate failed for {where} (OpenVINO bf16 vs {against} on {result['n']} inputs): "
                        f"{'; '.join(problems)}; this model is not safe to run in bf16 (use precision fp32)")
