"""The FP16 twin: built from the staged FP32 file, behind its own gate.

FP16: fp16 weights with float32 IO, judged by the parity gate under its own tolerance. The INT8 twin,
with its accuracy budget and its search over settings, is toolkit/export/int8.py.
"""
from __future__ import annotations

import time

from toolkit import contract
from toolkit.artifacts import twin_path
from toolkit.export.parity import Gate, judge, parity_line
from toolkit.export.plan import ExportJob, base_metadata
from toolkit.export.staging import Staging, check_file
from toolkit.export.surgery import toposort
from toolkit.export.torch_graph import hush

# FP16 twin: weights (and, on CUDA, arithmetic) in half precision; 11-bit mantissas give ~1e-3
# relative error per layer, which accumulates over VGG's layers. Its gate: logits within
# rtol 2e-2 / atol 2e-2 x (largest |logit| of the reference), and top-1 agreement of at least 99%
# (a flip between two classes closer than the tolerance counts as a tie, not a disagreement).
FP16_RTOL, FP16_ATOL_REL, FP16_MIN_AGREEMENT = 2e-2, 2e-2, 0.99


# ------------------------------------------------------------------------------------------------
# FP16

def fp16_twin(job: ExportJob, staging: Staging, gate: Gate) -> dict:
    """Stage the FP16 twin and judge it; returns its parity results."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    t = time.perf_counter()
    fp32_proto = onnx.load(staging.files["fp32"])
    with hush():
        half = convert_float_to_float16(fp32_proto, keep_io_types=True)
    del fp32_proto
    toposort(half.graph)
    contract.write(half, {**base_metadata(job), "precision": "fp16"})
    tmp = staging.new("fp16")
    staging.save(half, "fp16")
    del half
    check_file(tmp)
    # It must load and run on the CPU provider with float32 IO.
    parity = gate.measure(tmp, False, FP16_RTOL, lambda s: FP16_ATOL_REL * s)
    parity["min_top1_agreement"] = FP16_MIN_AGREEMENT
    judge(parity, "fp16 twin", twin_path(job.path, "fp16"), FP16_MIN_AGREEMENT)
    job.timings["fp16_s"] = time.perf_counter() - t
    job.say(f"parity fp16: {parity_line(parity)}")
    return parity
