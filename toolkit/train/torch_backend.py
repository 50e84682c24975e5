"""`toolkit benchmark --torch / --compile`: the PyTorch side of the inference benchmark.

The run's PyTorch model (eager FP32; on CUDA also autocast FP16; torch.compile) timed beside the
ONNX Runtime sessions, and its cold-start probe (`python -m toolkit.train.torch_backend --probe SPEC`).
The runtime benchmark (toolkit.runtime.benchmark.run) imports this module only when --torch or
--compile is asked for. torch itself is imported inside the functions, so that the probe's import_s
and rss_base_mb include it, as they did before the benchmark was split.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, Optional

import numpy as np

from toolkit import artifacts
from toolkit.errors import UserError, first_line
from toolkit.runtime.benchmark.backends import _Backend
from toolkit.runtime.benchmark.machine import _maxrss_mb
from toolkit.runtime.benchmark.probe import first_runs, main
from toolkit.runtime.benchmark.schema import E2E_TOP_K


class _TorchBackend(_Backend):
    """The run's PyTorch model from its checkpoint, eager or compiled, FP32 or autocast FP16."""

    def __init__(self, checkpoint: str, device: str, threads: int, compiled: bool, amp: bool, preprocess):
        import torch

        from toolkit.train.model import model_from_checkpoint

        self.torch = torch
        self.backend = "torch-compile" if compiled else "torch-eager"
        self.device = device  # cpu, cuda or cuda:N
        self.precision = "fp16-amp" if amp else "fp32"
        self.key = f"{self.backend}/{self.device}/{self.precision}"
        self.provider = "torch.compile (inductor)" if compiled else "PyTorch eager"
        self.file = checkpoint
        self.file_bytes = os.path.getsize(checkpoint)
        self.amp = amp
        self.preprocess = preprocess
        self.compile_error: Optional[str] = None
        torch.set_num_threads(int(threads))
        t = time.perf_counter()
        model, _ = model_from_checkpoint(checkpoint)
        self.dev = torch.device(self.device)
        model = model.to(self.dev).eval()
        self.params_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        self.model = torch.compile(model) if compiled else model
        self.session_s = time.perf_counter() - t
        self.session_options = {"torch_threads": torch.get_num_threads(), "inference_mode": True,
                                "autocast": "float16" if amp else None, "compile": compiled}
        self.providers = [self.provider]

    def _sync(self):
        if self.dev.type == "cuda":
            self.torch.cuda.synchronize()

    def _forward(self, x):
        torch = self.torch
        with torch.inference_mode():
            if self.amp:
                with torch.autocast("cuda", dtype=torch.float16):
                    return self.model(x)
            return self.model(x)

    def prepare(self, batch: int, pixels: np.ndarray, jpegs: list) -> None:
        self._x = self.torch.from_numpy(self.preprocess.normalize(pixels)).to(self.dev)
        self._jpegs = jpegs

    def run(self, mode: str) -> None:
        torch = self.torch
        if mode == "end_to_end":
            from toolkit.preprocess import SERVE_FORMATS

            pixels = np.stack([self.preprocess.pixels(j, formats=SERVE_FORMATS)
                               for j in self._jpegs])
            x = torch.from_numpy(self.preprocess.normalize(pixels)).to(self.dev)
            logits = self._forward(x)
            with torch.inference_mode():
                top = torch.softmax(logits.float(), dim=1).topk(min(E2E_TOP_K, logits.shape[1]), dim=1)
                top.values.cpu(), top.indices.cpu()
        else:
            self._forward(self._x)
            self._sync()


    def probe_spec(self, threads: int, sizes: tuple) -> dict:
        """What the fresh-process cold-start probe needs to rebuild this backend."""
        return {"kind": "torch", "checkpoint": self.file, "device": self.device, "threads": threads,
                "batch_sizes": list(sizes), "compile": self.backend == "torch-compile",
                "amp": self.precision == "fp16-amp"}


def find_checkpoint(meta: dict, model_path: str, checkpoint: Optional[str]) -> str:
    """The checkpoint the export was made from: `checkpoint` when given, else what its metadata names."""
    if checkpoint:
        return artifacts.run_checkpoint(os.fspath(checkpoint))
    tried = []
    ckpt = meta.get("checkpoint")
    if isinstance(ckpt, str) and ckpt:
        candidates = [ckpt]
        if not os.path.isabs(ckpt):  # written relative to the project root, which holds exports/
            candidates.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(model_path))), ckpt))
        for c in candidates:
            if os.path.isfile(c):
                return c
        tried.append(ckpt)
    run = meta.get("source_run")
    if isinstance(run, str) and run:
        try:
            return artifacts.run_checkpoint(run)
        except UserError:
            tried.append(run)
    where = f" (looked for {', '.join(tried)})" if tried else " (its metadata names no checkpoint)"
    raise UserError(f"--torch: the PyTorch checkpoint of {model_path} is not here{where}; expected the run that "
                    "exported it, or pass checkpoint=PATH")


def _variants(device: str, eager: bool, compiled: bool) -> list:
    """(compiled, amp) pairs to load on one device: eager FP32, eager autocast FP16 on CUDA, compiled FP32."""
    out = [(False, False)] if eager else []
    if device != "cpu" and eager:
        out.append((False, True))
    if compiled:
        out.append((True, False))
    return out


def load_torch_backends(checkpoint: str, devices: tuple, threads: int, preprocess, eager: bool, compiled: bool,
                        live: Callable[[str], None]) -> tuple[list, list]:
    """(backends, failures) of the PyTorch model on each device (TensorRT's card for tensorrt); a
    torch.compile that fails to build is a failure, not an error."""
    import torch

    backends, failed = [], []
    for device in dict.fromkeys(d.replace("tensorrt", "cuda") for d in devices):
        for use_compile, amp in _variants(device, eager, compiled):
            live(f"loading PyTorch {'compile' if use_compile else 'eager'} on {device}")
            if device != "cpu" and not torch.cuda.is_available():
                raise UserError("device cuda: torch sees no CUDA device for the --torch baseline; "
                                "install a CUDA build of torch or drop --torch")
            try:
                backends.append(_TorchBackend(checkpoint, device, threads, use_compile, amp, preprocess))
            except UserError:
                raise
            except Exception as exc:  # noqa: BLE001 - torch.compile may not work here; say why
                if not use_compile:
                    raise
                failed.append({"key": f"torch-compile/{device}/fp32", "backend": "torch-compile", "device": device,
                               "precision": "fp32", "error": first_line(exc, 300)})
    return backends, failed


def checkpoint_note(checkpoint: str, meta: dict) -> Optional[str]:
    """A note when the checkpoint is not the one the export was made from (its sha256 differs)."""
    from toolkit.train.checkpoint import sha256_file

    if not meta.get("checkpoint_sha256") or sha256_file(checkpoint) == meta["checkpoint_sha256"]:
        return None
    return (f"{checkpoint} is not the checkpoint this model was exported from (sha256 differs); the "
            "PyTorch rows time another set of weights of the same architecture")


def probe_torch(spec: dict) -> dict:
    """Runs in a fresh interpreter: build the PyTorch model, first inference per batch size, memory."""
    t0 = time.perf_counter()
    out: dict = {"rss_start_mb": _maxrss_mb()}
    import torch

    from toolkit.train.model import model_from_checkpoint
    out["import_s"] = time.perf_counter() - t0
    out["rss_base_mb"] = _maxrss_mb()
    torch.set_num_threads(int(spec["threads"]))
    t = time.perf_counter()
    model, ckpt = model_from_checkpoint(spec["checkpoint"])
    dev = torch.device(spec["device"].replace("tensorrt", "cuda"))
    model = model.to(dev).eval()
    if spec.get("compile"):
        model = torch.compile(model)
    out["session_s"] = time.perf_counter() - t
    out["provider"] = "torch.compile (inductor)" if spec.get("compile") else "PyTorch eager"
    c = int(ckpt["recipe"]["preprocess"]["crop"])

    def make(b):
        return torch.randn(b, 3, c, c, generator=torch.Generator().manual_seed(0)).to(dev)

    def call(x):
        with torch.inference_mode():
            if spec.get("amp"):
                with torch.autocast("cuda", dtype=torch.float16):
                    model(x)
            else:
                model(x)
        if dev.type == "cuda":
            torch.cuda.synchronize()
    first_runs(spec, out, make, call)
    if spec["device"] != "cpu":
        out["torch_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


if __name__ == "__main__":
    main(sys.argv[1:], probe_torch)
