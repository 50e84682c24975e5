"""What the rounds time: a Predictor (ONNX Runtime or OpenVINO) per engine x precision x device, the
reference GEMM, and the synthetic JPEGs.

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
from toolkit.runtime.benchmark.combos import Combo
from toolkit.runtime.benchmark.schema import E2E_IMAGE, E2E_JPEG_QUALITY, E2E_TOP_K

ORT_INPUT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}


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


def _ort_options(session) -> tuple[dict, dict]:
    """What the session really runs with, read back from it."""
    so = session.get_session_options()
    level = so.graph_optimization_level
    opts = {"graph_optimization_level": getattr(level, "name", str(level)),
            "intra_op_num_threads": so.intra_op_num_threads, "inter_op_num_threads": so.inter_op_num_threads,
            "execution_mode": getattr(so.execution_mode, "name", str(so.execution_mode)),
            "enable_cpu_mem_arena": so.enable_cpu_mem_arena, "enable_mem_pattern": so.enable_mem_pattern}
    try:
        for key in ("session.intra_op.allow_spinning", "session.disable_prepacking"):
            value = so.get_session_config_entry(key)
            if value:
                opts[key] = value
    except Exception:  # noqa: BLE001 - config entry lookup raises when unset
        pass
    try:
        prov = {k: dict(v) for k, v in session.get_provider_options().items()}
    except Exception:  # noqa: BLE001
        prov = {}
    keep = ("device_id", "cudnn_conv_algo_search", "cudnn_conv_use_max_workspace", "do_copy_in_default_stream",
            "use_tf32", "arena_extend_strategy", "enable_cuda_graph", "trt_fp16_enable", "trt_int8_enable")
    prov = {k: {kk: vv for kk, vv in v.items() if kk in keep} for k, v in prov.items()}
    return opts, prov


def _openvino_options(session, threads: int) -> dict:
    """What the compiled OpenVINO model runs with, read back from it (toolkit.runtime.openvino_session)."""
    return {"performance_hint": session.hint, "inference_precision": session.inference_precision,
            "optimal_infer_requests": session.optimal_requests, "inference_num_threads": threads,
            "compile_s": round(session.compile_s, 4), "cache_dir": session.cache_dir}


class _OrtBackend(_Backend):
    """A Predictor on either ONNX engine (the class name is the one the torch side and tests know)."""

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
            self.predictor = Predictor(self.file, device=combo.device, threads=threads, batch_size=max_batch,
                                       engine=combo.engine,
                                       precision=combo.inference_precision if combo.engine == "openvino" else None)
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
        if self.engine == "openvino":
            self.session_options, self.provider_options = _openvino_options(self.session, threads), {}
        else:
            self.session_options, self.provider_options = _ort_options(self.session)
        inp = self.session.get_inputs()[0]
        self.in_name = inp.name
        self.in_dtype = ORT_INPUT_DTYPES.get(inp.type, np.float32)
        outs = [o.name for o in self.session.get_outputs()]
        self.out_names = ["logits"] if "logits" in outs else outs[:1]
        self.on_gpu = self.engine == "onnxruntime" and self.provider in ("CUDAExecutionProvider",
                                                                           "TensorrtExecutionProvider")
        self._binding = None

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
        self._binding = None
        if self.on_gpu:
            import onnxruntime as ort

            device_id = int(self.provider_options.get(self.provider, {}).get("device_id", 0) or 0)
            self._x_dev = ort.OrtValue.ortvalue_from_numpy(self._x, "cuda", device_id)
            binding = self.session.io_binding()
            binding.bind_ortvalue_input(self.in_name, self._x_dev)
            for name in self.out_names:
                binding.bind_output(name, "cuda", device_id)
            self._binding = binding

    def run(self, mode: str) -> None:
        if mode == "end_to_end":
            self.predictor.predict(self._jpegs, top_k=E2E_TOP_K)
        elif mode == "end_to_end_12mp":
            self.predictor.predict(self._photos, top_k=E2E_TOP_K)
        elif self._binding is not None:
            self.session.run_with_iobinding(self._binding)
            self._binding.synchronize_outputs()
        else:
            self.session.run(self.out_names, {self.in_name: self._x})


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
