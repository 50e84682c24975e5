"""The export under test (inspect_model, resolve_model) and what the rounds time: the `Backend` protocol, a
Predictor per engine x precision x device (OnnxBackend) and the synthetic JPEGs. Other layers' backends
(toolkit.train.torch_backend) come through a BackendLoader the CLI hands to run_benchmark. Cold start and
peak RSS come from a fresh process per backend: run_probe runs spec["probe"] (probe_onnx, probe_torch).
"""
from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

import numpy as np

from toolkit import artifacts, contract
from toolkit.errors import UserError, first_line
from toolkit.runtime.benchmark.machine import gpu_mem_of_pid, maxrss_mb
from toolkit.runtime.benchmark.options import Combo
from toolkit.runtime.benchmark.peak import count_flops
from toolkit.runtime.benchmark.records import E2E_IMAGES, E2E_JPEG_QUALITY, E2E_TOP_K, BackendRecord, Skipped
from toolkit.runtime.cold_start import run_fresh
from toolkit.runtime.decode_pool import shared_pool
from toolkit.runtime.engines import EngineOptions
from toolkit.runtime.engines.base import without_fallback_hint


def inspect_model(path: str) -> dict:
    """The contract (toolkit.contract.ModelContract; `metadata`: its JSON-decoded keys), graph input dims,
    file size and FLOPs of one file."""
    import onnx

    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises its own types
        raise UserError(f"{path}: not a readable ONNX model ({first_line(exc, 300)}); expected a .onnx file "
                        "written by toolkit export") from None
    model = contract.from_props(contract.props_of(proto), path)  # checked now, not after minutes of timing
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in (inputs[0].type.tensor_type.shape.dim if inputs else [])]
    # a toolkit export carries no external data (contract.check_model_file rejects it): the file is the model
    return {"path": path, "metadata": model.meta, "contract": model, "input_dims": dims,
            "file_bytes": os.path.getsize(path), "flops": count_flops(proto, image_size=model.preprocess.crop)}


def resolve_model(model: Optional[str], exports_dir: str, say: Callable) -> str:
    """The export to benchmark: `model`, or the newest one in `exports_dir` (or in `model`, a folder)."""
    if model is None or os.path.isdir(model):
        path = artifacts.newest_export(exports_dir if model is None else os.fspath(model))
        say(f"using the newest export {path}")
        return path
    model = os.fspath(model)
    if not os.path.isfile(model):
        raise UserError(f"{model}: no such model file; expected an ONNX export (exports/<name>.onnx) or leave it "
                        "out to use the newest export")
    if not model.endswith(".onnx"):
        raise UserError(f"{model}: not an .onnx file; expected an export written by toolkit export "
                        "(exports/<name>.onnx)")
    return model


class Backend(Protocol):
    """One loaded model the rounds time."""

    record: BackendRecord  # what it is, read back (key, engine, provider, options...); filled in as measured
    modes: tuple  # the modes it runs: "model", "end_to_end" (500x375 JPEGs), "end_to_end_12mp" (12 MP JPEGs)
    may_fail: bool  # a failure on its first call is recorded, not raised (torch.compile)

    def prepare(self, batch: int, pixels: np.ndarray, jpegs: dict) -> None:
        """Before a batch size: `pixels` (decoded, preprocessed uint8 NHWC), `jpegs` {mode: [bytes] * batch}."""

    def run(self, mode: str) -> None:
        """One timed call of `mode` on what prepare got."""

    def decode_share(self, mode: str) -> Optional[float]:
        """End-to-end modes: the median share of a call spent decoding (DecodeSplit); None where not split."""

    def cold_start(self, threads: int, sizes: tuple) -> dict:
        """Its cold start and peak RSS, measured in a fresh process (run_probe) at each batch size."""


def synthetic_jpegs(count: int, size: tuple = E2E_IMAGES["end_to_end"], seed: int = 0) -> list:
    """Photo-like JPEG files in memory: smooth colour fields plus noise, so they compress like pictures."""
    from PIL import Image

    rng, (w, h), out = np.random.default_rng(seed), size, []
    for _ in range(count):
        small = rng.integers(0, 256, (h // 25 + 1, w // 25 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
        arr = np.asarray(img).astype(np.int16) + rng.integers(-12, 13, (h, w, 3), dtype=np.int16)
        buf = io.BytesIO()
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=E2E_JPEG_QUALITY)
        out.append(buf.getvalue())
    return out


@dataclass
class DecodeSplit:
    """End-to-end calls timed in two parts: decoding on the decode pool (every core), then the model;
    share(mode) is the median share of a call's wall time that went to decoding."""

    calls: dict = field(default_factory=dict)  # mode -> [(decode_s, total_s)]

    def call(self, mode: str, decode: Callable, jpegs: list, model: Callable[[list], object]) -> None:
        """model([decode(jpeg)]), decoded on the shared pool in order (the first error raised)."""
        start, arrays = time.perf_counter(), []
        for _, value, error in shared_pool().ordered(decode, jpegs, ahead=len(jpegs)):
            if error is not None:
                raise error
            arrays.append(value)
        decoded = time.perf_counter()
        model(arrays)
        self.calls.setdefault(mode, []).append((decoded - start, time.perf_counter() - start))

    def share(self, mode: str) -> Optional[float]:
        shares = [d / t for d, t in self.calls.get(mode, [])[1:] if t > 0]  # the first call pays one-off costs
        return round(float(np.median(shares)), 4) if shares else None


class OnnxBackend:
    """A Predictor on one engine x precision x device (the engine's adapter: IO binding on a GPU, read-back)."""

    modes = ("model", "end_to_end", "end_to_end_12mp")
    may_fail = False

    def __init__(self, info: dict, combo: Combo, threads: int, max_batch: int):
        from toolkit.runtime.predictor import Predictor

        self.combo = combo
        options = EngineOptions(device=combo.device, threads=threads, precision=combo.inference_precision)
        t = time.perf_counter()
        try:  # the Predictor owns provider truth: asking for CUDA where it can't load is a UserError there
            self.predictor = p = Predictor(info["path"], batch_size=max_batch, engine=combo.engine, options=options)
        except UserError as exc:
            if combo.device == "cpu":
                raise
            msg = without_fallback_hint(str(exc))
            raise UserError(f"--device {combo.device}: {msg}; or leave {combo.device} out of --device") from None
        self.session_s, self.preprocess, e = time.perf_counter() - t, p.preprocess, p.engine_info
        self.record = BackendRecord(
            key=combo.key, backend=combo.engine, engine=p.engine, engine_device=p.engine_device,
            inference_precision=p.inference_precision, device=combo.device, precision=combo.precision,
            provider=p.provider, providers=list(p.providers), file=info["path"], file_bytes=info["file_bytes"],
            flops_per_image=info["flops"]["flops"], flops_by_op=info["flops"]["by_op"],
            session_options=dict(e.session_options), provider_options=dict(e.provider_options))
        inp, outs = p.session.inputs[0], [o.name for o in p.session.outputs]
        self.in_name, self.in_dtype = inp.name, np.dtype(inp.dtype)
        self.out_names = ["logits"] if "logits" in outs else outs[:1]

    def cold_start(self, threads: int, sizes: tuple) -> dict:
        c = self.combo
        return run_probe({"probe": f"{__name__}:probe_onnx", "path": self.record.file, "engine": c.engine,
                          "device": c.device, "threads": threads, "batch_sizes": list(sizes), "precision": c.precision})

    def prepare(self, batch: int, pixels: np.ndarray, jpegs: dict) -> None:
        x = pixels if self.predictor.raw else self.predictor.preprocess.normalize(pixels)
        self.x = np.ascontiguousarray(x.astype(self.in_dtype, copy=False))
        self.jpegs, self.split = jpegs, DecodeSplit()
        self.call = self.predictor.session.prepared({self.in_name: self.x}, self.out_names)  # on a GPU: IO binding

    def run(self, mode: str) -> None:
        p = self.predictor  # end to end: Predictor.predict's own steps for one batch
        self.call() if mode == "model" else self.split.call(
            mode, p.prepare_one, self.jpegs[mode], lambda arrays: p.predict_batch(np.stack(arrays), E2E_TOP_K))

    def decode_share(self, mode: str) -> Optional[float]:
        return self.split.share(mode)


def random_pixels(batch: int, crop: int) -> np.ndarray:
    """Decoded, preprocessed uint8 NHWC images: for model-only calls any pixels of the right shape will do."""
    return np.random.default_rng(0).integers(0, 256, (batch, crop, crop, 3), dtype=np.uint8)


def probe_onnx(spec: dict) -> dict:
    """The cold-start probe of one OnnxBackend (ORT's session, OpenVINO's read + compile: compile_s)."""
    t0 = time.perf_counter()
    from toolkit.runtime.predictor import Predictor  # noqa: F401 - its import counts in import_s
    out, b = first_runs(spec, t0, lambda: OnnxBackend(
        {"path": spec["path"], "file_bytes": None, "flops": {"flops": 0, "by_op": {}}},
        Combo(spec["engine"], spec["device"], spec["precision"]), spec["threads"], max(spec["batch_sizes"])))
    return {**out, "compile_s": b.predictor.engine_info.load_s}


def first_runs(spec: dict, t0: float, build: Callable[[], Backend]) -> tuple[dict, Backend]:
    """In a fresh interpreter (run_probe), imports done since t0: build the backend, then the first inference
    per batch size (ascending) and the memory after it. Returns (the figures, the backend)."""
    out: dict = {"import_s": time.perf_counter() - t0, "rss_base_mb": maxrss_mb()}
    b = build()
    out.update(session_s=b.session_s, provider=b.record.provider, rss_session_mb=maxrss_mb(), first_inference_s={},
               peak_rss_mb={})
    for n in sorted(spec["batch_sizes"]):
        b.prepare(n, random_pixels(n, b.preprocess.crop), {})
        t = time.perf_counter()
        b.run("model")
        out["first_inference_s"][str(n)] = time.perf_counter() - t
        b.run("model")
        out["peak_rss_mb"][str(n)] = maxrss_mb()
    if spec["device"] != "cpu":
        out["gpu_mem_mb"] = gpu_mem_of_pid(os.getpid())
    return out, b


def run_probe(spec: dict, timeout: float = 3600) -> dict:
    """The cold-start probe spec["probe"] names, run on `spec` in a fresh interpreter, or {"error": why}."""
    cache = tempfile.mkdtemp(prefix="toolkit-inductor-") if spec.get("compile") else None
    t = time.perf_counter()
    try:  # a cold start compiles from nothing: inductor's on-disk cache starts empty
        out = run_fresh(spec, timeout, {"TORCHINDUCTOR_CACHE_DIR": cache} if cache else None)
    except RuntimeError as exc:  # it failed or timed out
        return {"error": f"cold-start probe failed: {str(exc)[:300]}"}
    finally:
        if cache:
            shutil.rmtree(cache, ignore_errors=True)
    return {**out, "process_wall_s": round(time.perf_counter() - t, 3), "isolated": True}


def load_onnx_backends(infos: dict, combos: list, skipped: list, threads: int, max_batch: int,
                       live: Callable[[str], None]) -> list:
    """Every combination, loaded once; a bf16 one the machine can't run joins `skipped` (an error only alone)."""
    loaded = []
    for combo in combos:  # device problems surface here, before anything is timed
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

    backends: list = field(default_factory=list)  # [Backend]; one whose record says "failed" is not timed
    checkpoint: Optional[str] = None  # the file they load (the record's model.checkpoint)
    notes: list = field(default_factory=list)  # what the record should say about them


# Loads other layers' backends of an export (toolkit.train.torch_backend.load_torch_backends); the CLI passes it to
# run_benchmark as `torch_backends`, so the runtime never imports the torch side. Its arguments: info (inspect_model
# of the FP32 export), preprocess (its Preprocess), devices, threads, options (the BenchmarkOptions), live (progress).
BackendLoader = Callable[[dict, Any, tuple, int, Any, Callable[[str], None]], ExtraBackends]
