"""ONNX Runtime sessions that tell the truth about their execution provider.

`open_session(path, device, threads, allow_fallback)` picks the providers for a device ("auto", "cpu",
"cuda[:N]", "tensorrt[:N]"), creates the session with ORT's own console noise captured, and checks the
provider that actually runs. Asking for CUDA (or TensorRT) where it can't load is a UserError naming the
reason, unless the caller allows the fallback to CPU, and then it is a RuntimeWarning. "auto" means CUDA
when it really loads, else CPU, silently. Light module: onnxruntime only. The engine adapter over it is
toolkit.runtime.engines.onnxruntime_adapter.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
import threading
import warnings

import onnxruntime as ort

from toolkit.errors import UserError
from toolkit.runtime.engines.base import FALLBACK_HINT

DEVICES = ("auto", "cpu", "cuda", "tensorrt")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

_native_lock = threading.Lock()   # fd-level redirection of stderr is process-wide
_preloaded = False


@contextlib.contextmanager
def captured_native_output():
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


def cuda_driver_problem() -> str | None:
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


def load_failure_reason(log: str, wanted: str) -> str:
    """Turn ONNX Runtime's captured log into a short reason."""
    reasons = []
    for pattern in (r"with error: ([^\n]+)", r"(Require [^.\n]*)"):
        for m in re.finditer(pattern, log):
            r = m.group(1).strip()
            if r and r not in reasons:
                reasons.append(r)
    if wanted not in ort.get_available_providers():
        pkg = "onnxruntime-gpu" if wanted == CUDA else "an onnxruntime build with TensorRT"
        reasons.append(f"this onnxruntime build ({ort.__version__}) has no {wanted}; if both 'onnxruntime' and "
                       f"'{pkg}' are installed, uninstall both and reinstall only {pkg}")
    if not reasons:
        driver = cuda_driver_problem()
        reasons.append(driver or "the provider did not start; run with ORT logging on for details")
    return "; ".join(reasons)


def _session_options(threads: int | None) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = int(threads)
    return so


def create_session(path: str, providers: list, threads: int | None, quiet: bool):
    """-> (session, captured_log). Any failure to read the model becomes a UserError."""
    ort.set_default_logger_severity(3)
    log = ""
    try:
        if quiet:
            with captured_native_output() as captured:
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


def parse_device(device: str) -> tuple[str, int]:
    """"auto" | "cpu" | "cuda[:N]" | "gpu" | "tensorrt[:N]" -> (kind, device id)."""
    dev = str(device or "auto").strip().lower()
    if dev == "gpu":
        dev = "cuda"
    m = re.fullmatch(r"(cuda|tensorrt)(?::(\d+))?", dev)
    if m:
        return m.group(1), int(m.group(2) or 0)
    if dev in DEVICES:
        return dev, 0
    raise UserError(f"device: {device!r}; expected one of {', '.join(DEVICES)} (or cuda:N)")


def _preload_gpu_libraries() -> str:
    """ORT >= 1.21: find CUDA / cuDNN libraries shipped as pip nvidia-* packages (once). -> its log."""
    global _preloaded
    if _preloaded or not hasattr(ort, "preload_dlls"):
        return ""
    with captured_native_output() as captured:
        with contextlib.suppress(Exception):
            ort.preload_dlls()
    _preloaded = True
    return captured[0] if captured else ""


def _unavailable_message(kind: str, reason: str, actual: str) -> str:
    name = "CUDA" if kind == "cuda" else "TensorRT"
    cuda_major = str(getattr(ort, "cuda_version", "") or "").split(".")[0]
    need = f"CUDA {cuda_major}" if cuda_major else "CUDA 12/13"
    install = f"install onnxruntime-gpu with {need} libraries (pip install 'onnxruntime-gpu[cuda,cudnn]')"
    if kind == "tensorrt":
        install += " and TensorRT 10 (pip install tensorrt)"
    return (f"{name} requested but onnxruntime could not load it ({reason}); {install}"
            f"{FALLBACK_HINT.format(actual.replace('ExecutionProvider', ''))}")


def open_session(path: str, device: str, threads: int | None, allow_fallback: bool):
    """The session for `device`, on the provider asked for (or a warned-about CPU fallback when allowed)."""
    kind, device_id = parse_device(device)
    if kind == "cpu":
        return create_session(path, [CPU], threads, quiet=False)[0]
    available = ort.get_available_providers()
    if kind == "auto":
        # Auto means auto: CUDA when it really loads, else CPU, silently.
        if CUDA not in available or cuda_driver_problem() is not None:
            return create_session(path, [CPU], threads, quiet=False)[0]
        wanted, providers = CUDA, [(CUDA, {"device_id": device_id}), CPU]
    elif kind == "cuda":
        wanted, providers = CUDA, [(CUDA, {"device_id": device_id}), CPU]
    else:
        wanted, providers = TENSORRT, [(TENSORRT, {"device_id": device_id}), (CUDA, {"device_id": device_id}), CPU]
    providers = [p for p in providers if (p[0] if isinstance(p, tuple) else p) in available] or [CPU]
    preload_log = _preload_gpu_libraries()
    sess, log = create_session(path, providers, threads, quiet=True)
    actual = sess.get_providers()[0]
    if actual == wanted or kind == "auto":
        return sess
    reason = load_failure_reason(log + "\n" + preload_log, wanted)
    if not allow_fallback:
        raise UserError(_unavailable_message(kind, reason, actual))
    name = "CUDA" if kind == "cuda" else "TensorRT"
    warnings.warn(f"{name} requested but not available ({reason}); running on {actual}", RuntimeWarning,
                  stacklevel=3)
    return sess
