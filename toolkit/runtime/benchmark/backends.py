"""What the rounds time: a Predictor on an engine adapter (toolkit.runtime.engines: ONNX Runtime or OpenVINO)
per engine x precision x device, the reference GEMM, and the synthetic JPEGs.

The PyTorch backends (--torch, --compile) live on the torch side, in toolkit.train.torch_backend.
"""
from __future__ import annotations

import io
import re
import time
from typing import Optional

import numpy as np

from toolkit.errors import UserError
from toolkit.runtime.benchmark import peak as peak_mod
from toolkit.runtime.engines import EngineOptions, adapter_for
from toolkit.runtime.benchmark.combos import Combo
from toolkit.runtime.benchmark.schema import E2E_IMAGE, E2E_JPEG_QUALITY, E2E_TOP_K


def synthetic_jpegs(count: int, size: tuple = E2E_IMAGE, seed: int = 0) -> list:
    """Photo-like JPEG files in memory: smooth colour fields plus noise, so they compress like pictures."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    out = []
    for _ in range(count):
        small = rng.integers(0, 256, (h // 25 + 1, w // 25 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
        arr = np.asarray(img).astype(np.int16) + rng.integers(-12, 13, (h, w, 3), dtype=np.int16)
        buf = io.BytesIO()
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=E2E_JPEG_QUALITY)
        out.append(buf.getvalue())
    return out


class _Backend:
    """One loaded model: a Predictor for an engine x precision x device, or a PyTorch model."""

    key: str = ""
    backend: str = ""
    engine: str = ""  # onnxruntime | openvino | torch (the PyTorch backends leave it to `backend`)
    engine_device: Optional[str] = None  # the device that runs, read back (ORT provider / OpenVINO device)
    inference_precision: Optional[str] = None  # what floating-point layers compute in, read back
    photo_modes: tuple = ()  # extra end-to-end modes (the 12 MP case) this backend takes: prepare_photos
    device: str = "cpu"
    precision: str = "fp32"
    provider: str = ""
    providers: list = []
    file: Optional[str] = None
    file_bytes: Optional[int] = None
    flops: Optional[int] = None
    flops_by_op: dict = {}
    session_options: dict = {}
    provider_options: dict = {}
    session_s: Optional[float] = None

    def prepare(self, batch: int, pixels: np.ndarray, jpegs: list) -> None:
        raise NotImplementedError

    def probe_spec(self, threads: int, sizes: tuple) -> dict:
        raise NotImplementedError

    def run(self, mode: str) -> None:
        raise NotImplementedError

    def cold_starts(self, spec: dict, run_probe) -> tuple:
        """(the fresh-process cold start, extra variants such as a model cache, or None)."""
        return run_probe(spec), None


class _EngineBackend(_Backend):
    """A Predictor on one engine adapter (toolkit.runtime.engines.open_engine, through the Predictor)."""

    photo_modes = ("end_to_end_12mp",)

    def __init__(self, info: dict, combo: Combo, threads: int, max_batch: int):
        from toolkit.runtime.predictor import Predictor

        self.combo, self.backend = combo, combo.engine
        self.precision, self.device, self.file = combo.precision, combo.device, info["path"]
        self.key = combo.key
        self.file_bytes = info["file_bytes"]
        self.flops, self.flops_by_op = info["flops"]["flops"], info["flops"]["by_op"]
        self.threads = threads
        t = time.perf_counter()
        # The Predictor owns provider truth: asking for CUDA where it can't load is a UserError there.
        try:
            options = EngineOptions(device=combo.device, threads=threads, precision=combo.inference_precision)
            self.predictor = Predictor(self.file, batch_size=max_batch, engine=combo.engine, options=options)
        except UserError as exc:
            if combo.device == "cpu":
                raise
            msg = re.sub(r",? or pass allow_fallback=True / --allow-fallback to run on \w+$", "", str(exc))
            raise UserError(f"--device {combo.device}: {msg}; or leave {combo.device} out of --device") from None
        self.session_s = time.perf_counter() - t
        self.session = self.predictor.session
        self.provider = self.predictor.provider
        self.providers = list(self.predictor.providers)
        self.engine = self.predictor.engine
        self.engine_device = self.predictor.engine_device
        self.inference_precision = self.predictor.inference_precision
        info = self.predictor.engine_info
        self.session_options, self.provider_options = dict(info.session_options), dict(info.provider_options)
        inp = self.session.inputs[0]
        self.in_name = inp.name
        self.in_dtype = np.dtype(inp.dtype)
        outs = [o.name for o in self.session.outputs]
        self.out_names = ["logits"] if "logits" in outs else outs[:1]
        self._call = None

    def cold_starts(self, spec: dict, run_probe) -> tuple:
        return adapter_for(self.engine).cold_starts(spec, run_probe)

    def probe_spec(self, threads: int, sizes: tuple) -> dict:
        """What the fresh-process cold-start probe needs to rebuild this backend."""
        return {"kind": self.engine, "path": self.file, "device": self.device, "threads": threads,
                "batch_sizes": list(sizes), "inference_precision": self.combo.inference_precision}

    def prepare_photos(self, photos: list) -> None:
        """The 12 MP JPEGs of mode end_to_end_12mp (after prepare)."""
        self._photos = photos

    def prepare(self, batch: int, pixels: np.ndarray, jpegs: list) -> None:
        pre = self.predictor.preprocess
        x = pixels if self.predictor.raw else pre.normalize(pixels)
        self._x = np.ascontiguousarray(x.astype(self.in_dtype, copy=False))
        self._jpegs = jpegs
        self._call = self.session.prepared({self.in_name: self._x}, self.out_names)   # on a GPU: IO binding

    def run(self, mode: str) -> None:
        if mode == "end_to_end":
            self.predictor.predict(self._jpegs, top_k=E2E_TOP_K)
        elif mode == "end_to_end_12mp":
            self.predictor.predict(self._photos, top_k=E2E_TOP_K)
        else:
            self._call()


class _GemmReference:
    """The FP32 GEMM of the peak measurement as one more entry of the rounds: the same engine (ORT
    MatMul), threads and noise as the models, so a model's GFLOP/s can be read against it."""

    key, mode = "gemm/cpu/fp32", "reference"

    def __init__(self, threads: int, n: Optional[int] = None):
        import onnxruntime as ort

        n = int(n or peak_mod.PEAK_MATRIX["cpu"])  # read at call time: tests shrink it
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads)
        so.log_severity_level = 3
        self.session = ort.InferenceSession(peak_mod._matmul_model(n, "fp32").SerializeToString(), so,
                                            providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        self.feed = {"a": rng.standard_normal((n, n)).astype(np.float32),
                     "b": rng.standard_normal((n, n)).astype(np.float32)}
        self.n, self.flops = n, 2.0 * n ** 3

    def run(self) -> None:
        self.session.run(None, self.feed)
