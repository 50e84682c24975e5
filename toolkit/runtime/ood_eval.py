"""The "unknown" answer measured: a folder of out-of-distribution photos (`--ood DIR` on export and evaluate)
loaded as pixels, and the calibration fields `toolkit evaluate` prints (ECE, NLL, accept rate; with a
folder also AUROC, FPR at 95% TPR and its rejection rate). Torch-free."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np

from toolkit import calibration
from toolkit.errors import UserError
from toolkit.preprocess import ImageError, Preprocess
from toolkit.runtime.image_files import collect_images

__all__ = ["EvaluateOptions", "ood_pixels", "calibration_fields", "calibration_lines"]


@dataclass
class EvaluateOptions:
    """What `toolkit evaluate` was asked for (its command-line options)."""

    recipe: str | None = None  # the recipe of the data to evaluate on; None: the one inside the model or run
    split: str = "val"  # train, val or test
    batch_size: int = 32  # images per inference call
    device: str = "auto"  # auto, cpu, cuda[:N]
    json: bool = False  # print the report as JSON instead of text
    engine: str = "onnxruntime"  # an .onnx file on onnxruntime or openvino (compared with ONNX Runtime FP32)
    precision: str | None = None  # fp32 or bf16 (openvino only); None: fp32
    ood: str | None = None  # a folder of photos that are none of the classes: AUROC, FPR at 95% TPR, rejection rate


def ood_pixels(folder, preprocess: Preprocess, max_pixels: int | None = None) -> np.ndarray:
    """uint8 N x H x W x 3 pixels of every readable image under `folder` (recursive); one UserError for a
    missing, empty or wholly unreadable folder, and one line on stderr for the images skipped."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        what = "not a folder" if os.path.exists(folder) else "no such folder"
        raise UserError(f"--ood {folder}: {what}; expected a folder of photos that are none of the model's classes")
    paths, _ = collect_images([folder])
    if not paths:
        raise UserError(f"--ood {folder}: the folder holds no images; expected photos that are none of the "
                        "model's classes")
    pixels, skipped = [], []
    for path in paths:
        try:
            pixels.append(preprocess.pixels(path, **({"max_pixels": max_pixels} if max_pixels else {})))
        except ImageError as exc:
            skipped.append(str(exc))
    if not pixels:
        raise UserError(f"--ood {folder}: none of its {len(paths)} images could be read (first: {skipped[0]})")
    if skipped:   # on stderr: `evaluate --json` keeps stdout for the report
        print(f"--ood {folder}: skipped {len(skipped)} unreadable image{'s' * (len(skipped) > 1)} of {len(paths)} "
              f"(first: {skipped[0]})", file=sys.stderr)
    return np.stack(pixels)


def calibration_fields(logits: np.ndarray, targets: np.ndarray, temperature: float | None, ood: dict | None,
                       ood_logits: np.ndarray | None = None) -> dict:
    """ECE and NLL (with the file's T: `temperature`, 1 when the file has none), the accept rate at the
    file's threshold, and against an OOD folder AUROC, FPR at 95% TPR and its rejection rate."""
    t = temperature or 1.0
    out = {"temperature": temperature, "ece": calibration.ece(calibration.softmax(logits, t), targets),
           "nll": calibration.nll(logits, targets, t), "ece_uncalibrated": calibration.ece(calibration.softmax(logits),
                                                                                             targets),
           "accept_rate": None, "ood": None}
    scored = ood or {"score": calibration.DEFAULT_SCORE, "threshold": float("-inf")}
    if ood:
        out["accept_rate"] = float(np.mean(calibration.ood_score(logits, t, ood["score"]) >= ood["threshold"]))
    if ood_logits is not None:
        out["ood"] = calibration.ood_summary(logits, ood_logits, t, scored)
        if not ood:
            out["ood"]["rejection_rate"] = None  # no threshold in the file: nothing is rejected
    return out


def calibration_lines(fields: dict) -> list[str]:
    """The lines `toolkit evaluate` prints under its report (`source`, when given: where T came from, or
    why there is none)."""
    t, source = fields["temperature"], fields.get("source")
    if t:
        first = f"calibration: T {t:.3f}" + (f" ({source})" if source else "")
    else:
        first = f"calibration: {source or 'none in this file'} (T = 1)"
    lines = [first,
             f"  ECE {fields['ece'] * 100:.2f}% (uncalibrated {fields['ece_uncalibrated'] * 100:.2f}%), "
             f"NLL {fields['nll']:.4f}"]
    if fields["accept_rate"] is not None:
        lines.append(f"  accepted {fields['accept_rate'] * 100:.1f}% of the split")
    ood = fields.get("ood")
    if ood:
        rejected = ("" if ood["rejection_rate"] is None else
                    f", rejected {ood['rejection_rate'] * 100:.1f}% of them")
        lines.append(f"  OOD folder ({ood['n_ood']} images, {ood['score']} score): AUROC {ood['auroc']:.3f}, "
                     f"FPR at 95% TPR {ood['fpr_at_95_tpr'] * 100:.1f}%{rejected}")
    return lines
