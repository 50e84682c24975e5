"""`toolkit benchmark --torch / --compile`: the run's PyTorch model (eager FP32; on CUDA also autocast FP16;
torch.compile) timed beside the ONNX sessions, and its cold-start probe. The CLI hands load_torch_backends to
run_benchmark (`torch_backends`). torch is imported inside the functions, so the probe's import_s includes it.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Optional

import numpy as np

from toolkit import artifacts
from toolkit.errors import UserError, first_line
from toolkit.preprocess import SERVE_FORMATS, Preprocess
from toolkit.runtime.benchmark import BackendRecord, ExtraBackends
from toolkit.runtime.benchmark.backends import DecodeSplit, first_runs, run_probe
from toolkit.runtime.benchmark.records import E2E_TOP_K


class TorchBackend:
    """The run's PyTorch model from its checkpoint, eager or compiled, FP32 or autocast FP16
    (toolkit.runtime.benchmark.Backend)."""

    modes = ("model", "end_to_end")

    def __init__(self, checkpoint: str, device: str, threads: int, compiled: bool, amp: bool, preprocess,
                 flops: int):
        import torch

        from toolkit.train.model import model_from_checkpoint

        self.torch, self.amp, self.may_fail = torch, amp, compiled
        backend, precision = ("torch-compile" if compiled else "torch-eager"), ("fp16-amp" if amp else "fp32")
        provider = "torch.compile (inductor)" if compiled else "PyTorch eager"
        torch.set_num_threads(int(threads))
        t = time.perf_counter()
        model, ckpt = model_from_checkpoint(checkpoint)
        self.dev = torch.device(device)  # cpu, cuda or cuda:N
        self.model = model.to(self.dev).eval()
        self.preprocess = preprocess or Preprocess(**ckpt["recipe"]["preprocess"])  # the probe's: its recipe's
        self.record = BackendRecord(
            key=f"{backend}/{device}/{precision}", backend=backend, engine="torch", engine_device=provider,
            inference_precision=precision, device=device, precision=precision, provider=provider, providers=[provider],
            file=checkpoint, file_bytes=os.path.getsize(checkpoint), flops_per_image=flops, flops_by_op={},
            provider_options={}, session_options={"torch_threads": torch.get_num_threads(), "inference_mode": True,
                                                  "autocast": "float16" if amp else None, "compile": compiled})
        try:
            self.model = torch.compile(self.model) if compiled else self.model
        except Exception as exc:  # noqa: BLE001 - torch.compile may not work here: a failed row that says why
            self.record.status, self.record.error = "failed", first_line(exc, 300)
        self.session_s = time.perf_counter() - t

    def _forward(self, x):
        torch = self.torch
        with torch.inference_mode(), torch.autocast(self.dev.type, dtype=torch.float16, enabled=self.amp):
            return self.model(x)

    def prepare(self, batch: int, pixels: np.ndarray, jpegs: dict) -> None:
        self.x = self.torch.from_numpy(self.preprocess.normalize(pixels)).to(self.dev)
        self.jpegs, self.split = jpegs.get("end_to_end"), DecodeSplit()

    def _top_k(self, arrays: list) -> None:
        """The ONNX rows' end-to-end steps after decoding: normalise, the model, softmax and top-k on the host."""
        torch = self.torch
        logits = self._forward(torch.from_numpy(self.preprocess.normalize(np.stack(arrays))).to(self.dev))
        with torch.inference_mode():
            top = torch.softmax(logits.float(), dim=1).topk(min(E2E_TOP_K, logits.shape[1]), dim=1)
            top.values.cpu(), top.indices.cpu()

    def run(self, mode: str) -> None:
        if mode == "end_to_end":  # on the same decode pool as the ONNX rows
            self.split.call(mode, lambda j: self.preprocess.pixels(j, formats=SERVE_FORMATS), self.jpegs, self._top_k)
            return
        self._forward(self.x)
        if self.dev.type == "cuda":
            self.torch.cuda.synchronize()

    def decode_share(self, mode: str) -> Optional[float]:
        return self.split.share(mode)

    def cold_start(self, threads: int, sizes: tuple) -> dict:
        """probe_torch in a fresh process (torch.compile's starts with an empty inductor cache)."""
        return run_probe({"probe": f"{__name__}:probe_torch", "checkpoint": self.record.file, "threads": threads,
                          "device": self.record.device, "batch_sizes": list(sizes), "compile": self.may_fail,
                          "amp": self.amp})


def find_checkpoint(meta: dict, model_path: str, checkpoint: Optional[str]) -> str:
    """The checkpoint the export was made from: `checkpoint` when given, else the file or run its metadata names
    (relative to the working directory or to the project root above exports/)."""
    if checkpoint:
        return artifacts.run_checkpoint(os.fspath(checkpoint))
    tried = [c for c in (meta.get("checkpoint"), meta.get("source_run")) if isinstance(c, str) and c]
    root = os.path.dirname(os.path.dirname(os.path.abspath(model_path)))
    for path in (p for c in tried for p in (c, os.path.join(root, c)) if os.path.exists(p)):
        try:
            return artifacts.run_checkpoint(path)
        except UserError:  # a run folder without its checkpoints
            continue
    where = f" (looked for {', '.join(tried)})" if tried else " (its metadata names no checkpoint)"
    raise UserError(f"--torch: the PyTorch checkpoint of {model_path} is not here{where}; expected the run that "
                    "exported it, or pass checkpoint=PATH")


def load_torch_backends(info: dict, preprocess, devices: tuple, threads: int, options,
                        live: Callable[[str], None]) -> ExtraBackends:
    """The PyTorch model of the export's checkpoint on each device (TensorRT's card for tensorrt): eager FP32
    (options.torch; on CUDA also autocast FP16) and compiled (options.compile): a BackendLoader. A
    torch.compile that fails to build is a failed backend, not an error."""
    import torch

    meta, flops = info["metadata"], info["flops"]["flops"]  # PyTorch runs the FP32 graph's FLOPs
    checkpoint = find_checkpoint(meta, info["path"], options.checkpoint)
    backends = []
    for device in dict.fromkeys(d.replace("tensorrt", "cuda") for d in devices):
        variants = [(False, False)] * options.torch + [(False, True)] * (options.torch and device != "cpu") \
            + [(True, False)] * options.compile  # (compiled, amp)
        for use_compile, amp in variants:
            live(f"loading PyTorch {'compile' if use_compile else 'eager'} on {device}")
            if device != "cpu" and not torch.cuda.is_available():
                raise UserError("device cuda: torch sees no CUDA device for the --torch baseline; "
                                "install a CUDA build of torch or drop --torch")
            backends.append(TorchBackend(checkpoint, device, threads, use_compile, amp, preprocess, flops))
    other = meta.get("checkpoint_sha256") and artifacts.sha256_file(checkpoint) != meta["checkpoint_sha256"]
    notes = [f"{checkpoint} is not the checkpoint this model was exported from (sha256 differs); the PyTorch rows "
             "time another set of weights of the same architecture"] * bool(other)
    return ExtraBackends(backends, checkpoint, notes)


def probe_torch(spec: dict) -> dict:
    """Runs in a fresh interpreter: build the PyTorch model, first inference per batch size, memory."""
    t0 = time.perf_counter()
    import torch

    from toolkit.train import model  # noqa: F401 - its import counts in import_s, as torch's does
    out, b = first_runs(spec, t0, lambda: TorchBackend(spec["checkpoint"], spec["device"], spec["threads"],
                                                       spec["compile"], spec["amp"], None, 0))
    if b.dev.type == "cuda":
        out["torch_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out
