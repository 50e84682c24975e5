"""The checks a .tflite export passes before it is published (see toolkit/export/tflite_pipeline.py). Each returns
{"ok": True | False | None (not run), "line": what to print, ...its numbers}; none raises, so a failed
export lists every check."""
from __future__ import annotations

import importlib.util

import numpy as np

from toolkit.errors import UserError
from toolkit.export.parity import FP32_ATOL, FP32_RTOL, Gate, judge, parity_cases, parity_line
from toolkit.export.tflite import LiteRtSession
from toolkit.export.tflite_metadata import read_labels
from toolkit.export.torch_graph import torch_logits
from toolkit.runtime.onnx_eval import load_pixels

MIN_MEDIAPIPE_AGREEMENT = 1.0  # MediaPipe runs the same file: top-1 must match PyTorch's on every image


def litert_check(job, path: str, real: np.ndarray, kernels: str) -> dict:
    """The FP32 parity gate (real and random pixel inputs, batch sizes 1, 2, 7, 16) on LiteRT's `kernels`."""
    gate = Gate(job.model, parity_cases(real, job.preprocess, False), probabilities=False)
    result = gate.measure(path, True, FP32_RTOL, lambda s: FP32_ATOL, session=LiteRtSession(path, kernels))
    try:
        judge(result, "fp32, RGB/255 NHWC input", path, runtime=f"LiteRT {kernels}")
        return {"ok": True, "line": parity_line(result), **result}
    except UserError as exc:
        return {"ok": False, "line": str(exc), **result}


def labels_check(job, path: str) -> dict:
    """The labels zipped into the file equal the checkpoint's, in order."""
    want = [str(label) for label in job.labels]
    got = read_labels(path)
    ok = got == want
    return {"ok": ok, "n": len(got), "line": f"labels.txt holds the {len(want)} labels of the checkpoint" if ok
            else f"labels.txt differs from the checkpoint's labels ({len(got)} vs {len(want)} lines)"}


def mediapipe_check(job, path: str, data, tflite) -> dict:
    """MediaPipe's ImageClassifier (its own metadata reader and preprocessing) on validation images: the
    same top-1 label as PyTorch. Not run where mediapipe is missing (said so) or with --mediapipe skip."""
    if tflite.mediapipe == "skip":
        return {"ok": None, "line": "not verified: --mediapipe skip"}
    if importlib.util.find_spec("mediapipe") is None:
        return {"ok": None, "line": "not verified: mediapipe unavailable (pip install mediapipe==0.10.21)"}
    split = None if data is None else "val" if data.val else "test" if data.test else None
    if split is None:
        return {"ok": None, "line": "not verified: the run has no validation images"}
    pixels, _, _ = load_pixels(getattr(data, split), job.preprocess, job.recipe.data.max_pixels,
                               limit=int(tflite.agreement_images))
    names = _mediapipe_top1(path, pixels)
    want = [str(job.labels[i]) for i in torch_logits(job.model, job.preprocess.normalize(pixels)).argmax(1)]
    agree = float(np.mean([a == b for a, b in zip(names, want)])) if want else 1.0
    ok = agree >= MIN_MEDIAPIPE_AGREEMENT
    return {"ok": ok, "n": len(want), "split": split, "top1_agreement": agree,
            "line": f"ImageClassifier top-1 equals PyTorch's on {agree * 100:.1f}% of {len(want)} {split} images"
                    + ("" if ok else f" (expected {MIN_MEDIAPIPE_AGREEMENT * 100:g}%)")}


def _mediapipe_top1(path: str, pixels: np.ndarray) -> list:
    """MediaPipe ImageClassifier's top-1 category name for each uint8 HxWx3 image."""
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=path), max_results=1)
    with vision.ImageClassifier.create_from_options(options) as classifier:
        return [classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image)))
                .classifications[0].categories[0].category_name for image in pixels]
