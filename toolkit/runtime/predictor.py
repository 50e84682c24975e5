"""Run an exported toolkit model anywhere ONNX Runtime runs: onnxruntime + numpy + Pillow only.

    from toolkit.runtime.predictor import Predictor
    p = Predictor("exports/flowers.onnx")            # device="auto": CUDA if it really loads, else CPU
    p.predict("rose.jpg", top_k=3)                   # -> [{"label": "rose", "score": 0.97, "index": 2}, ...]
    p.predict(["a.jpg", b"...jpeg bytes...", pil_image, numpy_array])   # -> one list per image
    r = p.predict("cat.jpg"); r.accepted, r.ood_score  # the "unknown" answer, beside the top-k (Prediction)
    p.predict("cat.jpg", threshold=-2.0)  /  p.predict("cat.jpg", reject=False)   # per-call override / off

The model file carries its labels and its exact eval preprocessing (the ONNX file contract,
toolkit.contract); the Predictor rebuilds that preprocessing with `toolkit.preprocess`, the same code
training evaluation uses, so nothing is written twice.

The model runs on an engine adapter (toolkit.runtime.engines: ONNX Runtime by default, `engine="openvino"`
for OpenVINO, `precision="bf16"` there), opened with one EngineOptions; `Predictor.provider`,
`engine_device` and `inference_precision` are read back from it (`engine_info`, its describe()), never
assumed. Never import torch, torchvision, albumentations or cv2 here (tests/test_layout.py checks it).
"""
from __future__ import annotations

import hashlib
import os
import time
from contextlib import closing
from typing import Any, Iterable

import numpy as np

from toolkit import calibration, contract
from toolkit.errors import UserError
from toolkit.preprocess import DEFAULT_MAX_PIXELS, FOLDER_FORMATS, ImageError, Preprocess
from toolkit.runtime.decode_pool import shared_pool
from toolkit.runtime.engines import EngineOptions, open_engine, parse_engine
from toolkit.runtime.session import DEVICES

__all__ = ["Predictor", "Prediction", "DEVICES", "ImageError"]

# the input dtypes a toolkit export has (numpy names, as engines.Port gives them)
_INPUT_DTYPES = {"float32": np.float32, "float16": np.float16, "uint8": np.uint8, "float64": np.float64}
_DEFAULTS = {"device": "auto", "threads": None, "precision": None, "allow_fallback": False}


def _engine_options(options: EngineOptions | None, **keywords) -> EngineOptions:
    """The one options object: `options` as given, or built from the simple keywords (not both)."""
    if options is None:
        return EngineOptions(**keywords)
    if not isinstance(options, EngineOptions):
        raise UserError(f"options: {type(options).__name__}; expected toolkit.runtime.engines.EngineOptions")
    given = [k for k, v in keywords.items() if v != _DEFAULTS[k]]
    if given:
        raise UserError(f"{' / '.join(given)}: given both as a keyword and in options=; expected one of the two "
                        "(put them in the EngineOptions)")
    return options


def _positive_int(name: str, value: Any) -> int:
    """A whole number >= 1 (numpy's too), or one UserError naming the argument."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UserError(f"{name}: {value!r}; expected a positive whole number")
    return int(value)


class Prediction(list):
    """One image's answer: the top-k list of {"label", "score", "index"} (best first; a plain list, as before
    calibration existed) plus the "unknown" answer beside it. The top-k is never dropped.

    accepted: False when the model's OOD score is below its threshold (the image looks like none of the
    classes; show "unknown (best guess: ...)"); True for a file without the `ood` metadata or with
    rejection off. ood_score: that score (None without `ood`), score_kind: max_prob | energy, threshold:
    the one applied (None when none was)."""

    def __init__(self, top: list, accepted: bool = True, ood_score: float | None = None,
                 score_kind: str | None = None, threshold: float | None = None):
        super().__init__(top)
        self.accepted, self.ood_score, self.score_kind, self.threshold = accepted, ood_score, score_kind, threshold

    def first(self, k: int) -> "Prediction":
        """The best k only, in plain Python types (a batch was run at the largest k asked)."""
        top = [{"label": str(p["label"]), "score": float(p["score"]), "index": int(p["index"])} for p in self[:k]]
        return Prediction(top, self.accepted, self.ood_score, self.score_kind, self.threshold)

    def to_dict(self) -> dict:
        """Plain JSON: {"predictions": [...], "accepted", "ood_score", "score_kind", "threshold"}."""
        return {"predictions": list(self), "accepted": self.accepted, "ood_score": self.ood_score,
                "score_kind": self.score_kind, "threshold": self.threshold}

    def text(self) -> str:
        """The answer in words: "rose 0.97", or "unknown (best guess: rose 0.41)"."""
        best = f"{self[0]['label']} {self[0]['score']:.2f}" if self else "-"
        return best if self.accepted else f"unknown (best guess: {best})"


def is_single(images: Any) -> bool:
    """One image (not a list, tuple or 4-D array of them)?"""
    if isinstance(images, np.ndarray):
        return images.ndim <= 3
    return not isinstance(images, (list, tuple))


class Predictor:
    """An exported toolkit model, ready to classify images.

    Attributes: `labels`, `preprocess` (toolkit.preprocess.Preprocess), `provider` (the provider that
    actually runs), `providers` (the session's full list), `sha256` (of the model file, computed on
    first use), `input_spec` (dict), `raw` (uint8 NHWC input), `metadata` (JSON-decoded dict),
    `precision` (the FILE's precision, from its metadata), `outputs`, `session` (the engine adapter,
    toolkit.runtime.engines.Engine: run / describe), `contract` (the checked toolkit.contract.ModelContract).

    Engine: `engine` ("onnxruntime" or "openvino"), `engine_info` (the adapter's describe(): what was asked
    against what runs), `engine_device` (the device that runs: CPU, CUDA, TensorRT on ORT; OpenVINO's
    EXECUTION_DEVICES), `inference_precision` (what floating-point layers compute in: on ORT the file's
    precision; on OpenVINO its read-back INFERENCE_PRECISION_HINT). precision=None is fp32 on both engines
    (OpenVINO's own bf16 default is not inherited: a file runs as it was gated). `device`, `threads`,
    `precision` and `allow_fallback` are the simple forms of `options` (an EngineOptions, which also
    carries engine-specific settings such as OpenVinoOptions(hint, streams, cache_dir)); give one or the other.
    """

    def __init__(self, path: str | os.PathLike, device: str = "auto", threads: int | None = None,
                 allow_fallback: bool = False, batch_size: int = 32, max_pixels: int = DEFAULT_MAX_PIXELS,
                 formats: Iterable[str] = FOLDER_FORMATS, engine: str | None = None, precision: str | None = None,
                 options: EngineOptions | None = None):
        if not isinstance(path, (str, os.PathLike)):   # bytes too: its repr would make a 100 MB message
            raise UserError(f"model: a {type(path).__name__}; expected the path of an ONNX model written by "
                            "toolkit export (exports/<name>.onnx)")
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise UserError(f"{self.path}: no such file; expected an ONNX model written by toolkit export "
                            "(exports/<name>.onnx)")
        if os.path.isdir(self.path):
            raise UserError(f"{self.path}: is a folder; expected an ONNX model file (exports/<name>.onnx)")
        batch_size, max_pixels = _positive_int("batch_size", batch_size), _positive_int("max_pixels", max_pixels)
        if isinstance(allow_fallback, np.bool_):   # EngineOptions takes a bool (and refuses the string 'false')
            allow_fallback = bool(allow_fallback)
        self.options = _engine_options(options, device=device, threads=threads, precision=precision,
                                       allow_fallback=allow_fallback)
        self.device, self.threads = self.options.device, self.options.threads
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.formats = (formats,) if isinstance(formats, str) else tuple(formats)   # "PNG", not P, N, G
        self._sha256: str | None = None

        self.engine = parse_engine(engine)
        contract.check_model_file(self.path)  # external data, control flow, oversized metadata: before loading
        self.session = open_engine(self.path, self.engine, self.options)
        self.engine_info = self.session.describe()
        self.providers = list(self.engine_info.providers)
        self.provider = self.engine_info.provider
        self.engine_device = self.engine_info.device
        self.inference_precision = self.engine_info.precision
        self._read_metadata()

    # ---- metadata ------------------------------------------------------------------------
    def _read_metadata(self) -> None:
        """The file's contract (toolkit.contract) checked against the graph the session loaded."""
        model = contract.from_props(self.session.metadata(), self.path)
        self.contract = model
        self.metadata = model.meta
        self.labels: list[str] = model.labels
        self.preprocess = Preprocess.from_spec(model.preprocess)
        self.precision = model.precision
        self._read_calibration(model)
        self._read_input(model.input)
        self._read_outputs()

    def _read_calibration(self, model: contract.ModelContract) -> None:
        """`temperature` (None: T = 1, scores as the graph gives them) and `ood` ({score, threshold, ...} or
        None) of this file; on an engine that computes in BF16, the values refitted for that read."""
        self.temperature, self.ood = model.temperature, dict(model.ood) if model.ood else None
        if self.ood and self.ood.get("bf16") and self.inference_precision == "bf16":
            self.temperature = self.ood["bf16"]["temperature"]
            self.ood["threshold"] = self.ood["bf16"]["threshold"]

    def _read_input(self, spec: dict | None) -> None:
        where = self.path
        inputs = self.session.inputs
        if len(inputs) != 1:
            raise UserError(f"{where}: model has {len(inputs)} inputs; expected one image input")
        sess_in = inputs[0]
        self.input_name = sess_in.name
        self._input_dtype = _INPUT_DTYPES.get(sess_in.dtype)
        if self._input_dtype is None:
            raise UserError(f"{where}: model input type {sess_in.dtype}; expected float32, float16 or uint8")
        if spec is None:
            raw = self._input_dtype == np.uint8
            spec = {"name": sess_in.name, "dtype": "uint8" if raw else "float32",
                    "layout": "NHWC" if raw else "NCHW", "shape": list(sess_in.shape), "raw": raw}
        self.raw = bool(spec.get("raw", False)) or spec.get("dtype") == "uint8"
        if self.raw != (self._input_dtype == np.uint8):
            raise UserError(f"{where}: input metadata says raw={self.raw} but the graph input is {sess_in.dtype}; "
                            "the file was edited after export")
        self.input_spec = spec
        c = self.preprocess.crop
        expect = ["?", c, c, 3] if self.raw else ["?", 3, c, c]
        for got, want in zip(list(sess_in.shape)[1:], expect[1:]):
            if isinstance(got, int) and got != want:
                raise UserError(f"{where}: graph input shape {list(sess_in.shape)} does not match the preprocessing "
                                f"crop {c} ({'NHWC' if self.raw else 'NCHW'}); expected {expect}")

    def _read_outputs(self) -> None:
        self.outputs = [o.name for o in self.session.outputs]
        self._logits_name = "logits" if "logits" in self.outputs else self.outputs[0]
        self._probs_name = "probabilities" if "probabilities" in self.outputs else None
        out_shape = self.session.outputs[self.outputs.index(self._logits_name)].shape
        if len(out_shape) == 2 and isinstance(out_shape[1], int) and out_shape[1] != len(self.labels):
            raise UserError(f"{self.path}: the model has {out_shape[1]} outputs but {len(self.labels)} labels in its "
                            "metadata; expected one label per output")

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            h = hashlib.sha256()
            with open(self.path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            self._sha256 = h.hexdigest()
        return self._sha256

    @property
    def runs_on(self) -> str:
        """What runs, for a log line: the ORT provider, or e.g. "OpenVINO:CPU bf16" (read back)."""
        return self.engine_info.runs_on

    def describe(self) -> dict:
        """Plain-JSON description (what serve-local's /v1/model shows)."""
        return {"path": os.path.basename(self.path), "sha256": self.sha256, "labels": list(self.labels),
                "preprocess": self.preprocess.to_dict(), "input": dict(self.input_spec), "outputs": list(self.outputs),
                "precision": self.precision, "provider": self.provider, "providers": list(self.providers),
                "engine": self.engine, "engine_device": self.engine_device,
                "inference_precision": self.inference_precision,
                "arch": self.metadata.get("arch"), "head": self.metadata.get("head"),
                "temperature": self.temperature, "ood": self.ood,
                "toolkit_version": self.metadata.get("toolkit_version")}

    def __repr__(self) -> str:
        return (f"Predictor({self.path!r}, engine={self.engine}, provider={self.provider}, "
                f"inference={self.inference_precision}, classes={len(self.labels)}, "
                f"input={'uint8 NHWC' if self.raw else 'float32 NCHW'} {self.preprocess.crop}px, {self.precision})")

    # ---- preprocessing -------------------------------------------------------------------
    def prepare_one(self, image: Any) -> np.ndarray:
        """One image (path, bytes, file object, PIL image or numpy array) -> the model's input for it,
        without the batch axis: float32 3xHxW, or uint8 HxWx3 for a raw-input model.
        Raises toolkit.preprocess.ImageError (a UserError with `.kind`) for unusable images."""
        pixels = self.preprocess.pixels(image, self.max_pixels, self.formats)
        return pixels if self.raw else self.preprocess.normalize(pixels)

    def prepare(self, images: Any) -> np.ndarray:
        """An image or a list of images -> the model's input batch (float32 NCHW normalised, or uint8
        NHWC for raw-input models)."""
        items = [images] if is_single(images) else list(images)
        return self._prepare(items, 0, numbered=len(items) > 1)

    def _prepare(self, items: list, first: int, numbered: bool) -> np.ndarray:
        """items[...] -> their batch; an unusable one is named images[first + i] (its place in the caller's
        list) when `numbered`, unless it is a path, which names itself."""
        if not items:
            c = self.preprocess.crop
            return np.zeros((0, c, c, 3) if self.raw else (0, 3, c, c), np.uint8 if self.raw else np.float32)
        out = []
        for i, item in enumerate(items):
            try:
                out.append(self.prepare_one(item))
            except ImageError as exc:
                if numbered and not isinstance(item, (str, os.PathLike)):
                    raise ImageError(f"images[{first + i}]: {exc}", exc.kind) from None
                raise
        return np.stack(out)

    # ---- running -------------------------------------------------------------------------
    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        batch = np.asarray(batch)
        self.preprocess.check_batch(batch, self.raw)   # shape and finite values, before the engine sees it
        if batch.dtype != self._input_dtype:
            if self.raw and batch.dtype != np.uint8:
                raise UserError(f"batch dtype {batch.dtype}; this raw-input model expects uint8 pixels")
            if not self.raw and batch.dtype.kind != "f":   # uint8 pixels cast to float ran, answering wrong
                raise UserError(f"batch dtype {batch.dtype}; this model expects float pixels normalised by its "
                                "preprocessing (Predictor.prepare makes them)")
            batch = batch.astype(self._input_dtype)
        if len(batch) == 0:   # OpenVINO refuses a batch of none; every engine's answer is no rows
            none = np.zeros((0, len(self.labels)), np.float32)
            return none, (none.copy() if self._probs_name else None)
        names = [self._logits_name] + ([self._probs_name] if self._probs_name else [])
        logits_parts, prob_parts = [], []
        for start in range(0, len(batch), self.batch_size):
            chunk = np.ascontiguousarray(batch[start:start + self.batch_size])
            res = self.session.run({self.input_name: chunk}, names)
            logits_parts.append(np.asarray(res[0], dtype=np.float32))
            if self._probs_name:
                prob_parts.append(np.asarray(res[1], dtype=np.float32))
        logits = np.concatenate(logits_parts)
        probs = np.concatenate(prob_parts) if prob_parts else None
        return logits, probs

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Prepared batch -> float32 logits (N, classes); runs in chunks of `batch_size`."""
        return self._run(batch)[0]

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Prepared batch -> class probabilities (N, classes): softmax(logits / T) for a calibrated file
        (its `temperature`), else the model's `probabilities` output when it has one, else softmax(logits)."""
        return self._scores(*self._run(batch))

    def _scores(self, logits: np.ndarray, probs: np.ndarray | None) -> np.ndarray:
        if self.temperature is None and probs is not None:
            return probs
        return calibration.softmax(logits, self.temperature or 1.0).astype(np.float32)

    def accept(self, logits: np.ndarray, threshold: float | None = None,
               reject: bool = True) -> tuple[np.ndarray, np.ndarray | None, float | None]:
        """(accepted per row, OOD score per row or None, the threshold applied or None) for logits (N, classes).
        threshold: overrides the file's for this call; reject=False accepts everything (scores still computed)."""
        self.check_rejection(threshold, reject)
        logits = np.asarray(logits)
        if logits.ndim != 2 or logits.shape[1] != len(self.labels):
            raise UserError(f"logits of shape {logits.shape}; expected (N, {len(self.labels)}): one row per image, "
                            "as Predictor.logits returns")
        if not self.ood:
            return np.ones(len(logits), bool), None, None
        scores = calibration.ood_score(logits, self.temperature or 1.0, self.ood["score"])
        applied = float(self.ood["threshold"] if threshold is None else threshold)
        accepted = scores >= applied if reject else np.ones(len(scores), bool)
        return accepted, scores, (applied if reject else None)

    def check_rejection(self, threshold: float | None = None, reject: bool = True) -> None:
        """A per-call threshold and switch this file can take, or one UserError (before any work)."""
        if threshold is not None and (isinstance(threshold, (bool, np.bool_))
                                      or not isinstance(threshold, (int, float, np.integer, np.floating))
                                      or not np.isfinite(threshold)):   # as `toolkit predict --threshold`
            raise UserError(f"threshold: {threshold!r}; expected a finite number (an OOD score, docs/inference.md)")
        if not isinstance(reject, (bool, np.bool_)):   # the string 'false' is true
            raise UserError(f"reject: {reject!r}; expected True or False")
        if threshold is not None and not self.ood:
            raise UserError(f"threshold: {self.path} has no 'ood' metadata (exported before calibration, or "
                            "without a validation split); expected a calibrated export")

    def top_k(self, probs: np.ndarray, top_k: int = 5) -> list[list[dict]]:
        """Probabilities (N, classes) -> per row, the top-k as dicts (label, score, index), best first."""
        k = self._check_top_k(top_k)
        out = []
        for row in np.asarray(probs):
            idx = np.argsort(-row, kind="stable")[:k]
            out.append([{"label": self.labels[i], "score": float(row[i]), "index": int(i)} for i in idx])
        return out

    def predict_batch(self, batch: np.ndarray, top_k: int = 5, threshold: float | None = None,
                      reject: bool = True) -> list[Prediction]:
        """Prepared batch -> one Prediction (top-k list + accepted, ood_score) per row."""
        self._check_top_k(top_k)
        logits, probs = self._run(batch)
        accepted, scores, applied = self.accept(logits, threshold, reject)
        kind = self.ood["score"] if self.ood else None
        return [Prediction(top, bool(accepted[i]), None if scores is None else float(scores[i]), kind, applied)
                for i, top in enumerate(self.top_k(self._scores(logits, probs), top_k))]

    def predict(self, images: Any, top_k: int = 5, threshold: float | None = None, reject: bool = True) -> list:
        """images: a path / str / PathLike, bytes, a file object, a PIL image, a numpy image array, or a
        list of any of these (a 4-D numpy array counts as a list). A single image -> its Prediction; a list
        -> a list of them. A Prediction is the list of top-k {"label", "score", "index"} it always was, with
        `accepted` and `ood_score` beside it. threshold: this call's OOD threshold instead of the file's;
        reject=False: accept every image."""
        self._check_top_k(top_k)
        single = is_single(images)
        items = [images] if single else list(images)
        if len(items) > 1 and all(isinstance(i, (str, os.PathLike, bytes, bytearray, memoryview)) for i in items):
            return self._predict_pooled(items, top_k, threshold, reject)
        results: list[Prediction] = []
        for start in range(0, len(items), self.batch_size):
            batch = self._prepare(items[start:start + self.batch_size], start, numbered=len(items) > 1)
            results.extend(self.predict_batch(batch, top_k, threshold, reject))
        return results[0] if single else results

    def _predict_pooled(self, items: list, top_k: int, threshold: float | None, reject: bool) -> list:
        """Files and encoded bytes: decoded on the shared decode pool (every core) while the engine runs the
        previous batch; the same batches, arrays, results and first error as prepare() one by one."""
        results: list[Prediction] = []
        batch: list[np.ndarray] = []
        with closing(shared_pool().ordered(self.prepare_one, items, ahead=self.batch_size)) as outcomes:
            for i, (item, value, error) in enumerate(outcomes):
                if isinstance(error, ImageError) and not isinstance(item, (str, os.PathLike)):
                    raise ImageError(f"images[{i}]: {error}", error.kind) from None
                if error is not None:
                    raise error
                batch.append(value)
                if len(batch) == self.batch_size or i == len(items) - 1:
                    results.extend(self.predict_batch(np.stack(batch), top_k, threshold, reject))
                    batch = []
        return results

    def warmup(self, batch_size: int = 1) -> float:
        """Run one dummy batch (first-run allocations, CUDA kernel selection); returns the seconds taken."""
        batch_size = _positive_int("batch_size", batch_size)
        c = self.preprocess.crop
        shape = (batch_size, c, c, 3) if self.raw else (batch_size, 3, c, c)
        t = time.perf_counter()
        self._run(np.zeros(shape, self._input_dtype))
        return time.perf_counter() - t

    def _check_top_k(self, top_k: Any) -> int:
        return min(_positive_int("top_k", top_k), len(self.labels))
