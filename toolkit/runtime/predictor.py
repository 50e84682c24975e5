"""Run an exported toolkit model anywhere ONNX Runtime runs: onnxruntime + numpy + Pillow only.

    from toolkit.runtime.predictor import Predictor
    p = Predictor("exports/flowers.onnx")            # device="auto": CUDA if it really loads, else CPU
    p.predict("rose.jpg", top_k=3)                   # -> [{"label": "rose", "score": 0.97, "index": 2}, ...]
    p.predict(["a.jpg", b"...jpeg bytes...", pil_image, numpy_array])   # -> one list per image

The model file carries its labels and its exact eval preprocessing (see CONTRACTS.md, "ONNX file
contract"); the Predictor rebuilds that preprocessing with `toolkit.preprocess`, the same code
training evaluation uses, so nothing is written twice.

`Predictor.provider` is the execution provider that actually runs, read from the session after it
was created. Asking for CUDA (or TensorRT) where it can't load is an error unless the caller allows
the fallback to CPU explicitly, and then it is a warning. Never import torch, torchvision,
albumentations or cv2 here (a test checks it in a fresh interpreter).
"""
from __future__ import annotations

import contextlib
import csv
import glob
import hashlib
import io
import json
import os
import re
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Sequence

import numpy as np
import onnxruntime as ort

from toolkit import artifacts
from toolkit.errors import UserError
from toolkit.preprocess import DEFAULT_MAX_PIXELS, FOLDER_FORMATS, ImageError, Preprocess, open_image

__all__ = ["Predictor", "predict_command", "collect_images", "time_cold_start", "DEVICES",
           "IMAGE_EXTENSIONS", "ImageError"]

DEVICES = ("auto", "cpu", "cuda", "tensorrt")
FORMATS = ("table", "csv", "json")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")

_CPU = "CPUExecutionProvider"
_CUDA = "CUDAExecutionProvider"
_TRT = "TensorrtExecutionProvider"
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8,
              "tensor(double)": np.float64}

_native_lock = threading.Lock()   # fd-level redirection of stderr is process-wide
_preloaded = False


# --------------------------------------------------------------------------------------------
# Session creation that tells the truth
# --------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _captured_native_output():
    """Capture what ONNX Runtime prints while creating a session (its C++ log goes straight to
    file descriptor 2; its Python helpers print to stdout) so the user sees one clear line from us
    instead, and so `toolkit predict --format json` keeps a clean stdout. Yields a list that holds
    the captured text once the block is done."""
    out: list[str] = []
    with _native_lock:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        saved = None
        tmp = tempfile.TemporaryFile(mode="w+b")
        try:
            with contextlib.suppress(OSError):
                saved = os.dup(2)
                os.dup2(tmp.fileno(), 2)
            py_out = io.StringIO()
            try:
                with contextlib.redirect_stdout(py_out):
                    yield out
            finally:
                if saved is not None:
                    os.dup2(saved, 2)
                    os.close(saved)
                tmp.seek(0)
                text = tmp.read().decode("utf-8", "replace") + py_out.getvalue()
                out.append(re.sub(r"\x1b\[[0-9;]*m", "", text))
        finally:
            tmp.close()


def _cuda_driver_problem() -> str | None:
    """Why the NVIDIA driver can't be used on this machine, or None if it loads (Linux/Windows)."""
    import ctypes
    import platform
    name = {"Linux": "libcuda.so.1", "Windows": "nvcuda.dll"}.get(platform.system())
    if name is None:
        return f"CUDA is not available on {platform.system()}"
    try:
        ctypes.CDLL(name)
    except OSError as exc:
        return f"no NVIDIA driver ({exc})"
    return None


def _load_failure_reason(log: str, wanted: str) -> str:
    """Turn ONNX Runtime's captured log into a short reason."""
    reasons = []
    for pattern in (r"with error: ([^\n]+)", r"(Require [^.\n]*)"):
        for m in re.finditer(pattern, log):
            r = m.group(1).strip()
            if r and r not in reasons:
                reasons.append(r)
    if wanted not in ort.get_available_providers():
        pkg = "onnxruntime-gpu" if wanted == _CUDA else "an onnxruntime build with TensorRT"
        reasons.append(f"this onnxruntime build ({ort.__version__}) has no {wanted}; if both 'onnxruntime' and "
                       f"'{pkg}' are installed, uninstall both and reinstall only {pkg}")
    if not reasons:
        driver = _cuda_driver_problem()
        reasons.append(driver or "the provider did not start; run with ORT logging on for details")
    return "; ".join(reasons)


def _session_options(threads: int | None) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = int(threads)
    return so


def _create_session(path: str, providers: list, threads: int | None, quiet: bool):
    """-> (session, captured_log). Any failure to read the model becomes a UserError."""
    ort.set_default_logger_severity(3)
    log = ""
    try:
        if quiet:
            with _captured_native_output() as captured:
                sess = ort.InferenceSession(path, _session_options(threads), providers=providers)
            log = captured[0] if captured else ""
        else:
            sess = ort.InferenceSession(path, _session_options(threads), providers=providers)
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        first = first.replace("[ONNXRuntimeError] : ", "")
        raise UserError(f"{path}: not a readable ONNX model ({first[:300]}); expected a .onnx file written by "
                        "toolkit export") from None
    with contextlib.suppress(Exception):
        sess.disable_fallback()   # never switch providers silently at run time
    return sess, log


def _parse_device(device: str) -> tuple[str, int]:
    dev = str(device or "auto").strip().lower()
    if dev == "gpu":
        dev = "cuda"
    m = re.fullmatch(r"(cuda|tensorrt)(?::(\d+))?", dev)
    if m:
        return m.group(1), int(m.group(2) or 0)
    if dev in DEVICES:
        return dev, 0
    raise UserError(f"device: {device!r}; expected one of {', '.join(DEVICES)} (or cuda:N)")


def _open_session(path: str, device: str, threads: int | None, allow_fallback: bool):
    kind, device_id = _parse_device(device)
    if kind == "cpu":
        return _create_session(path, [_CPU], threads, quiet=False)[0]
    available = ort.get_available_providers()
    if kind == "auto":
        # Auto means auto: CUDA when it really loads, else CPU, silently.
        if _CUDA not in available or _cuda_driver_problem() is not None:
            return _create_session(path, [_CPU], threads, quiet=False)[0]
        wanted, providers = _CUDA, [(_CUDA, {"device_id": device_id}), _CPU]
    elif kind == "cuda":
        wanted, providers = _CUDA, [(_CUDA, {"device_id": device_id}), _CPU]
    else:
        wanted, providers = _TRT, [(_TRT, {"device_id": device_id}), (_CUDA, {"device_id": device_id}), _CPU]
    providers = [p for p in providers if (p[0] if isinstance(p, tuple) else p) in available] or [_CPU]
    global _preloaded
    preload_log = ""
    if not _preloaded and hasattr(ort, "preload_dlls"):
        # ORT >= 1.21: find CUDA / cuDNN libraries shipped as pip nvidia-* packages.
        with _captured_native_output() as captured:
            with contextlib.suppress(Exception):
                ort.preload_dlls()
        preload_log = captured[0] if captured else ""
        _preloaded = True
    sess, log = _create_session(path, providers, threads, quiet=True)
    actual = sess.get_providers()[0]
    if actual == wanted or kind == "auto":
        return sess
    reason = _load_failure_reason(log + "\n" + preload_log, wanted)
    name = "CUDA" if kind == "cuda" else "TensorRT"
    cuda_major = str(getattr(ort, "cuda_version", "") or "").split(".")[0]
    need = f"CUDA {cuda_major}" if cuda_major else "CUDA 12/13"
    install = f"install onnxruntime-gpu with {need} libraries (pip install 'onnxruntime-gpu[cuda,cudnn]')"
    if kind == "tensorrt":
        install += " and TensorRT 10 (pip install tensorrt)"
    message = (f"{name} requested but onnxruntime could not load it ({reason}); {install}, or pass "
               f"allow_fallback=True / --allow-fallback to run on {actual.replace('ExecutionProvider', '')}")
    if not allow_fallback:
        raise UserError(message)
    warnings.warn(f"{name} requested but not available ({reason}); running on {actual}", RuntimeWarning,
                  stacklevel=3)
    return sess


# --------------------------------------------------------------------------------------------
# Predictor
# --------------------------------------------------------------------------------------------

def _decode_json(value: str) -> Any:
    if value[:1] in "[{\"":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def _is_single(images: Any) -> bool:
    if isinstance(images, np.ndarray):
        return images.ndim <= 3
    return not isinstance(images, (list, tuple))


class Predictor:
    """An exported toolkit model, ready to classify images.

    Attributes: `labels`, `preprocess` (toolkit.preprocess.Preprocess), `provider` (the provider that
    actually runs), `providers` (the session's full list), `sha256` (of the model file, computed on
    first use), `input_spec` (dict), `raw` (uint8 NHWC input), `metadata` (JSON-decoded dict),
    `precision`, `outputs`, `session` (the onnxruntime.InferenceSession).
    """

    def __init__(self, path: str | os.PathLike, device: str = "auto", threads: int | None = None,
                 allow_fallback: bool = False, batch_size: int = 32, max_pixels: int = DEFAULT_MAX_PIXELS,
                 formats: Iterable[str] = FOLDER_FORMATS):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise UserError(f"{self.path}: no such file; expected an ONNX model written by toolkit export "
                            "(exports/<name>.onnx)")
        if os.path.isdir(self.path):
            raise UserError(f"{self.path}: is a folder; expected an ONNX model file (exports/<name>.onnx)")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise UserError(f"threads: {threads!r}; expected a positive whole number (or leave it unset)")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch_size: {batch_size!r}; expected a positive whole number")
        self.device = device
        self.threads = threads
        self.batch_size = batch_size
        self.max_pixels = int(max_pixels)
        self.formats = tuple(formats)
        self._sha256: str | None = None

        self.session = _open_session(self.path, device, threads, allow_fallback)
        self.providers = list(self.session.get_providers())
        self.provider = self.providers[0]
        self._read_metadata()

    # ---- metadata ------------------------------------------------------------------------
    def _read_metadata(self) -> None:
        raw_meta = dict(self.session.get_modelmeta().custom_metadata_map or {})
        self.metadata = {k: _decode_json(v) for k, v in raw_meta.items()}
        where = self.path
        fmt = raw_meta.get("toolkit_format")
        if "labels" not in raw_meta:
            raise UserError(f"{where}: not a toolkit export: no 'labels' metadata; expected an ONNX file written by "
                            "toolkit export (metadata keys toolkit_format, labels, preprocess, input)")
        if fmt is not None and fmt != "1":
            raise UserError(f"{where}: toolkit_format {fmt!r} is not supported by this toolkit; expected '1' "
                            "(upgrade toolkit to run it)")
        labels = self.metadata["labels"]
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
            raise UserError(f"{where}: 'labels' metadata is {raw_meta['labels'][:80]!r}; expected a JSON list of "
                            "class names")
        self.labels: list[str] = labels
        pre = self.metadata.get("preprocess")
        if not isinstance(pre, dict):
            raise UserError(f"{where}: not a toolkit export: no 'preprocess' metadata; expected the JSON eval "
                            "preprocessing (resize, crop, interpolation, mean, std) written by toolkit export")
        try:
            self.preprocess = Preprocess.from_dict(pre)
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{where}: 'preprocess' metadata is incomplete ({exc!r}); expected resize, crop, "
                            "interpolation, mean and std") from None

        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise UserError(f"{where}: model has {len(inputs)} inputs; expected one image input")
        sess_in = inputs[0]
        self.input_name = sess_in.name
        self._input_dtype = _ORT_TYPES.get(sess_in.type)
        if self._input_dtype is None:
            raise UserError(f"{where}: model input type {sess_in.type}; expected float32, float16 or uint8")
        spec = self.metadata.get("input")
        if not isinstance(spec, dict):
            raw = self._input_dtype == np.uint8
            spec = {"name": sess_in.name, "dtype": "uint8" if raw else "float32",
                    "layout": "NHWC" if raw else "NCHW", "shape": list(sess_in.shape), "raw": raw}
        self.raw = bool(spec.get("raw", False)) or spec.get("dtype") == "uint8"
        if self.raw != (self._input_dtype == np.uint8):
            raise UserError(f"{where}: input metadata says raw={self.raw} but the graph input is {sess_in.type}; "
                            "the file was edited after export")
        self.input_spec = spec
        c = self.preprocess.crop
        expect = ["?", c, c, 3] if self.raw else ["?", 3, c, c]
        for got, want in zip(list(sess_in.shape)[1:], expect[1:]):
            if isinstance(got, int) and got != want:
                raise UserError(f"{where}: graph input shape {sess_in.shape} does not match the preprocessing "
                                f"crop {c} ({'NHWC' if self.raw else 'NCHW'}); expected {expect}")
        self.outputs = [o.name for o in self.session.get_outputs()]
        self._logits_name = "logits" if "logits" in self.outputs else self.outputs[0]
        self._probs_name = "probabilities" if "probabilities" in self.outputs else None
        out_shape = self.session.get_outputs()[self.outputs.index(self._logits_name)].shape
        if len(out_shape) == 2 and isinstance(out_shape[1], int) and out_shape[1] != len(self.labels):
            raise UserError(f"{where}: the model has {out_shape[1]} outputs but {len(self.labels)} labels in its "
                            "metadata; expected one label per output")
        self.precision = str(self.metadata.get("precision", "fp32"))

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            h = hashlib.sha256()
            with open(self.path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            self._sha256 = h.hexdigest()
        return self._sha256

    def describe(self) -> dict:
        """Plain-JSON description (what serve-local's /v1/model shows)."""
        return {"path": os.path.basename(self.path), "sha256": self.sha256, "labels": list(self.labels),
                "preprocess": self.preprocess.to_dict(), "input": dict(self.input_spec), "outputs": list(self.outputs),
                "precision": self.precision, "provider": self.provider, "providers": list(self.providers),
                "arch": self.metadata.get("arch"), "head": self.metadata.get("head"),
                "toolkit_version": self.metadata.get("toolkit_version")}

    def __repr__(self) -> str:
        return (f"Predictor({self.path!r}, provider={self.provider}, classes={len(self.labels)}, "
                f"input={'uint8 NHWC' if self.raw else 'float32 NCHW'} {self.preprocess.crop}px, {self.precision})")

    # ---- preprocessing -------------------------------------------------------------------
    def prepare_one(self, image: Any) -> np.ndarray:
        """One image (path, bytes, file object, PIL image or numpy array) -> the model's input for it,
        without the batch axis: float32 3xHxW, or uint8 HxWx3 for a raw-input model.
        Raises toolkit.preprocess.ImageError (a UserError with `.kind`) for unusable images."""
        pixels = self.preprocess.resize_crop(open_image(image, self.max_pixels, self.formats))
        return pixels if self.raw else self.preprocess.normalize(pixels)

    def prepare(self, images: Any) -> np.ndarray:
        """An image or a list of images -> the model's input batch (float32 NCHW normalised, or uint8
        NHWC for raw-input models)."""
        items = [images] if _is_single(images) else list(images)
        if not items:
            c = self.preprocess.crop
            return np.zeros((0, c, c, 3) if self.raw else (0, 3, c, c), np.uint8 if self.raw else np.float32)
        out = []
        for i, item in enumerate(items):
            try:
                out.append(self.prepare_one(item))
            except ImageError as exc:
                if len(items) > 1 and not isinstance(item, (str, os.PathLike)):
                    raise ImageError(f"images[{i}]: {exc}", exc.kind) from None
                raise
        return np.stack(out)

    # ---- running -------------------------------------------------------------------------
    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        batch = np.asarray(batch)
        want = (4, 3) if self.raw else (4, 1)
        if batch.ndim != 4 or batch.shape[want[1]] != 3:
            layout = "Nx{c}x{c}x3 uint8".format(c=self.preprocess.crop) if self.raw else \
                "Nx3x{c}x{c} float32".format(c=self.preprocess.crop)
            raise UserError(f"batch of shape {batch.shape}; expected {layout} (use Predictor.prepare)")
        if batch.dtype != self._input_dtype:
            if self.raw and batch.dtype != np.uint8:
                raise UserError(f"batch dtype {batch.dtype}; this raw-input model expects uint8 pixels")
            batch = batch.astype(self._input_dtype)
        names = [self._logits_name] + ([self._probs_name] if self._probs_name else [])
        logits_parts, prob_parts = [], []
        for start in range(0, max(len(batch), 1), self.batch_size):
            chunk = np.ascontiguousarray(batch[start:start + self.batch_size])
            res = self.session.run(names, {self.input_name: chunk})
            logits_parts.append(np.asarray(res[0], dtype=np.float32))
            if self._probs_name:
                prob_parts.append(np.asarray(res[1], dtype=np.float32))
        logits = np.concatenate(logits_parts) if logits_parts else np.zeros((0, len(self.labels)), np.float32)
        probs = np.concatenate(prob_parts) if prob_parts else None
        return logits, probs

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Prepared batch -> float32 logits (N, classes); runs in chunks of `batch_size`."""
        return self._run(batch)[0]

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Prepared batch -> class probabilities (N, classes): the model's `probabilities` output when it
        has one, else the softmax of its logits."""
        logits, probs = self._run(batch)
        return probs if probs is not None else _softmax(logits)

    def top_k(self, probs: np.ndarray, top_k: int = 5) -> list[list[dict]]:
        """Probabilities (N, classes) -> per row, the top-k as dicts (label, score, index), best first."""
        k = self._check_top_k(top_k)
        out = []
        for row in np.asarray(probs):
            idx = np.argsort(-row, kind="stable")[:k]
            out.append([{"label": self.labels[i], "score": float(row[i]), "index": int(i)} for i in idx])
        return out

    def predict_batch(self, batch: np.ndarray, top_k: int = 5) -> list[list[dict]]:
        """Prepared batch -> one top-k list per row."""
        self._check_top_k(top_k)
        return self.top_k(self.probabilities(batch), top_k)

    def predict(self, images: Any, top_k: int = 5) -> list:
        """images: a path / str / PathLike, bytes, a file object, a PIL image, a numpy image array, or a
        list of any of these (a 4-D numpy array counts as a list). A single image -> its list of
        predictions; a list -> a list of lists. A prediction is {"label", "score", "index"}."""
        self._check_top_k(top_k)
        single = _is_single(images)
        items = [images] if single else list(images)
        results: list[list[dict]] = []
        for start in range(0, len(items), self.batch_size):
            results.extend(self.predict_batch(self.prepare(items[start:start + self.batch_size]), top_k))
        return results[0] if single else results

    def warmup(self, batch_size: int = 1) -> float:
        """Run one dummy batch (first-run allocations, CUDA kernel selection); returns the seconds taken."""
        c = self.preprocess.crop
        shape = (batch_size, c, c, 3) if self.raw else (batch_size, 3, c, c)
        t = time.perf_counter()
        self._run(np.zeros(shape, self._input_dtype))
        return time.perf_counter() - t

    def _check_top_k(self, top_k: Any) -> int:
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
            raise UserError(f"top_k: {top_k!r}; expected a positive whole number")
        return min(int(top_k), len(self.labels))


# --------------------------------------------------------------------------------------------
# `toolkit predict`
# --------------------------------------------------------------------------------------------

def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _walk(folder: str, recursive: bool) -> list[str]:
    found = []
    if recursive:
        for root, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found.extend(os.path.join(root, f) for f in sorted(files) if not f.startswith(".") and _is_image_name(f))
    else:
        found = [os.path.join(folder, f) for f in sorted(os.listdir(folder))
                 if not f.startswith(".") and _is_image_name(f) and os.path.isfile(os.path.join(folder, f))]
    return found


def collect_images(args: Iterable[str] | str, recursive: bool = True) -> tuple[list[str], list[tuple[str, str]]]:
    """Files, folders (image extensions only, hidden skipped) and globs (expanded here, so quoted globs
    work) -> (image paths in order, without duplicates; [(arg, problem)] for args that matched nothing)."""
    if isinstance(args, (str, os.PathLike)):
        args = [args]
    paths: list[str] = []
    problems: list[tuple[str, str]] = []
    for arg in args:
        arg = os.path.expanduser(os.fspath(arg))
        if os.path.isfile(arg):
            paths.append(arg)
        elif os.path.isdir(arg):
            found = _walk(arg, recursive)
            if not found:
                problems.append((arg, f"folder holds no images ({', '.join(IMAGE_EXTENSIONS)})"))
            paths.extend(found)
        elif glob.has_magic(arg):
            matches = sorted(glob.glob(arg, recursive=True))
            found = []
            for m in matches:
                if os.path.isdir(m):
                    found.extend(_walk(m, recursive))
                elif _is_image_name(m):   # glob skips hidden names itself
                    found.append(m)
            if not found:
                problems.append((arg, "pattern matched no images"))
            paths.extend(found)
        else:
            problems.append((arg, "no such file or folder"))
    seen: set[str] = set()
    unique = []
    for p in paths:
        key = os.path.normpath(os.path.abspath(p))
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique, problems


class _Progress:
    """One in-place line on stderr when it is a terminal; a line every ~10% otherwise."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.start = total, enabled, time.perf_counter()
        self.tty = enabled and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        self.next_pct = 10

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else 0.0
        line = f"predict: {done}/{self.total} images  {rate:.1f} img/s  ETA {eta:.0f}s"
        if self.tty:
            sys.stderr.write("\r" + line + "\x1b[K")
            sys.stderr.flush()
        elif done * 100 >= self.next_pct * self.total or done == self.total:
            while self.next_pct <= done * 100 / self.total:
                self.next_pct += 10
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _decode(predictor: Predictor, path: str) -> tuple[np.ndarray | None, str | None]:
    try:
        return predictor.prepare_one(path), None
    except ImageError as exc:
        msg = str(exc)
        return None, msg if msg.startswith(path) else f"{path}: {msg}"
    except Exception as exc:  # a decoder bug must not stop a folder run
        return None, f"{path}: cannot read image ({type(exc).__name__}: {exc})"


def predict_command(model: str | None = None, images: Sequence[str] | str = (), top_k: int = 5,
                    format: str = "table", device: str = "auto", threads: int | None = None,
                    allow_fallback: bool = False, batch_size: int = 32, recursive: bool = True) -> int:
    """`toolkit predict [MODEL] IMAGES...`: classify files, folders and globs; results on stdout as a
    table, CSV (path,rank,label,score,index) or JSON; messages and progress on stderr.
    Unreadable images are reported and skipped. Returns 0 if at least one image was predicted, else 1."""
    fmt = str(format).lower()
    if fmt not in FORMATS:
        raise UserError(f"format: {format!r}; expected one of {', '.join(FORMATS)}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise UserError(f"top_k: {top_k!r}; expected a positive whole number")
    if model is None:
        model = artifacts.newest_export()
        print(f"predict: using the newest export {model}", file=sys.stderr)
    elif os.path.isdir(model):
        model = artifacts.newest_export(model)
        print(f"predict: using the newest export {model}", file=sys.stderr)
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    images = [os.fspath(i) for i in images]
    if not images:
        raise UserError("predict: no images given; expected image files, folders or globs, "
                        "e.g. toolkit predict exports/flowers.onnx photos/")
    paths, problems = collect_images(images, recursive=recursive)
    for arg, problem in problems:
        print(f"skipped {arg}: {problem}", file=sys.stderr)
    if not paths:
        raise UserError(f"predict: no images found in {', '.join(images)}; expected image files "
                        f"({', '.join(IMAGE_EXTENSIONS)}), folders or globs")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictor = Predictor(model, device=device, threads=threads, allow_fallback=allow_fallback,
                              batch_size=batch_size)
    for w in caught:   # one plain line each (the fallback warning), not Python's source-line format
        print(f"predict: warning: {w.message}", file=sys.stderr)
    k = min(top_k, len(predictor.labels))
    print(f"predict: {len(paths)} image(s) with {os.path.basename(predictor.path)} on {predictor.provider}",
          file=sys.stderr)

    out = sys.stdout
    writer = None
    json_rows: list[dict] = []
    path_w = min(max(len(p) for p in paths), 60)
    label_w = min(max(len(lb) for lb in predictor.labels), 30)
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["path", "rank", "label", "score", "index"])
    elif fmt == "table":
        head = f"{'image':<{path_w}}" + "".join(f"  {'#' + str(r):<{label_w}} {'score':>6}" for r in range(1, k + 1))
        print(head.rstrip(), file=out)

    progress = _Progress(len(paths), enabled=len(paths) > 50)
    predicted = failed = 0
    t0 = time.perf_counter()
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:   # Pillow decodes/resizes without the GIL
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            ok_paths, arrays = [], []
            for path, (arr, err) in zip(chunk, pool.map(lambda p: _decode(predictor, p), chunk)):
                if err is not None:
                    failed += 1
                    if progress.tty:
                        sys.stderr.write("\r\x1b[K")
                    print(f"skipped {err}", file=sys.stderr, flush=True)
                else:
                    ok_paths.append(path)
                    arrays.append(arr)
            if arrays:
                results = predictor.predict_batch(np.stack(arrays), k)
                for path, preds in zip(ok_paths, results):
                    predicted += 1
                    if fmt == "csv":
                        for rank, p in enumerate(preds, 1):
                            writer.writerow([path, rank, p["label"], f"{p['score']:.6f}", p["index"]])
                    elif fmt == "json":
                        json_rows.append({"path": path, "predictions": [
                            {"rank": r, "label": p["label"], "score": round(p["score"], 6), "index": p["index"]}
                            for r, p in enumerate(preds, 1)]})
                    else:
                        cells = "".join(f"  {p['label'][:label_w]:<{label_w}} {p['score']:>6.1%}" for p in preds)
                        shown = path if len(path) <= path_w else "..." + path[-(path_w - 3):]
                        print(f"{shown:<{path_w}}{cells}", file=out)
                out.flush()
            progress.update(start + len(chunk))
    progress.close()
    if fmt == "json":
        json.dump({"model": predictor.path, "sha256": predictor.sha256, "provider": predictor.provider,
                   "top_k": k, "results": json_rows}, out, indent=2)
        out.write("\n")
        out.flush()
    elapsed = time.perf_counter() - t0
    rate = predicted / elapsed if elapsed > 0 else 0.0
    skipped = failed + len(problems)
    print(f"predict: {predicted} predicted, {failed} unreadable skipped in {elapsed:.2f}s ({rate:.1f} img/s, "
          f"decode + preprocess + inference) on {predictor.provider}"
          + (f"; {skipped} skipped in all" if problems else ""), file=sys.stderr)
    return 0 if predicted else 1


# --------------------------------------------------------------------------------------------
# Cold start
# --------------------------------------------------------------------------------------------

_COLD_START_SCRIPT = r"""
import json, sys, time
t0 = time.perf_counter()
from toolkit.runtime.predictor import Predictor
import numpy as np
t1 = time.perf_counter()
p = Predictor(sys.argv[1], device=sys.argv[2], allow_fallback=sys.argv[3] == "1")
t2 = time.perf_counter()
img = sys.argv[4] if len(sys.argv) > 4 else (np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))
p.predict(img, top_k=1)
t3 = time.perf_counter()
heavy = sorted(m for m in ("torch", "torchvision", "albumentations", "cv2") if m in sys.modules)
print(json.dumps({"import_s": t1 - t0, "session_s": t2 - t1, "first_predict_s": t3 - t2, "total_s": t3 - t0,
                  "provider": p.provider, "heavy_modules": heavy}))
"""


def time_cold_start(path: str, device: str = "cpu", image: str | None = None, allow_fallback: bool = False,
                    timeout: float = 600) -> dict:
    """Cold start measured in a fresh interpreter: import_s (import toolkit.runtime.predictor), session_s
    (Predictor(...), i.e. metadata + ORT session), first_predict_s (decode + preprocess + first run of a
    640x480 image, or `image`), total_s, provider. Interpreter start-up itself is not included."""
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-c", _COLD_START_SCRIPT, os.fspath(path), device, "1" if allow_fallback else "0"]
    if image:
        cmd.append(os.fspath(image))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"cold start of {path} on {device} failed: {tail}")
    return json.loads(lines[-1])
