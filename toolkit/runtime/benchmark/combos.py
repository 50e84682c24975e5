"""Which engine x device x precision combinations a benchmark runs, which file each reads, and why
the others are skipped.

A precision names a file and an inference precision: fp32, fp16 and int8 are the export and its
twins (<name>.fp16.onnx, <name>.int8.onnx), computed as they were exported; bf16 is the FP32 file
with OpenVINO's bf16 inference precision. A combination an engine can't run (ONNX Runtime bf16,
OpenVINO on cuda) is skipped with a reason in the record; only when nothing is left is it an error.
"""
from __future__ import annotations

from dataclasses import dataclass

from toolkit.errors import UserError
from toolkit.runtime.engines import INFERENCE_PRECISIONS, adapter_for, engines_with


@dataclass(frozen=True)
class Combo:
    """One engine x device x precision the rounds time."""

    engine: str  # onnxruntime | openvino
    device: str  # the benchmark's device word: cpu, cuda[:N], tensorrt
    precision: str  # fp32 | fp16 | bf16 | int8: the row's label
    file_precision: str  # which file: fp32 (the export), fp16 or int8 (its twins)
    inference_precision: str  # what floating-point layers compute in: fp32 or bf16 (OpenVINO's hint)

    @property
    def key(self) -> str:
        return f"{self.engine}/{self.device}/{self.precision}"


def file_precision(precision: str) -> str:
    """The file a precision reads: bf16 is the FP32 export at a bf16 inference precision."""
    return "fp32" if precision == "bf16" else precision


def why_not(engine: str, device: str, precision: str) -> str | None:
    """Why `engine` can't run this device x precision here, or None when it can (its adapter says)."""
    adapter = adapter_for(engine)
    if precision in INFERENCE_PRECISIONS and precision not in adapter.inference_precisions:
        return (f"{engine} has no {precision} inference precision (it runs a file as exported); {precision} runs "
                f"on --engine {' or '.join(engines_with(precision))}")
    if not adapter.supports_device(device):
        able = [e for e in engines_with("fp32") if adapter_for(e).supports_device(device)]
        return f"{engine} has no {device} device; {device} runs on --engine {' or '.join(able) or 'none here'}"
    return None


def plan(engines: tuple, devices: tuple, precisions: tuple) -> tuple[list, list]:
    """([Combo] to run, [{"engine", "device", "precision", "reason"}] skipped), devices outermost, then
    engines, then precisions, in the order given."""
    run, skipped = [], []
    for device in devices:
        for engine in engines:
            for p in precisions:
                reason = why_not(engine, device, p)
                if reason:
                    skipped.append({"engine": engine, "device": device, "precision": p, "reason": reason})
                    continue
                run.append(Combo(engine, device, p, file_precision(p), "bf16" if p == "bf16" else "fp32"))
    if not run:
        raise UserError("benchmark: nothing to run: " + "; ".join(
            f"{s['engine']} {s['precision']} on {s['device']}: {s['reason']}" for s in skipped))
    return run, skipped


def skip_note(skipped: dict) -> str:
    """The record's note for one skipped combination."""
    return f"skipped {skipped['engine']}/{skipped['device']}/{skipped['precision']}: {skipped['reason']}"
