"""What the rounds time: the `Backend` protocol, a Predictor per engine x precision x device (OnnxBackend),
the reference GEMM, and the synthetic JPEGs.

The PyTorch backends (--torch, --compile) satisfy the same protocol on the torch side
(toolkit.train.torch_backend); the CLI hands their loader to run_benchmark (`torch_backends`).
"""
from __future__ import annotations

import io
import re
import time
from dataclasses import dataclass
from typing import Callable, Optional, Protocol

import numpy as np

from toolkit.errors import UserError
from toolkit.runtime.benchmark import engine_parts
from toolkit.runtime.benchmark.options import Combo
from toolkit.runtime.benchmark.peak import ort_matmul_session
from toolkit.runtime.benchmark.records import E2E_IMAGES, E2E_JPEG_QUALITY, E2E_TOP_K, BackendRecord, Skipped

INPUT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}


class Backend(Protocol):
    """One loaded model the rounds time."""

    record: BackendRecord  # what it is, read back (key, engine, provider, options...); filled in as measured
    modes: tuple  # the modes it runs: "model", "end_to_end" (500x375 JPEGs), "end_to_end_12mp" (12 MP JPEGs)
    session_s: float  # seconds to load it in this process
    may_fail: bool  # a failure on its first call is recorded, not raised (torch.compile)

    def prepare(self, batch: int, pixels: np.ndarray, jpegs: dict) -> None:
        """Before a batch size: `pixels` (decoded, preprocessed uint8 NHWC), `jpegs` {mode: [bytes] * batch}."""

    def run(self, mode: str) -> None:
        """One timed call of `mode` on what prepare got."""

    def probe_spec(self, threads: int, sizes: tuple) -> dict:
        """What the fresh-process cold-start probe (probe.py) needs to rebuild it."""


def synthetic_jpegs(count: int, size: tuple = E2E_IMAGES["end_to_end"], seed: int = 0) -> list:
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


class OnnxBackend:
    """A Predictor on one engine x precision x device; on CUDA, model-only calls use IO binding."""

    modes = ("model", "end_to_end", "end_to_end_12mp")
    may_fail = False

    def __init__(self, info: dict, combo: Combo, threads: int, max_batch: int, cache_dir: Optional[str] = None):
        from toolkit.runtime.predictor import Predictor

        self.combo, self.threads = combo, threads
        t = time.perf_counter()
        try:  # the Predictor owns provider truth: asking for CUDA where it can't load is a UserError there
            self.predictor = Predictor(info["path"], device=combo.device, threads=threads, batch_size=max_batch,
                                       engine=combo.engine,
                                       **engine_parts.predictor_options(combo.engine, combo.inference_precision, cache_dir))
        except UserError as exc:
            if combo.device == "cpu":
                raise
            msg = re.sub(r",? or pass allow_fallback=True / --allow-fallback to run on \w+$", "", str(exc))
            raise UserError(f"--device {combo.device}: {msg}; or leave {combo.device} out of --device") from None
        self.session_s = time.perf_counter() - t
        p = self.predictor
        options, provider_options = engine_parts.read_back(p, threads)
        self.record = BackendRecord(
            key=combo.key, backend=combo.engine, engine=p.engine, engine_device=p.engine_device,
            inference_precision=p.inference_precision, device=combo.device, precision=combo.precision,
            provider=p.provider, providers=list(p.providers), file=info["path"], file_bytes=info["file_bytes"],
            flops_per_image=info["flops"]["flops"], flops_by_op=info["flops"]["by_op"], session_options=options,
            provider_options=provider_options)
        inp = p.session.get_inputs()[0]
        self.in_name, self.in_dtype = inp.name, INPUT_DTYPES.get(inp.type, np.float32)
        outs = [o.name for o in p.session.get_outputs()]
        self.out_names = ["logits"] if "logits" in outs else outs[:1]
        self.device_id = int(provider_options.get(p.provider, {}).get("device_id", 0) or 0)
        self.on_gpu = p.provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        self.binding = None

    def probe_spec(self, threads: int, sizes: tuple) -> dict:
        return {"kind": self.combo.engine, "path": self.record.file, "device": self.combo.device, "threads": threads,
                "batch_sizes": list(sizes), "precision": self.combo.precision}

    def prepare(self, batch: int, pixels: np.ndarray, jpegs: dict) -> None:
        x = pixels if self.predictor.raw else self.predictor.preprocess.normalize(pixels)
        self.x = np.ascontiguousarray(x.astype(self.in_dtype, copy=False))
        self.jpegs = jpegs
        if self.on_gpu:
            import onnxruntime as ort

            self.x_dev = ort.OrtValue.ortvalue_from_numpy(self.x, "cuda", self.device_id)
            self.binding = self.predictor.session.io_binding()
            self.binding.bind_ortvalue_input(self.in_name, self.x_dev)
            for name in self.out_names:
                self.binding.bind_output(name, "cuda", self.device_id)

    def run(self, mode: str) -> None:
        if mode != "model":
            self.predictor.predict(self.jpegs[mode], top_k=E2E_TOP_K)
        elif self.binding is not None:
            self.predictor.session.run_with_iobinding(self.binding)
            self.binding.synchronize_outputs()
        else:
            self.predictor.session.run(self.out_names, {self.in_name: self.x})


class GemmReference:
    """The FP32 GEMM of the peak as one more entry of the rounds: the same engine (ORT MatMul), threads and
    noise as the models, so a model's GFLOP/s can be read against it."""

    key, mode = "gemm/cpu/fp32", "reference"

    def __init__(self, threads: int, n: int):
        self.session = ort_matmul_session(n, "fp32", "cpu", threads)
        rng = np.random.default_rng(0)
        self.feed = {name: rng.standard_normal((n, n)).astype(np.float32) for name in ("a", "b")}
        self.flops = 2.0 * n ** 3

    def run(self) -> None:
        self.session.run(None, self.feed)


def load_onnx_backends(infos: dict, combos: list, skipped: list, threads: int, max_batch: int,
                       live: Callable[[str], None]) -> list:
    """Every combination, loaded once: device problems surface here, before anything is timed. A bf16
    combination the machine can't run joins `skipped` (an error only when it is all there is)."""
    loaded = []
    for combo in combos:
        live(f"loading {combo.key}")
        try:
            loaded.append(OnnxBackend(infos[combo.precision], combo, threads, max_batch))
        except UserError as exc:
            if combo.precision != "bf16" or len(combos) == 1:
                raise
            skipped.append(Skipped(combo.engine, combo.device, combo.precision, str(exc)))
    return loaded


@dataclass
class ExtraBackends:
    """What a backend loader from another layer (the torch side: --torch, --compile) hands back."""

    backends: list  # [Backend]
    failed: list  # [BackendRecord]: those that failed to load (torch.compile), status "failed"
    checkpoint: Optional[str]  # the file they load (the record's model.checkpoint)
    notes: list  # what the record should say about them


class BackendLoader(Protocol):
    """Loads the PyTorch backends of an export (toolkit.train.torch_backend.load_torch_backends; the CLI
    passes it to run_benchmark as `torch_backends`, so the runtime never imports the torch side)."""

    def __call__(self, info: dict, preprocess, devices: tuple, threads: int, options,
                 live: Callable[[str], None]) -> ExtraBackends:
        """info: model_file.inspect_model of the FP32 export (path, metadata, FLOPs); preprocess: its
        Preprocess; options: the BenchmarkOptions (torch, compile, checkpoint)."""
