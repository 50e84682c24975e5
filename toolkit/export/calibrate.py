"""Calibration at export: each file's own temperature and "unknown" threshold, and the same decision everywhere.

After every file is staged and gated (before anything is published):
  1. the run's validation images (at most MAX_IMAGES) run through each staged file on ONNX Runtime CPU
     (fp32, raw, fp16, int8), and through the FP32 file on OpenVINO FP32 and BF16 where installed;
  2. each file gets its own T (toolkit.calibration.fit_temperature on its own logits) and threshold
     (accepting --accept-rate of the validation images); the BF16 read gets its own under ood.bf16;
  3. every twin and the FP32 file on OpenVINO must take the FP32 file's accept/reject decision on at least
     --min-agreement (MIN_AGREEMENT by default) of the images, else a UserError with the numbers and
     nothing is written (like the INT8 budget, and like it the user may loosen it); the BF16 read too with
     --bf16-check (else its agreement is reported, with a note below 99%).
     "Below 99%" is a statement about the engine, not about these images: one is refused only when its
     disagreement is above 1% with 95% confidence (the one-sided Clopper-Pearson lower bound of
     differ / n above 1 - min agreement). On 180 images two flips (98.9%) are chance; 14 of 600 (97.7%) are not;
     an observed share below 99% that chance explains is printed as a note;
  4. `temperature` and `ood` go into each staged file's metadata (toolkit.contract).
With --ood DIR the OOD score (max_prob or energy) is the one that separates that folder better, and
the share of it each file rejects is reported. Fewer than 20 validation images: skipped with one line.
"""
from __future__ import annotations

import math
import time

import numpy as np

from toolkit import calibration, contract
from toolkit.errors import UserError
from toolkit.export.plan import ExportJob
from toolkit.export.staging import Staging
from toolkit.runtime.engines import ENGINES, EngineOptions, adapter_for, engines_with, open_engine, reference_engine
from toolkit.runtime.onnx_eval import load_pixels, run_logits

__all__ = ["calibrate_files", "decision_agreement", "pick_score", "MIN_AGREEMENT", "CONFIDENCE", "MAX_IMAGES"]

MIN_AGREEMENT = calibration.MIN_AGREEMENT  # --min-agreement's default: every engine and twin vs the FP32 file
CONFIDENCE = 0.95  # how sure the gate must be that an engine's disagreement is above 1 - the min agreement
MAX_IMAGES = 2000  # validation images used (enough for a 1% agreement gate and a stable T)


def calibrate_files(job: ExportJob, staging: Staging, data, out_pixels: np.ndarray | None) -> dict:
    """Fit, check and write each staged file's calibration; returns the report's `calibration` section.
    out_pixels: the --ood folder's images (toolkit.runtime.ood_eval.ood_pixels), or None."""
    t0 = time.perf_counter()
    o = job.options
    items = list(getattr(data, "val", None) or []) if data is not None else []
    pixels, targets, _ = load_pixels(items, job.preprocess, job.recipe.data.max_pixels, limit=MAX_IMAGES)
    skipped = ("calibration skipped: the run's data could not be loaded (the note above says why)" if data is None
               else calibration.too_few(len(pixels)))
    if skipped:
        job.say(skipped + ("; --ood not measured (it needs the calibrated threshold)" if out_pixels is not None else ""))
        return {"skipped": skipped}
    logits = {kind: _logits(path, reference_engine(), "fp32", pixels, job, kind == "raw")
              for kind, path in staging.files.items()}
    score = pick_score(staging.files["fp32"], logits["fp32"], targets, out_pixels, job)
    fits = {kind: calibration.fit(x, targets, o.accept_rate, score) for kind, x in logits.items()}
    if "note" in fits["fp32"]:
        job.say(fits["fp32"]["note"])
    reads = _other_engines(staging.files["fp32"], pixels, job)
    fits.update({name: (fits["fp32"] if name.endswith("fp32") else calibration.fit(x, targets, o.accept_rate, score))
                 for name, x in reads.items()})
    logits.update(reads)
    agreement = _agreement(logits, fits)
    bounds = _judge(agreement, len(pixels), job)
    bf16 = next((fits[n] for n in reads if n.endswith("bf16")), None)
    for kind in staging.files:
        _write(staging, kind, fits[kind], bf16 if kind == "fp32" else None)
    result = {"score": score, "accept_rate": o.accept_rate, "n": int(len(pixels)), "agreement": agreement,
              "min_agreement": o.min_agreement, "disagreement_lower_bound": bounds,
              "files": {k: {**calibration.split_summary(logits[k], targets, f["temperature"], f), **f}
                        for k, f in fits.items()}}
    if out_pixels is not None:
        result["ood"] = _ood_report(staging, fits, logits, out_pixels, job)
    job.timings["calibration_s"] = time.perf_counter() - t0
    f = result["files"]["fp32"]
    job.say(f"calibration: T {f['temperature']:.3f}, ECE on val {f['ece_before'] * 100:.2f}% -> "
            f"{f['ece_after'] * 100:.2f}%, {score} score accepts {f['accept_rate'] * 100:.1f}%; decisions agree "
            + ", ".join(f"{k} {v * 100:.1f}%" for k, v in agreement.items()))
    return result


def decision_agreement(fp32_logits: np.ndarray, logits: np.ndarray, targets: np.ndarray, accept_rate: float,
                       score: str = calibration.DEFAULT_SCORE,
                       min_agreement: float = MIN_AGREEMENT) -> tuple[float | None, bool]:
    """(the share of validation images on which a twin takes the FP32 file's accept/reject decision, each with
    its own T and threshold, and whether step 3 would refuse it); (None, False) on too few images. Lets the
    INT8 ladder try its next setting rather than fail here after choosing one."""
    n = min(len(targets), MAX_IMAGES)
    if calibration.too_few(n):
        return None, False
    ref, twin = (calibration.fit(x[:n], targets[:n], accept_rate, score) for x in (fp32_logits, logits))
    agree = float(np.mean(_decisions(fp32_logits[:n], ref) == _decisions(logits[:n], twin)))
    differ = int(round((1.0 - agree) * n))
    return agree, calibration.rate_lower_bound(differ, n, CONFIDENCE) > 1.0 - min_agreement


def _logits(path: str, engine: str, precision: str, pixels: np.ndarray, job: ExportJob, raw: bool) -> np.ndarray:
    session = open_engine(path, engine, EngineOptions(device="cpu", precision=precision))
    return run_logits(session, pixels, job.preprocess, raw)


def _other_engines(path: str, pixels: np.ndarray, job: ExportJob) -> dict:
    """'<engine> fp32' / '<engine> bf16' -> logits of the FP32 file on each non-reference engine installed
    here (and in bf16 where this CPU computes it); an engine that can't load is left out."""
    out = {}
    for engine in [e for e in ENGINES if not adapter_for(e).reference]:
        for precision in ["fp32"] + (["bf16"] if engine in engines_with("bf16") else []):
            try:
                adapter_for(engine).require(precision, "cpu", where=engine)
                out[f"{engine} {precision}"] = _logits(path, engine, precision, pixels, job, False)
            except (UserError, ImportError):
                continue  # not installed, or no bf16 on this CPU: nothing to check there
    return out


def pick_score(path: str, logits: np.ndarray, targets: np.ndarray, out_pixels, job: ExportJob) -> str:
    """The OOD score: with an OOD folder, the one with the higher AUROC on it; else DEFAULT_SCORE. Picked once
    an export (job.ood_score): the INT8 ladder's agreement gate and the calibration stage use the same."""
    if out_pixels is None:
        return calibration.DEFAULT_SCORE
    if job.ood_score is None:
        out = _logits(path, reference_engine(), "fp32", out_pixels, job, False)
        t = calibration.fit_temperature(logits, targets)
        aurocs = {k: calibration.auroc(calibration.ood_score(logits, t, k), calibration.ood_score(out, t, k))
                  for k in contract.OOD_SCORES}
        job.ood_score = max(aurocs, key=lambda k: (aurocs[k], k == calibration.DEFAULT_SCORE))
    return job.ood_score


def _decisions(logits: np.ndarray, fit: dict) -> np.ndarray:
    return calibration.ood_score(logits, fit["temperature"], fit["score"]) >= fit["threshold"]


def _agreement(logits: dict, fits: dict) -> dict:
    """name -> the share of images on which it takes the FP32 file's (ORT CPU) accept/reject decision."""
    ref = _decisions(logits["fp32"], fits["fp32"])
    return {k: float(np.mean(_decisions(x, fits[k]) == ref)) for k, x in logits.items() if k != "fp32"}


def _judge(agreement: dict, n: int, job: ExportJob) -> dict:
    """Refuse a twin or an FP32 engine whose disagreement with the FP32 file is above 1 - --min-agreement
    with CONFIDENCE (its lower bound is); below 99% seen but within chance of it: a note. The BF16 read is
    not a file: like its logits (--bf16-check), it is refused only with --bf16-check, else noted.
    -> name: the lower bound of its disagreement (the report keeps it)."""
    least = job.options.min_agreement
    allowed = 1.0 - least
    differ = {k: int(round((1.0 - v) * n)) for k, v in agreement.items()}
    bounds = {k: calibration.rate_lower_bound(d, n, CONFIDENCE) for k, d in differ.items()}
    above = {k for k, b in bounds.items() if b > allowed}
    bad = {k for k in above if job.options.bf16_check or not k.endswith("bf16")}

    def numbers(k):
        return (f"{k} {agreement[k] * 100:.1f}% ({differ[k]} of {n} differ; disagreement at least "
                f"{bounds[k] * 100:.2f}% with {CONFIDENCE * 100:g}% confidence)")

    for name in sorted(k for k, v in agreement.items() if v < least and k not in bad):
        why = "--bf16-check refuses that" if name in above else "within chance of it on this many images"
        job.say(f"note: {name} takes the FP32 file's accept/reject decision on {agreement[name] * 100:.1f}% of "
                f"the validation images ({differ[name]} of {n}; below {least * 100:g}%, {why})")
    if bad:
        loosest = min(passing_min_agreement(agreement[k], n) for k in bad)
        raise UserError(f"accept/reject agreement with the FP32 file below {least * 100:g}%: "
                        + ", ".join(numbers(k) for k in sorted(bad))
                        + f" ({job.path}, on the validation images); nothing was written. To accept that many "
                        f"changed decisions, export again with --min-agreement {loosest:g}")
    return bounds


def passing_min_agreement(agree: float, n: int) -> float:
    """The --min-agreement that would accept a file agreeing on `agree` of `n` images (3 decimals, rounded
    down): the gate compares the lower bound of its disagreement with 1 - --min-agreement."""
    bound = calibration.rate_lower_bound(int(round((1.0 - agree) * n)), n, CONFIDENCE)
    return math.floor((1.0 - bound) * 1000) / 1000


def _write(staging: Staging, kind: str, fit: dict, bf16: dict | None) -> None:
    """The staged file of `kind` with `temperature` and `ood` added to its metadata."""
    import onnx

    proto = onnx.load(staging.files[kind], load_external_data=False)
    meta = contract.props_of(proto)
    ood = {"score": fit["score"], "threshold": fit["threshold"], "accept_rate": fit["accept_rate"]}
    if bf16:
        ood["bf16"] = {"temperature": bf16["temperature"], "threshold": bf16["threshold"]}
    meta.update(contract.encode({"temperature": fit["temperature"], "ood": ood}))
    contract.write(proto, meta)
    staging.save(proto, kind)


def _ood_report(staging: Staging, fits: dict, logits: dict, out_pixels: np.ndarray, job: ExportJob) -> dict:
    """Per staged file: how many of the OOD folder's photos it rejects, and AUROC against validation."""
    report = {"folder": str(job.options.ood), "n": int(len(out_pixels))}
    for kind, path in staging.files.items():
        out = _logits(path, reference_engine(), "fp32", out_pixels, job, kind == "raw")
        s = calibration.ood_summary(logits[kind], out, fits[kind]["temperature"], fits[kind])
        report[kind] = {k: s[k] for k in ("auroc", "fpr_at_95_tpr", "rejection_rate", "auroc_by_score")}
        report[kind]["rejected"] = int(round(s["rejection_rate"] * len(out_pixels)))
    f = report["fp32"]
    job.say(f"OOD folder {job.options.ood}: {f['rejected']} of {len(out_pixels)} photos rejected, AUROC "
            f"{f['auroc']:.3f}, FPR at 95% TPR {f['fpr_at_95_tpr'] * 100:.1f}%")
    return report
