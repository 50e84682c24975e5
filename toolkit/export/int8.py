"""The INT8 twin: ORT static QDQ quantization held to an accuracy budget, with a search over settings.

The budget is the top-1 drop FP32 -> INT8, both through ONNX Runtime on the run's validation images
(the same code as `toolkit evaluate`). The first setting is the user's (per-channel minmax by
default). When it misses the budget, export tries the others in `search_order`, and keeps the first
that fits: the order runs from the cheapest change to the costliest, so the first fit is also the
smallest, fastest file that meets the budget. A setting fits when it meets the budget and the accept/reject
agreement gate that the calibration stage would apply to it (toolkit.export.calibrate.decision_agreement).
The gate lets a twin below --min-agreement pass when that is within chance on the validation images; the
search then goes on for a setting that meets --min-agreement outright, and keeps the first fit only when
none does (a twin at 98.7% on 600 images was 98.6% on 2,000 test images: docs/export.md).
With --int8-qat-steps, the last rung is a short quantization-aware fine-tune of a copy of the model
(toolkit.export.qat), quantized and judged like any setting. If none fits, one UserError lists every
setting tried with its drop, and the staging leaves nothing behind (docs/export.md).

Time stays bounded: the calibration and validation images are read once, the FP32 logits computed
once, the graph pre-processed once, each calibration method's ranges computed once (toolkit.export.
quantize); an attempt costs one quantisation and one INT8 pass over the validation images.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from toolkit import contract
from toolkit.errors import UserError
from toolkit.export.calibrate import MAX_IMAGES, decision_agreement, passing_min_agreement, pick_score
from toolkit.export.options import CALIB_METHODS
from toolkit.export.plan import ExportJob, base_metadata
from toolkit.export.qat import QAT_IMAGES, fine_tune
from toolkit.export.quantize import Int8Setting, Prepared, calibration_reader, prepare, quantize
from toolkit.export.staging import Staging, check_file, twin_path, writing
from toolkit.export.torch_graph import export_float_copy
from toolkit.runtime.onnx_eval import engine_session, load_pixels, run_logits
from toolkit.runtime.onnx_eval import report as accuracy_report


@dataclass
class Scoring:
    """What every attempt is judged on, computed once."""

    split: str  # "val", or "test" when the run has no validation split
    pixels: np.ndarray  # uint8 eval pixels (resized and cropped)
    targets: np.ndarray  # their class indices
    fp32_logits: np.ndarray  # the FP32 file's logits on them, through ORT
    fp32: dict  # accuracy_report of fp32_logits
    score: str  # the OOD score the calibration stage will use (toolkit.export.calibrate.pick_score)


def search_order(options, prepared: Prepared) -> list:
    """The settings to try, in order. An axis the user set (per_channel, calib_method) stays as set;
    an unset one starts at per-channel / minmax. Inner to outer: weight granularity, calibration method
    (minmax, entropy, percentile), then the same again with the first and last layers in fp32, since
    those cost size and speed. With int8_search off, only the first."""
    per_channel = [options.per_channel] if options.per_channel is not None else [True, False]
    methods = [options.calib_method] if options.calib_method is not None else list(CALIB_METHODS)
    edges = [False] if prepared.edges_add_nothing() else [False, True]
    order = [Int8Setting(pc, method, edge) for edge in edges for method in methods for pc in per_channel]
    return order if options.int8_search else order[:1]


def int8_twin(job: ExportJob, staging: Staging, data, why, out_pixels=None) -> dict:
    """Stage the INT8 twin of the first setting that meets the budget and the agreement gate (the QAT rung
    last, with --int8-qat-steps); returns what the report says of it. out_pixels: the --ood images, or None."""
    t = time.perf_counter()
    o = job.options
    scoring = _scoring(job, staging, data, check_int8_data(data, why), out_pixels)
    calib = calibration_images(job, data)
    with writing(twin_path(job.path, "int8")):  # ORT's quantizer writes its own files: a full disk there too
        prepared = prepare(staging.files["fp32"], staging.work_dir(".tmp-quant-"), o.keep_fp32, job.block_of)
    order = search_order(o, prepared)
    job.say(f"int8: calibrating on {len(calib)} train images, {len(scoring.pixels)} {scoring.split} images "
            f"for the budget; {len(order)} setting{'s' if len(order) > 1 else ''} to try"
            f"{', keeping ' + ', '.join(o.keep_fp32) + ' in fp32' if o.keep_fp32 else ''}"
            f"{f', {len(prepared.shape_nodes)} shape-arithmetic nodes in float' if prepared.shape_nodes else ''}"
            f"{f', then {o.int8_qat_steps} QAT steps if none fits' if o.int8_qat_steps else ''} ...")

    def try_setting(setting: Int8Setting) -> dict:
        with writing(twin_path(job.path, "int8")):
            attempt = _attempt(job, staging, prepared, setting, calib, scoring)
        _say_attempt(job, scoring, attempt)
        return attempt

    tried, chosen = choose(order, try_setting, o.int8_budget, o.min_agreement)
    if chosen is None and not o.int8_qat_steps:
        raise UserError(_failure(job, scoring, tried, len(calib)))
    if chosen is None:
        prepared = _qat_rung(job, staging, data, calib, scoring, tried)
        chosen = tried[-1]
    elif len(tried) > 1 and not _agrees_outright(chosen, o.min_agreement):
        job.say(f"int8: no setting takes the FP32 file's accept/reject decision on {o.min_agreement:.0%} of the "
                f"images; keeping the first within the budget, {_label(chosen)}")
    info = _stage_choice(job, staging, prepared, tried, chosen, len(order), len(calib), scoring)
    job.timings["int8_s"] = time.perf_counter() - t
    job.say(f"int8: chose {info['setting']} (setting {info['attempt']} of "
            f"{len(order) + (1 if o.int8_qat_steps else 0)}): "
            f"top-1 {info['fp32_top1']:.2f}% -> {info['int8_top1']:.2f}% on {info['n']} {info['split']} images "
            f"(drop {info['top1_drop']:.2f}, budget {o.int8_budget:g})")
    return info


def choose(order: list, try_setting, budget: float, min_agreement: float) -> tuple[list, dict | None]:
    """(every attempt, the chosen one or None): the first setting within the budget whose agreement meets
    min_agreement outright, else the first that fits (within chance of it), else None. The candidate files of
    the attempts not chosen are removed as the search goes."""
    tried, first_fit = [], None
    for setting in order:
        tried.append(attempt := try_setting(setting))
        if _fits(attempt, budget) and _agrees_outright(attempt, min_agreement):
            break
        if _fits(attempt, budget) and first_fit is None:
            first_fit = attempt   # kept in case no later setting agrees outright
            continue
        os.unlink(attempt.pop("path"))
    else:
        attempt = first_fit
    if first_fit is not None and first_fit is not attempt:
        os.unlink(first_fit.pop("path"))
    return tried, attempt


def _fits(attempt: dict, budget: float) -> bool:
    """Within the top-1 budget, and not refused by the accept/reject agreement gate (toolkit.export.calibrate)."""
    return _within(attempt, budget) and not attempt["agreement_refused"]


def _agrees_outright(attempt: dict, min_agreement: float) -> bool:
    """The twin takes the FP32 file's accept/reject decision on at least min_agreement of the images (or there
    were too few to judge): not merely within chance of it."""
    return attempt["decision_agreement"] is None or attempt["decision_agreement"] >= min_agreement


def _within(attempt: dict, budget: float) -> bool:
    return attempt["top1_drop"] <= budget


def _say_attempt(job: ExportJob, scoring: Scoring, attempt: dict) -> None:
    agree = attempt["decision_agreement"]
    gate = "" if agree is None else (f", accept/reject agreement {agree * 100:.1f}%"
                                     f"{': refused' if attempt['agreement_refused'] else ''}")
    within = "within" if _within(attempt, job.options.int8_budget) else "over"
    job.say(f"int8: {_label(attempt)}: top-1 {scoring.fp32['top1']:.2f}% -> {attempt['int8_top1']:.2f}% "
            f"(drop {attempt['top1_drop']:.2f}, {within} budget {job.options.int8_budget:g}{gate}, "
            f"{attempt['seconds']:.1f} s)")


def _label(attempt: dict) -> str:
    """How reports and errors name an attempt: its setting, and the QAT steps it came after."""
    label = Int8Setting(attempt["per_channel"], attempt["calib_method"], attempt["fp32_edges"]).label
    return label + (f", after {attempt['qat']['steps']} QAT steps" if attempt.get("qat") else "")


def _qat_rung(job: ExportJob, staging: Staging, data, calib: np.ndarray, scoring: Scoring, tried: list) -> Prepared:
    """The last rung (toolkit.export.qat): fine-tune a copy of the model under simulated INT8, export it to a
    temp FP32 file and quantize that with qat_setting; appended to `tried`, judged against
    the original FP32 file like every setting. Returns the Prepared of the fine-tuned graph; a UserError
    listing every attempt when it misses too."""
    t, o = time.perf_counter(), job.options
    setting = qat_setting(o)
    pixels = training_pixels(job, data)
    job.say(f"int8: no setting fits; quantization-aware fine-tune, {o.int8_qat_steps} steps on {len(pixels)} "
            f"train images, then {setting.label} ...")
    model, qat_info = fine_tune(job.model, pixels, calib, job.preprocess, o.int8_qat_steps, setting.per_channel)
    work = staging.work_dir(".tmp-qat-")
    fp32_path = os.path.join(work, "qat-fp32.onnx")
    export_float_copy(job, model, fp32_path)
    del model
    with writing(twin_path(job.path, "int8")):
        prepared = prepare(fp32_path, work, o.keep_fp32, job.block_of)
        tried.append(_attempt(job, staging, prepared, setting, calib, scoring))
    tried[-1].update(qat=qat_info, seconds=round(time.perf_counter() - t, 3))
    job.timings["int8_qat_s"] = tried[-1]["seconds"]
    _say_attempt(job, scoring, tried[-1])
    if not _fits(tried[-1], o.int8_budget):
        raise UserError(_failure(job, scoring, tried, len(calib)))
    return prepared


def qat_setting(options) -> Int8Setting:
    """What the QAT rung quantizes with: what toolkit.export.qat simulates, every layer quantized with minmax
    ranges, weights per channel unless --per-channel=false pinned them per tensor."""
    return Int8Setting(options.per_channel is not False, "minmax", False)


def training_pixels(job: ExportJob, data) -> np.ndarray:
    """A seeded sample of at most QAT_IMAGES training images, as uint8 pixels (the QAT rung's data)."""
    order = np.random.default_rng(1).permutation(len(data.train))[:QAT_IMAGES]
    pixels, _, _ = load_pixels([data.train[i] for i in order], job.preprocess, job.recipe.data.max_pixels)
    if len(pixels) == 0:
        raise UserError("--int8-qat-steps: none of the sampled training images could be read for the fine-tune")
    return pixels


def check_int8_data(data, why) -> str:
    """The split that holds the accuracy budget; a UserError when the run's data can't serve INT8."""
    if data is None:
        raise UserError(f"--int8: could not load the run's data ({why}); INT8 needs its training images "
                        "for calibration and its validation images for the accuracy budget")
    eval_split = "val" if data.val else "test" if data.test else None
    if not data.train or eval_split is None:
        raise UserError("--int8: the run's data has no training images to calibrate on or no "
                        "validation/test images to check the accuracy budget on")
    return eval_split


def calibration_images(job: ExportJob, data) -> np.ndarray:
    """A seeded sample of calib_images training images, as uint8 pixels."""
    order = np.random.default_rng(0).permutation(len(data.train))[:int(job.options.calib_images)]
    calib, _, _ = load_pixels([data.train[i] for i in order], job.preprocess, job.recipe.data.max_pixels)
    if len(calib) == 0:
        raise UserError("--int8: none of the sampled training images could be read for calibration")
    return calib


def _scoring(job: ExportJob, staging: Staging, data, split: str, out_pixels) -> Scoring:
    """The evaluation images, the FP32 file's logits and accuracy on them, and the OOD score."""
    items = getattr(data, split)
    pixels, targets, _ = load_pixels(items, job.preprocess, job.recipe.data.max_pixels)
    if len(pixels) == 0:
        raise UserError(f"--int8: none of the {len(items)} {split} images could be read")
    logits = run_logits(engine_session(staging.files["fp32"], None, "cpu", None), pixels, job.preprocess, False)
    score = pick_score(staging.files["fp32"], logits[:MAX_IMAGES], targets[:MAX_IMAGES], out_pixels, job)
    return Scoring(split=split, pixels=pixels, targets=targets, fp32_logits=logits,
                   fp32=accuracy_report(logits, targets, job.labels), score=score)


def _attempt(job: ExportJob, staging: Staging, prepared: Prepared, setting: Int8Setting, calib: np.ndarray,
             scoring: Scoring) -> dict:
    """Quantize with one setting and score the candidate; returns its numbers and its file."""
    t = time.perf_counter()
    path = os.path.join(prepared.work_dir, f"candidate-{setting.calib_method}-{int(setting.per_channel)}"
                                           f"-{int(setting.fp32_edges)}.onnx")
    quantize(prepared, setting, calibration_reader(calib, job.preprocess), path, staging.ir_version)
    session = engine_session(path, None, "cpu", None)   # the default engine: ONNX Runtime
    logits = run_logits(session, scoring.pixels, job.preprocess, False)
    del session
    acc = accuracy_report(logits, scoring.targets, job.labels)
    agree, refused = (decision_agreement(scoring.fp32_logits, logits, scoring.targets, job.options.accept_rate,
                                         scoring.score, job.options.min_agreement)
                      if scoring.split == "val" else (None, False))  # the calibration stage judges val only
    return {**setting.as_dict(), "int8_top1": acc["top1"], "int8_top5": acc["top5"],
            "top1_drop": scoring.fp32["top1"] - acc["top1"],
            "top1_agreement_with_fp32": float((scoring.fp32_logits.argmax(1) == logits.argmax(1)).mean()),
            "decision_agreement": agree, "agreement_refused": refused,
            "seconds": round(time.perf_counter() - t, 3), "path": path}


def _stage_choice(job: ExportJob, staging: Staging, prepared: Prepared, tried: list, chosen: dict, planned: int,
                  n_calib: int, scoring: Scoring) -> dict:
    """Write the chosen candidate, with its metadata, as the staged INT8 twin; returns the report's dict."""
    import onnx

    o = job.options
    setting = Int8Setting(chosen["per_channel"], chosen["calib_method"], chosen["fp32_edges"])
    quant = {"format": "QDQ", "weights": "int8", "activations": "uint8", **setting.as_dict(),
             "calib_images": int(n_calib), "keep_fp32": o.keep_fp32, "excluded_nodes": prepared.excluded(setting),
             "shape_nodes_float": len(prepared.shape_nodes),
             "split": scoring.split, "n": int(len(scoring.pixels)), "budget": o.int8_budget,
             "fp32_top1": scoring.fp32["top1"], "int8_top1": chosen["int8_top1"], "top1_drop": chosen["top1_drop"],
             "setting": _label(chosen), "attempt": next(i for i, t in enumerate(tried, 1) if t is chosen),
             "attempts_planned": planned + (1 if o.int8_qat_steps else 0),
             "search": bool(o.int8_search), "qat": chosen.get("qat"),
             "decision_agreement": chosen["decision_agreement"]}
    q = onnx.load(chosen["path"])
    contract.write(q, {**base_metadata(job), "precision": "int8", "quantization": quant})
    tmp = staging.new("int8")
    staging.save(q, "int8")
    del q
    check_file(tmp)
    tried_report = [{k: v for k, v in t.items() if k != "path"} for t in tried]
    return {**quant, "fp32_top5": scoring.fp32["top5"], "int8_top5": chosen["int8_top5"],
            "top1_agreement_with_fp32": chosen["top1_agreement_with_fp32"], "tried": tried_report}


def _failure(job: ExportJob, scoring: Scoring, tried: list, n_calib: int) -> str:
    """The one-line error when no setting meets the budget: every setting tried, with its drop."""
    o = job.options
    each = "; ".join(f"{_label(t)} {t['top1_drop']:.2f}"
                     + (f" (accept/reject agreement {t['decision_agreement'] * 100:.1f}%: refused)"
                        if t.get("agreement_refused") else "") for t in tried)
    hints = []
    if not o.int8_search:
        hints.append("--int8-search=true (tries the other settings)")
    pinned = [flag for flag, value in (("--per-channel", o.per_channel), ("--calib-method", o.calib_method))
              if value is not None]
    if o.int8_search and pinned:
        hints.append(f"leaving out {' and '.join(pinned)} (lets the search vary them)")
    hints += [f"more --calib-images (used {n_calib})", "--keep-fp32 with more layers (e.g. head)",
              f"more --int8-qat-steps (used {o.int8_qat_steps})" if o.int8_qat_steps
              else "--int8-qat-steps 300 (a short quantization-aware fine-tune)"]
    if any(not _within(t, o.int8_budget) for t in tried):
        hints.append("a larger --int8-budget")
    # refused by the gate alone: the --min-agreement that would take the best of them (as calibrate_files says)
    gated = [t for t in tried if t.get("agreement_refused") and _within(t, o.int8_budget)]
    if gated:
        n = min(len(scoring.targets), MAX_IMAGES)
        loosest = max(passing_min_agreement(t["decision_agreement"], n) for t in gated)
        hints.append(f"--min-agreement {loosest:g} to accept that many changed decisions (used {o.min_agreement:g})")
    elif any(t.get("agreement_refused") for t in tried):
        hints.append(f"a lower --min-agreement (used {o.min_agreement:g})")
    gate = " and passed the accept/reject agreement gate" if any(t.get("agreement_refused") for t in tried) else ""
    return (f"int8 accuracy gate failed: no setting kept the top-1 drop within --int8-budget {o.int8_budget:g} "
            f"(points) on {len(scoring.pixels)} {scoring.split} images (fp32 top-1 {scoring.fp32['top1']:.2f}%)"
            f"{gate}; "
            f"top-1 drop of each setting tried: {each}; try {', '.join(hints)}; nothing was written (the fp32 "
            "export passed its gate: rerun without --int8 to keep it)")
