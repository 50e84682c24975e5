"""The INT8 .tflite (`--format tflite --int8`): PT2E static quantization through litert-torch (symmetric,
per-channel weights), calibrated on the run's training images, held to --int8-budget like the ONNX INT8
twin: the top-1 drop from the FP32 .tflite to the INT8 one, both on LiteRT XNNPACK, on the validation
split. Calibration images and data checks are toolkit/export/int8.py's."""
from __future__ import annotations

import time

import numpy as np
import torch

from toolkit.errors import UserError
from toolkit.export.int8 import calibration_images
from toolkit.export.tflite import LiteRtSession, quiet_litert
from toolkit.runtime.onnx_eval import load_pixels
from toolkit.runtime.onnx_eval import report as accuracy_report


def quantized_module(wrapper, crop: int, calib: np.ndarray):
    """The channel-last model with PT2E observers calibrated on `calib` (uint8 NHWC), converted to int8."""
    from litert_torch.quantize import pt2e_quantizer
    from torchao.quantization.pt2e import quantize_pt2e

    args = (torch.zeros(1, crop, crop, 3),)
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    module = quantize_pt2e.prepare_pt2e(torch.export.export(wrapper, args).module(), quantizer)
    with torch.no_grad():
        for image in calib:  # the exported graph has batch 1
            module(torch.from_numpy(image[None].astype(np.float32) / 255.0))
    return quantize_pt2e.convert_pt2e(module, fold_quantize=False), args, quantizer


def convert_int8(job, wrapper, data, path: str) -> int:
    """Write the INT8 .tflite (no metadata yet) to `path`; returns how many calibration images it used."""
    calib = calibration_images(job, data)
    job.say(f"tflite int8: PT2E static, calibrating on {len(calib)} train images ...")
    with quiet_litert():
        import litert_torch
        from litert_torch.quantize.quant_config import QuantConfig

        module, args, quantizer = quantized_module(wrapper, job.preprocess.crop, calib)
        litert_torch.convert(module, args, quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(path)
    return len(calib)


def int8_budget_check(job, fp32_path: str, int8_path: str, data, n_calib: int) -> dict:
    """Top-1 of both files on the validation split (test without one); ok when the drop is within budget."""
    t = time.perf_counter()
    split = "val" if data.val else "test"
    pixels, targets, _ = load_pixels(getattr(data, split), job.preprocess, job.recipe.data.max_pixels)
    if len(pixels) == 0:
        raise UserError(f"--int8: none of the {split} images could be read")
    fp32 = LiteRtSession(fp32_path, "xnnpack").logits(pixels)
    int8 = LiteRtSession(int8_path, "xnnpack").logits(pixels)
    a, b = (accuracy_report(x, targets, job.labels)["top1"] for x in (fp32, int8))
    budget = float(job.options.int8_budget)
    ok = a - b <= budget
    return {"ok": ok, "split": split, "n": int(len(pixels)), "calib_images": n_calib, "fp32_top1": a,
            "int8_top1": b, "top1_drop": a - b, "budget": budget, "seconds": round(time.perf_counter() - t, 3),
            "top1_agreement_with_fp32": float((fp32.argmax(1) == int8.argmax(1)).mean()),
            "line": f"top-1 {a:.2f}% -> {b:.2f}% on {len(pixels)} {split} images (drop {a - b:.2f}, budget "
                    f"{budget:g}{'' if ok else ': over budget, try more --calib-images or a larger --int8-budget'})"}
