"""`toolkit export --bf16-check`: the FP32 file run on OpenVINO in bf16, held to the BF16 gate against PyTorch.

BF16 is not a twin file: it is the FP32 file run with OpenVINO's bf16 inference precision. The check runs
it on the parity gate's own inputs (real validation images of the run plus random tensors, every batch
size) against the PyTorch FP32 logits the FP32 gate already computed, and judges it with
toolkit.runtime.bf16_gate (centred logits within 5% of their spread, top-1 agreement >= 99%), the same
gate `toolkit evaluate --engine openvino --precision bf16` applies. A failure is a UserError and nothing
is written; a pass is recorded in the export report under parity.bf16_openvino (not in the file's
metadata: the file is unchanged, and bf16 is a property of where it runs).
"""
from __future__ import annotations

import time

import numpy as np

from toolkit.export.parity import Gate
from toolkit.export.plan import ExportJob
from toolkit.export.staging import Staging, twin_path
from toolkit.export.torch_graph import torch_logits
from toolkit.runtime.bf16_gate import bf16_line, compare_centred, judge_bf16
from toolkit.runtime.engines import EngineOptions, adapter_for, engines_with, open_engine

__all__ = ["require_bf16", "bf16_check"]


def require_bf16() -> None:
    """Before any slow work: the bf16 engine is installed and its CPU can compute in bf16 (else a UserError)."""

    adapter_for(engines_with("bf16")[0]).require("bf16", "cpu", where="--bf16-check", fix="drop --bf16-check")


def bf16_check(job: ExportJob, staging: Staging, gate: Gate) -> dict:
    """Judge the staged FP32 file on OpenVINO bf16 against PyTorch FP32; returns the gate's numbers."""

    t = time.perf_counter()
    engine = open_engine(staging.files["fp32"], engines_with("bf16")[0], EngineOptions(device="cpu", precision="bf16"))
    info = engine.describe()
    refs, gots, kinds = [], [], []
    for i, case in enumerate(gate.cases):
        key = (i, False)   # the same cache entries the FP32 gate filled
        if key not in gate.ref_cache:
            gate.ref_cache[key] = torch_logits(gate.model, case["x"])
        refs.append(gate.ref_cache[key])
        gots.append(np.asarray(engine.run({"input": case["x"]}, ["logits"])[0], np.float32))
        kinds += [case["kind"]] * len(case["x"])
    result = compare_centred(np.concatenate(refs), np.concatenate(gots))
    result.update({"engine": info.engine, "device": info.device, "inference_precision": info.precision,
                   "real_inputs": kinds.count("real"), "random_inputs": kinds.count("random"),
                   "compile_s": round(info.load_s, 3)})
    judge_bf16(result, twin_path(job.path, "fp32"), "PyTorch FP32")
    job.timings["bf16_check_s"] = time.perf_counter() - t
    job.say(f"bf16 check ({info.provider}): {bf16_line(result)}")
    return result
