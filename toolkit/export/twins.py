"""The FP16 and INT8 twins: built from the staged FP32 file, each behind its own gate.

FP16: fp16 weights with float32 IO, judged by the parity gate under its own tolerance.
INT8: ORT static QDQ quantization calibrated on training images, under an accuracy budget measured on the
validation split (the same code as `toolkit evaluate`).
"""
from __future__ import annotations

import os
import time

import numpy as np

from toolkit import contract
from toolkit.errors import UserError
from toolkit.export.parity import Gate, judge, parity_line
from toolkit.export.plan import ExportJob, base_metadata
from toolkit.export.staging import Staging, check_file, twin_path
from toolkit.export.surgery import drop_unused_domains, toposort, unquantize_outputs, unshare_initializers
from toolkit.export.torch_graph import hush, resolve_layers
from toolkit.preprocess import Preprocess
from toolkit.runtime.onnx_eval import cpu_session, load_pixels, model_input, run_logits
from toolkit.runtime.onnx_eval import report as accuracy_report

# FP16 twin: weights (and, on CUDA, arithmetic) in half precision; 11-bit mantissas give ~1e-3
# relative error per layer, which accumulates over VGG's layers. Its gate: logits within
# rtol 2e-2 / atol 2e-2 x (largest |logit| of the reference), and top-1 agreement of at least 99%
# (a flip between two classes closer than the tolerance counts as a tie, not a disagreement).
FP16_RTOL, FP16_ATOL_REL, FP16_MIN_AGREEMENT = 2e-2, 2e-2, 0.99


# ------------------------------------------------------------------------------------------------
# FP16

def fp16_twin(job: ExportJob, staging: Staging, gate: Gate) -> dict:
    """Stage the FP16 twin and judge it; returns its parity results."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    t = time.perf_counter()
    fp32_proto = onnx.load(staging.files["fp32"])
    with hush():
        half = convert_float_to_float16(fp32_proto, keep_io_types=True)
    del fp32_proto
    toposort(half.graph)
    contract.write(half, {**base_metadata(job), "precision": "fp16"})
    tmp = staging.new("fp16")
    staging.save(half, "fp16")
    del half
    check_file(tmp)
    # It must load and run on the CPU provider with float32 IO.
    parity = gate.measure(tmp, False, FP16_RTOL, lambda s: FP16_ATOL_REL * s)
    parity["min_top1_agreement"] = FP16_MIN_AGREEMENT
    judge(parity, "fp16 twin", twin_path(job.path, "fp16"), FP16_MIN_AGREEMENT)
    job.timings["fp16_s"] = time.perf_counter() - t
    job.say(f"parity fp16: {parity_line(parity)}")
    return parity


# ------------------------------------------------------------------------------------------------
# INT8

def int8_twin(job: ExportJob, staging: Staging, data, why) -> dict:
    """Stage the INT8 twin and hold it to the accuracy budget; returns what the report says about it."""
    t = time.perf_counter()
    eval_split = _check_int8_data(data, why)
    calib = _calibration_images(job, data)
    quant = _quantize_twin(job, staging, calib)
    info = _accuracy(job, staging, data, eval_split)
    info = {**quant, "split": eval_split, **info}
    job.timings["int8_s"] = time.perf_counter() - t
    _check_budget(job, info, len(calib))
    return info


def _check_int8_data(data, why) -> str:
    """The split that holds the accuracy budget; a UserError when the run's data can't serve INT8."""
    if data is None:
        raise UserError(f"--int8: could not load the run's data ({why}); INT8 needs its training images "
                        "for calibration and its validation images for the accuracy budget")
    eval_split = "val" if data.val else "test" if data.test else None
    if not data.train or eval_split is None:
        raise UserError("--int8: the run's data has no training images to calibrate on or no "
                        "validation/test images to check the accuracy budget on")
    return eval_split


def _calibration_images(job: ExportJob, data) -> np.ndarray:
    """A seeded sample of calib_images training images, as uint8 pixels."""
    order = np.random.default_rng(0).permutation(len(data.train))[:int(job.options.calib_images)]
    calib, _, _ = load_pixels([data.train[i] for i in order], job.preprocess, job.recipe.data.max_pixels)
    if len(calib) == 0:
        raise UserError("--int8: none of the sampled training images could be read for calibration")
    return calib


def _quantize_twin(job: ExportJob, staging: Staging, calib: np.ndarray) -> dict:
    """Quantize the staged FP32 file into the INT8 twin; returns its `quantization` metadata."""
    import onnx

    o = job.options
    job.say(f"int8: calibrating ({o.calib_method}, {len(calib)} train images, "
            f"{'per-channel' if o.per_channel else 'per-tensor'} weights"
            f"{', keeping ' + ', '.join(o.keep_fp32) + ' in fp32' if o.keep_fp32 else ''}) ...")
    work_dir = staging.work_dir(".tmp-quant-")
    tmp = staging.new("int8")
    excluded = _quantize(job, staging.files["fp32"], tmp, work_dir, _calibration_reader(calib, job.preprocess))
    q = onnx.load(tmp)
    unquantize_outputs(q)
    drop_unused_domains(q)
    quant = {"format": "QDQ", "weights": "int8", "activations": "uint8", "per_channel": bool(o.per_channel),
             "calib_method": o.calib_method, "calib_images": int(len(calib)), "keep_fp32": o.keep_fp32,
             "excluded_nodes": excluded}
    contract.write(q, {**base_metadata(job), "precision": "int8", "quantization": quant})
    staging.save(q, "int8")
    del q
    check_file(tmp)
    return quant


def _accuracy(job: ExportJob, staging: Staging, data, eval_split: str) -> dict:
    """FP32 and INT8 top-1/top-5 through ORT on the evaluation split, the same code as evaluate."""
    items = getattr(data, eval_split)
    pixels, targets, _ = load_pixels(items, job.preprocess, job.recipe.data.max_pixels)
    if len(pixels) == 0:
        raise UserError(f"--int8: none of the {len(items)} {eval_split} images could be read")
    acc, logits = {}, {}
    for kind in ("fp32", "int8"):
        session = cpu_session(staging.files[kind])
        logits[kind] = run_logits(session, pixels, job.preprocess, False)
        acc[kind] = accuracy_report(logits[kind], targets, job.labels)
        del session
    return {"n": int(len(pixels)), "budget": job.options.int8_budget,
            "fp32_top1": acc["fp32"]["top1"], "int8_top1": acc["int8"]["top1"],
            "fp32_top5": acc["fp32"]["top5"], "int8_top5": acc["int8"]["top5"],
            "top1_drop": acc["fp32"]["top1"] - acc["int8"]["top1"],
            "top1_agreement_with_fp32": float((logits["fp32"].argmax(1) == logits["int8"].argmax(1)).mean())}


def _check_budget(job: ExportJob, info: dict, n_calib: int) -> None:
    o, drop = job.options, info["top1_drop"]
    fp32, int8, n, split = info["fp32_top1"], info["int8_top1"], info["n"], info["split"]
    if drop > o.int8_budget:
        hints = [m for m in ("entropy", "percentile") if m != o.calib_method]
        raise UserError(
            f"int8 accuracy gate failed: top-1 {fp32:.2f}% (fp32) -> {int8:.2f}% (int8) on {n} {split} images, "
            f"a drop of {drop:.2f} points over the budget of {o.int8_budget:g}; try --calib-method "
            f"{' or '.join(hints)}, more --calib-images (used {n_calib}), or --keep-fp32 head; nothing was "
            "written (the fp32 export passed its gate: rerun without --int8 to keep it)")
    job.say(f"int8: top-1 {fp32:.2f}% -> {int8:.2f}% on {n} {split} images (drop {drop:.2f}, "
            f"budget {o.int8_budget:g})")


def _calibration_reader(pixels: np.ndarray, preprocess: Preprocess, batch_size: int = 8):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.start = 0

        def get_next(self):
            if self.start >= len(pixels):
                return None
            batch = pixels[self.start:self.start + batch_size]
            self.start += batch_size
            return {"input": model_input(batch, preprocess, raw=False)}

        def rewind(self):
            self.start = 0

    return Reader()


def _quantize(job: ExportJob, fp32_path: str, out_path: str, work_dir: str, reader) -> list[str]:
    """ORT static quantization (QDQ, int8 weights, uint8 activations); returns the excluded nodes."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = os.path.join(work_dir, "preprocessed.onnx")
    with hush():
        quant_pre_process(fp32_path, pre)  # symbolic shape inference + ORT's graph optimisation
    graph = onnx.load(pre)
    if unshare_initializers(graph):
        onnx.save(graph, pre)
    keep_fp32 = job.options.keep_fp32
    excluded = resolve_layers(graph, keep_fp32, job.block_of) if keep_fp32 else []
    # The probabilities output stays a float32 softmax (uint8 probabilities would be coarse).
    softmax = [n.name for n in graph.graph.node if n.op_type == "Softmax"]
    del graph
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[job.options.calib_method]
    with hush():
        quantize_static(pre, out_path, reader, quant_format=QuantFormat.QDQ,
                        per_channel=job.options.per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=method, nodes_to_exclude=excluded + softmax,
                        extra_options={"CalibTensorRangeSymmetric": False})
    return excluded
