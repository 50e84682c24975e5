"""Calibration at training's end: runs/<name>/calibration.json from best.pt's validation logits.

    {"temperature": T, "splits": {"val": {n, ece_before, ece_after, nll_before, nll_after, accept_rate},
                                  "test": {...}},            # test only when the data has one
     "ood": {"score", "threshold", "accept_rate"}}          # accept_rate: the target on validation
or {"skipped": "<why>"} with fewer than 20 validation images. T and the threshold are fitted on
validation only (toolkit.calibration); export refits them per file, on each file's own logits.
The run report (issue 20) reads this file: keep the key names.
"""
from __future__ import annotations

import json
import os

from toolkit import calibration
from toolkit.artifacts import CALIBRATION_FILE, atomic_write, sha256_file
from toolkit.train.evaluate import split_logits

__all__ = ["calibrate_run", "CALIBRATION_FILE"]


def calibrate_run(model, recipe, dataset, device, run_dir: str, say=print,
                  accept_rate: float = calibration.DEFAULT_ACCEPT_RATE, checkpoint: str | None = None) -> dict:
    """Fit T and the OOD threshold on `dataset`'s val split, measure val and test, write calibration.json
    (with `checkpoint`'s SHA-256: the file it holds for, however the run folder is copied)."""
    n_val = len(dataset.val or [])
    skipped = calibration.too_few(n_val)
    if skipped:
        result: dict = {"skipped": skipped}
        say(skipped)
    else:
        batch = recipe.train.batch_size
        logits = {split: split_logits(model, recipe, getattr(dataset, split), batch, device)[:2]
                  for split in ("val", "test") if getattr(dataset, split)}
        fit = calibration.fit(*logits["val"], accept_rate=accept_rate)
        if "note" in fit:
            say(fit["note"])
        ood = {k: fit[k] for k in ("score", "threshold", "accept_rate")}
        result = {"temperature": fit["temperature"], "ood": ood,
                  "splits": {s: calibration.split_summary(x, y, fit["temperature"], ood) for s, (x, y) in logits.items()}}
        shown = result["splits"].get("test") or result["splits"]["val"]
        say(f"calibration: T {fit['temperature']:.3f}, ECE {shown['ece_before'] * 100:.2f}% -> "
            f"{shown['ece_after'] * 100:.2f}% on {'test' if 'test' in logits else 'val'} "
            f"({CALIBRATION_FILE})")
    if checkpoint is not None:
        result["checkpoint_sha256"] = sha256_file(checkpoint)
    atomic_write(os.path.join(run_dir, CALIBRATION_FILE), json.dumps(result, indent=2) + "\n")
    return result
