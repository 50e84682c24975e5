"""Accuracy of an exported ONNX model on a recipe's split, through ONNX Runtime (CPU) or OpenVINO.

`evaluate_onnx("exports/flowers.onnx")` reads the recipe, labels and preprocessing from the file's own
metadata, lists the split with toolkit.datasets (no pre-scan; images are decoded here), runs every
image through the same `Preprocess` the Predictor uses and reports top-1, top-5, per-class accuracy and
the confusion matrix. The export's INT8 accuracy budget uses the same functions, so the gate and
`toolkit evaluate MODEL.onnx` can't disagree. On any engine other than the reference one (ONNX Runtime, where
the export gates ran; e.g. engine="openvino") the same pixels also run through the FP32 file on the reference,
and the accuracy change and its gates are reported (toolkit.runtime.engine_eval).
Light module: no torch at import time.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Optional

import numpy as np

from toolkit import contract
from toolkit import recipe as recipe_mod
from toolkit.datasets import SPLITS, load_dataset
from toolkit.errors import UserError
from toolkit.metrics import classification_report, format_report
from toolkit.preprocess import ImageError, Preprocess
from toolkit.runtime.decode_pool import DecodePool
from toolkit.runtime.engine_eval import versus_line, versus_onnxruntime
from toolkit.runtime.engines import EngineOptions, open_engine, reference_engine
from toolkit.runtime.engines.base import without_fallback_hint
from toolkit.runtime.ood_eval import calibration_fields, calibration_lines, ood_pixels


# ------------------------------------------------------------------------------------------------
# Sessions and metadata

def cpu_session(model: Any, threads: Optional[int] = None, device: str = "cpu"):
    """An onnxruntime session (CPU unless device is cuda / cuda:N) for a path or serialized bytes.

    Unreadable files are a UserError; so is a CUDA request that ONNX Runtime can't honour (it would
    otherwise fall back to the CPU without saying so). device "auto" means the CPU here: accuracy
    doesn't depend on the provider, and the CPU is what the export gates use."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only; ORT's own warnings are noise for a user
    if threads:
        options.intra_op_num_threads = int(threads)
    device = str(device or "cpu").lower()
    if device in ("auto", "cpu"):
        providers: list = ["CPUExecutionProvider"]
    elif device == "cuda" or device.startswith("cuda:"):
        index = int(device.split(":")[1]) if ":" in device else 0
        providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    else:
        raise UserError(f"device {device!r}: expected auto, cpu, cuda or cuda:N")
    name = model if isinstance(model, (str, os.PathLike)) else "model"
    try:
        session = ort.InferenceSession(model, options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{name}: ONNX Runtime cannot load it ({first[:200]}); expected an ONNX file "
                        "written by toolkit export") from None
    if device.startswith("cuda") and "CUDAExecutionProvider" not in session.get_providers():
        raise UserError(f"device {device}: ONNX Runtime could not start its CUDA provider here (available: "
                        f"{', '.join(ort.get_available_providers())}); use --device cpu")
    return session


def engine_session(model: str, threads: Optional[int], device: str, engine: Optional[str],
                   precision: Optional[str] = None):
    """An engine adapter (toolkit.runtime.engines) for evaluation. device "auto" is the CPU here, as in
    cpu_session: accuracy doesn't depend on the device, and the CPU is what the export gates use."""
    device = "cpu" if str(device or "auto").lower() == "auto" else device
    try:
        return open_engine(model, engine, EngineOptions(device=device, threads=threads, precision=precision))
    except UserError as exc:   # evaluate has no --allow-fallback: the CPU is what it can offer
        if str(device).lower() == "cpu":
            raise
        raise UserError(f"{without_fallback_hint(str(exc))}; or evaluate with --device cpu") from None


def read_metadata(session_or_path: Any) -> dict:
    """The toolkit metadata of a model (a path or a session), JSON values decoded (toolkit.contract).
    A toolkit.contract.ContractError (a UserError) if it isn't a toolkit export."""
    if isinstance(session_or_path, (str, os.PathLike)):
        return contract.read_file(session_or_path).meta
    return contract.from_session(session_or_path, "model").meta


# ------------------------------------------------------------------------------------------------
# Images -> arrays -> logits -> metrics

def _pixel_outcomes(items: list, preprocess: Preprocess, max_pixels: Optional[int], limit: Optional[int],
                    pool: DecodePool, ahead: int):
    """(source, label, uint8 pixels or None, the skip reason or None) per item, in order, decoded on `pool`."""
    kwargs = {"max_pixels": max_pixels} if max_pixels else {}
    for (source, label), pixels, error in pool.ordered(lambda item: preprocess.pixels(item[0], **kwargs),
                                                       items[:limit] if limit else items, ahead):
        if error is not None and not isinstance(error, ImageError):
            raise error
        yield source, label, pixels, None if error is None else str(error)


def _stacked(pixels: list, crop: int) -> np.ndarray:
    return np.stack(pixels) if pixels else np.zeros((0, crop, crop, 3), np.uint8)


def load_pixels(items: list, preprocess: Preprocess, max_pixels: Optional[int] = None,
                limit: Optional[int] = None) -> tuple[np.ndarray, np.ndarray, list]:
    """(uint8 NxHxWx3 resized+cropped pixels, int64 targets, [(path, reason)] skipped) for `items`,
    decoded on every core (toolkit.runtime.decode_pool), in order.

    Pixels stay uint8 (a quarter of the float size); `Preprocess.normalize` runs per batch."""
    pixels, targets, skipped = [], [], []
    with DecodePool() as pool:
        for source, label, image, reason in _pixel_outcomes(items, preprocess, max_pixels, limit, pool, 32):
            if reason is None:
                pixels.append(image)
                targets.append(int(label))
            else:
                skipped.append((source if isinstance(source, str) else "array", reason))
    return _stacked(pixels, preprocess.crop), np.asarray(targets, np.int64), skipped


def decode_and_run(engine, items: list, preprocess: Preprocess, raw: bool, max_pixels: Optional[int] = None,
                   limit: Optional[int] = None, batch_size: int = 32) -> tuple:
    """load_pixels and run_logits at once: the engine runs each batch while the pool decodes the next.
    -> (pixels, targets, skipped, logits), the same arrays (bit for bit) as the two calls one after the other."""
    batch_size = max(1, int(batch_size))
    pixels, targets, skipped, logits, waiting = [], [], [], [], []
    with DecodePool() as pool:
        for source, label, image, reason in _pixel_outcomes(items, preprocess, max_pixels, limit, pool,
                                                            batch_size):
            if reason is not None:
                skipped.append((source if isinstance(source, str) else "array", reason))
                continue
            pixels.append(image)
            targets.append(int(label))
            waiting.append(image)
            if len(waiting) == batch_size:   # the same batches run_logits cuts from the whole array
                logits.append(run_logits(engine, np.stack(waiting), preprocess, raw, batch_size))
                waiting = []
    if waiting or not logits:
        logits.append(run_logits(engine, _stacked(waiting, preprocess.crop), preprocess, raw, batch_size))
    return (_stacked(pixels, preprocess.crop), np.asarray(targets, np.int64), skipped, np.concatenate(logits))


def model_input(pixels: np.ndarray, preprocess: Preprocess, raw: bool) -> np.ndarray:
    """What the graph takes: uint8 NHWC for a raw-input model, else normalised float32 NCHW."""
    return np.ascontiguousarray(pixels) if raw else preprocess.normalize(pixels)


def run_logits(engine, pixels: np.ndarray, preprocess: Preprocess, raw: bool,
               batch_size: int = 32) -> np.ndarray:
    """Logits (float32 N x classes) of an engine adapter (toolkit.runtime.engines) over uint8 pixels, in batches."""
    name = engine.inputs[0].name
    out = []
    for start in range(0, len(pixels), max(1, int(batch_size))):
        batch = model_input(pixels[start:start + batch_size], preprocess, raw)
        out.append(np.asarray(engine.run({name: batch}, ["logits"])[0], np.float32))
    n_classes = engine.outputs[0].shape[1]
    return np.concatenate(out) if out else np.zeros((0, n_classes if isinstance(n_classes, int) else 0),
                                                     np.float32)


def report(logits: np.ndarray, targets: np.ndarray, labels: list) -> dict:
    return classification_report(logits, targets, labels)


# ------------------------------------------------------------------------------------------------
# The public entry point

def _calibration(session, model, logits, targets, ood: Optional[str], preprocess, raw: bool, batch_size: int,
                 max_pixels) -> dict:
    """ECE / NLL / accept rate with the file's calibration (its BF16 values on an engine computing in bf16)."""
    temperature, spec = model.temperature, dict(model.ood) if model.ood else None
    if spec and spec.get("bf16") and session.describe().precision == "bf16":
        temperature, spec["threshold"] = spec["bf16"]["temperature"], spec["bf16"]["threshold"]
    out_logits = None
    if ood:
        out_logits = run_logits(session, ood_pixels(ood, preprocess, max_pixels), preprocess, raw, batch_size)
    return calibration_fields(logits, targets, temperature, spec, out_logits)


def _resolve_recipe(recipe: Any, meta: dict, model_path: str):
    if recipe is None:
        if not isinstance(meta.get("recipe"), dict):
            raise UserError(f"{model_path}: no recipe in its metadata; pass the recipe of the data to "
                            "evaluate on (--recipe RECIPE.yaml)")
        return recipe_mod.from_dict(meta["recipe"], source=f"{model_path} (recipe in its metadata)",
                                    check_paths=False)
    if isinstance(recipe, (str, os.PathLike)):
        return recipe_mod.load(str(recipe))
    if isinstance(recipe, dict):
        return recipe_mod.from_dict(recipe, check_paths=False)
    return recipe  # a Recipe


def _label_map(data_labels: list, model_labels: list, model_path: str) -> np.ndarray:
    """data label index -> model label index, matched by name."""
    index = {str(name): i for i, name in enumerate(model_labels)}
    missing = [str(c) for c in data_labels if str(c) not in index]
    if missing:
        shown = ", ".join(missing[:5]) + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "")
        raise UserError(f"{model_path}: the data has classes the model doesn't know: {shown}; expected the "
                        "classes the model was trained on (check data.classes / data.root)")
    return np.asarray([index[str(c)] for c in data_labels], np.int64)


class EmptySplit(UserError):
    """The split asked for has no images."""


@dataclasses.dataclass
class OnnxOutputs:
    """Per-image results of an ONNX file on a split: what evaluate_onnx scores and `toolkit report` shows."""
    logits: np.ndarray  # float32 N x classes
    targets: np.ndarray  # int64 N, the model's label indices
    sources: list  # the N images read (paths, or arrays for in-memory data sets), in order
    labels: list  # the model's labels
    skipped: list  # [(path, reason)] images that could not be read
    pixels: np.ndarray  # uint8 N x crop x crop x 3, what the model saw
    preprocess: Preprocess
    raw: bool  # the graph takes uint8 NHWC
    recipe: Any
    session: Any  # the engine adapter
    model: Any  # toolkit.contract's reading of the file
    started: float  # perf_counter before the images were read


def onnx_outputs(model_path: str, recipe_path_or_recipe: Any = None, split: str = "val", batch_size: int = 32,
                 limit: Optional[int] = None, threads: Optional[int] = None, device: str = "cpu",
                 engine: Optional[str] = None, precision: Optional[str] = None) -> OnnxOutputs:
    """The logits of every readable image of a split (see evaluate_onnx for the arguments)."""
    if split not in SPLITS:
        raise UserError(f"split: {split!r}; expected one of {', '.join(SPLITS)}")
    if not os.path.isfile(str(model_path)):
        raise UserError(f"{model_path}: no such model file; expected an .onnx file from toolkit export")
    contract.check_model_file(model_path)  # before an engine loads it (toolkit.contract_graph)
    session = engine_session(str(model_path), threads, device, engine, precision)
    model = contract.from_props(session.metadata(), str(model_path))
    meta = model.meta
    recipe = _resolve_recipe(recipe_path_or_recipe, meta, str(model_path))
    preprocess = Preprocess.from_spec(model.preprocess)
    raw = bool((model.input or {}).get("raw"))
    labels = [str(x) for x in model.labels]

    if recipe.data.source == "flowers102" and recipe.data.download:
        recipe = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, download=False))
    dataset = load_dataset(recipe, scan=False)
    items = list(getattr(dataset, split))
    if not items:
        raise EmptySplit(f"split {split}: no images in {recipe.data.source} data"
                        f"{' at ' + recipe.data.root if recipe.data.source == 'folder' else ''}; "
                        "expected a non-empty split (choose another with --split)")
    to_model = _label_map(dataset.labels, labels, str(model_path))
    start = time.perf_counter()
    pixels, targets, skipped, logits = decode_and_run(session, items, preprocess, raw, recipe.data.max_pixels,
                                                      limit, batch_size)
    if len(pixels) == 0:
        raise UserError(f"split {split}: none of its {len(items)} images could be read "
                        f"(first: {skipped[0][1] if skipped else 'none'})")
    unread = {path for path, _ in skipped}
    sources = [src for src, _ in (items[:limit] if limit else items)
               if not (isinstance(src, str) and src in unread)]
    return OnnxOutputs(logits, to_model[targets], sources, labels, skipped, pixels, preprocess, raw, recipe, session,
                       model, start)


def evaluate_onnx(model_path: str, recipe_path_or_recipe: Any = None, split: str = "val",
                  batch_size: int = 32, limit: Optional[int] = None, threads: Optional[int] = None,
                  device: str = "cpu", quiet: bool = True, engine: Optional[str] = None,
                  precision: Optional[str] = None, ood: Optional[str] = None) -> dict:
    """Top-1 / top-5 (in %), per-class accuracy, confusion matrix and n of an ONNX export on a split.

    recipe_path_or_recipe: a recipe file, a Recipe, a recipe dict, or None for the recipe stored in the
    model's metadata (the data it was trained on). Labels and preprocessing always come from the model.
    The dataset is not pre-scanned; unreadable images are skipped and listed under "skipped".
    limit: evaluate only the first N images of the split. quiet=False prints the formatted report.
    engine: onnxruntime or openvino; precision: fp32 or bf16 (openvino only; None: fp32). On an engine other
    than the reference the report gains "vs_onnxruntime" (toolkit.runtime.engine_eval), and a failed bf16 /
    int8 gate is a UserError. The report's "calibration" holds ECE, NLL (at the file's temperature) and the
    accept rate at its OOD threshold; ood: a folder of photos that are none of the classes, adding AUROC,
    FPR at 95% TPR and the share of them rejected (toolkit.runtime.ood_eval).
    """
    got = onnx_outputs(model_path, recipe_path_or_recipe, split, batch_size, limit, threads, device, engine,
                       precision)
    session, model, pixels, preprocess, raw = got.session, got.model, got.pixels, got.preprocess, got.raw
    logits, targets, labels, skipped = got.logits, got.targets, got.labels, got.skipped
    start = got.started
    out = report(logits, targets, labels)
    out["calibration"] = _calibration(session, model, logits, targets, ood, preprocess, raw, batch_size,
                                      got.recipe.data.max_pixels)
    info = session.describe()
    out.update({"model": str(model_path), "split": split, "precision": model.precision,
                "seconds": round(time.perf_counter() - start, 3), "skipped": skipped,
                "engine": info.engine, "provider": info.provider, "inference_precision": info.precision})
    if not session.reference:
        out["vs_onnxruntime"] = versus_onnxruntime(
            str(model_path), model.precision, out["inference_precision"], logits, targets,
            lambda path: run_logits(engine_session(path, threads, "cpu", reference_engine()), pixels, preprocess,
                                    raw, batch_size))
    if not quiet:
        runs_on = "" if session.reference else f", {info.runs_on}"
        print(format_report(out, title=f"{model_path} on {split} ({model.precision}{runs_on})"))
        print("\n".join(calibration_lines(out["calibration"])))
        if not session.reference:
            print(versus_line(out))
    return out
