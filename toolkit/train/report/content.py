"""What the report holds, as plain JSON (report.json) plus the pictures the page embeds: the scores, the
per-class table, the confusion matrix, the most confused pairs, the top losses with Grad-CAM, the data
health (data_health.json, written at train time by toolkit.datasets.health) and the mislabel ranking."""
from __future__ import annotations

import json
import os

import numpy as np

from toolkit import calibration as cal
from toolkit.errors import UserError
from toolkit.metrics import classification_report, most_confused, precision_recall_f1
from toolkit.preprocess import ImageError
import toolkit.train.report.images as images
from toolkit.train.report.outputs import Outputs, checkpoint_model_inputs
from toolkit.train.report.saliency import grad_cam, overlay

from toolkit.train.mislabels import rank_mislabels

HEALTH_KEYS = ("exact_duplicates", "near_duplicates", "leaks", "class_balance", "small_images", "unreadable")


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def read_json(run_dir: str | None, name: str):
    """A run file's JSON, or (None, why not)."""
    path = os.path.join(run_dir, name) if run_dir else None
    if not path or not os.path.isfile(path):
        return None, f"no {name} in the run folder"
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh), ""
    except (OSError, ValueError) as exc:
        return None, f"{path}: unreadable ({exc})"


def calibration(out: Outputs) -> dict:
    """The T that belongs to what was scored (a checkpoint: the run's calibration.json for best.pt; an
    .onnx file: its own metadata), else 1 (plain softmax); and where it came from, or why none. With the
    split's logits, also how well the scores are calibrated on it: ECE at that T and at T = 1, NLL (the
    numbers `toolkit evaluate` prints, by the same functions)."""
    if out.temperature is not None:
        got = {"temperature": float(out.temperature), "calibrated": True, "source": out.calibration_source,
               "note": f"scores calibrated with temperature {out.temperature:.3g} ({out.calibration_source})"}
    else:
        got = {"temperature": 1.0, "calibrated": False, "source": out.calibration_source,
               "note": f"scores are plain softmax, not calibrated (calibration: {out.calibration_source})"}
    if out.logits is not None and len(out.targets):
        s = cal.split_summary(out.logits, out.targets, got["temperature"])
        got.update(ece=s["ece_after"], ece_uncalibrated=s["ece_before"], nll=s["nll_after"])
        got["note"] += (f"; on {out.split}: ECE {got['ece'] * 100:.2f}% (uncalibrated "
                        f"{got['ece_uncalibrated'] * 100:.2f}%), NLL {got['nll']:.4f}")
    return got


def scores(out: Outputs) -> dict:
    """top-1/top-5, per class precision/recall/F1/support, the confusion matrix and the most confused pairs."""
    got = classification_report(out.logits, out.targets, out.labels)
    return {"n": got["n"], "top1": got["top1"], "top5": got["top5"], "mean_per_class": got["mean_per_class"],
            "per_class": precision_recall_f1(got["confusion"], out.labels), "confusion": got["confusion"],
            "most_confused": most_confused(got["confusion"], out.labels)}


def top_losses(out: Outputs, probs: np.ndarray, top: int) -> list[dict]:
    """The `top` images with the highest loss (-log of the true class's score), worst first."""
    rows = np.arange(len(out.targets))
    loss = -np.log(np.clip(probs[rows, out.targets], 1e-12, None))
    order = np.argsort(-loss, kind="stable")[:max(0, top)]
    predicted = probs.argmax(axis=1)
    return [{"index": int(i), "path": images.name_of(out.sources[i], f"{out.split} #{i}"),
             "true": out.labels[out.targets[i]], "predicted": out.labels[predicted[i]],
             "score": float(probs[i, predicted[i]]), "true_score": float(probs[i, out.targets[i]]),
             "loss": float(loss[i])} for i in order]


def gallery_pictures(out: Outputs, losses: list[dict]) -> tuple[dict, str]:
    """{index: (thumbnail, Grad-CAM overlay or None)} of the top losses, and what the saliency column is."""
    pictures, crops = {}, {}
    for row in losses:
        try:
            crops[row["index"]] = out.preprocess.pixels(out.sources[row["index"]], out.recipe.data.max_pixels)
        except ImageError:
            continue
    maps = {}
    method = "skipped: Grad-CAM needs the checkpoint (not an .onnx file)"
    if out.model is not None and crops:
        indices = list(crops)
        predicted = [int(out.logits[i].argmax()) for i in indices]
        try:
            cams = grad_cam(out.model, checkpoint_model_inputs(out, indices), predicted)
            maps = dict(zip(indices, cams))
            method = "Grad-CAM of the predicted class, at the last convolution with a grid of 7 x 7 or more"
        except (ValueError, RuntimeError) as exc:
            method = f"skipped: Grad-CAM failed on this model ({str(exc).splitlines()[0][:120]})"
    for index, crop in crops.items():
        cam = maps.get(index)
        pictures[index] = (images.data_uri(crop), images.data_uri(overlay(crop, cam)) if cam is not None else None)
    return pictures, method


def class_counts(out: Outputs) -> dict | None:
    """{split: [images per class]} of the data set listing (the report's own class balance)."""
    if out.dataset is None:
        return None
    counts = {}
    for split in ("train", "val", "test"):
        labels = [label for _, label in getattr(out.dataset, split)]
        counts[split] = np.bincount(np.asarray(labels, np.int64), minlength=len(out.labels)).tolist()
    return counts


def data_health(run_dir: str | None, scanned: dict | None = None) -> dict:
    """The data health sections (those the page knows first), or a note saying why there are none: `scanned`,
    the report's own scan of the data it scored (another --recipe's, or the run's data as it is now), else
    the run's data_health.json from training."""
    found, why = (scanned, None) if isinstance(scanned, dict) else read_json(run_dir, "data_health.json")
    if not isinstance(found, dict):
        return {"note": f"data health skipped: {why or 'data_health.json is not a JSON object'} (it is written "
                        "by toolkit train's pre-flight scan)"}
    ordered = [k for k in HEALTH_KEYS if k in found] + sorted(k for k in found if k not in HEALTH_KEYS)
    return {"sections": {k: found[k] for k in ordered}}


def mislabels(out: Outputs, asked: bool, top: int) -> dict:
    if not asked:
        return {"note": "not asked for (toolkit report --mislabels ranks likely mislabelled training images)"}
    if out.run_dir is None:
        return {"note": "skipped: the ranking needs the run folder (a checkpoint's run)"}
    try:
        rows = rank_mislabels(out.run_dir, dataset=out.dataset)  # no second scan
    except (UserError, ImportError) as exc:  # one section that can't run (a class with 1 training image, no
        return {"note": f"skipped: {exc}"}  # scikit-learn): a note there, the rest of the report still written
    return {"rows": list(rows)[:max(top, 20)]}
