"""The FP16 twin: built from the staged FP32 file, behind its own gate, with a block list of ops kept in FP32.

FP16: fp16 weights with float32 IO, judged by the parity gate under its own tolerance. Some ops lose more in
half precision than the rest of the net (the ecosystem's reports: sigmoid / hard-sigmoid of squeeze-excite,
reductions such as ReduceMean, softmax). The twin keeps a block list of op types in float32, chosen by
measurement: first none beyond ONNX Runtime's own list, then, if that misses the gate, every FP16_SENSITIVE_OPS
type the graph holds. The first list that passes is kept; the report says which, with the max diff of each
list tried. --fp16-keep-fp32 pins the list. The INT8 twin, with its accuracy budget and its search over
settings, is toolkit/export/int8.py.
"""
from __future__ import annotations

import time

from toolkit import contract
from toolkit.artifacts import twin_path
from toolkit.errors import UserError
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

# Op types whose FP16 error is reported to dominate (onnxconverter-common PR #190/#191 and #323, onnxruntime
# PR #14784): the second block list tried keeps the ones the graph holds in float32.
FP16_SENSITIVE_OPS = ("Sigmoid", "HardSigmoid", "HardSwish", "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum",
                      "ReduceL2", "GlobalAveragePool", "Exp", "Pow", "Sqrt", "LayerNormalization")


def block_lists(graph_ops: set, pinned) -> list:
    """The block lists to try, in order: the pinned one alone, else none and then the sensitive ops present."""
    if pinned is not None:
        return [list(pinned)]
    sensitive = [op for op in FP16_SENSITIVE_OPS if op in graph_ops]
    return [[]] + ([sensitive] if sensitive else [])


def fp16_twin(job: ExportJob, staging: Staging, gate: Gate) -> dict:
    """Stage the FP16 twin of the first block list that passes the gate; returns its parity results."""
    import onnx

    t = time.perf_counter()
    graph_ops = {n.op_type for n in onnx.load(staging.files["fp32"]).graph.node}
    tried = []
    for blocked in block_lists(graph_ops, job.options.fp16_keep_fp32):
        parity = _attempt(job, staging, gate, blocked)
        tried.append({"keep_fp32_ops": blocked, "max_abs_diff": parity["max_abs_diff"], "close": parity["close"],
                      "top1_agreement": parity["top1_agreement"]})
        job.say(f"fp16: keeping {', '.join(blocked) or 'no op type'} in fp32: max abs diff "
                f"{parity['max_abs_diff']:.2e} (allowed atol {parity['atol']:.2e})")
        try:
            judge(parity, "fp16 twin", twin_path(job.path, "fp16"), FP16_MIN_AGREEMENT)
            break
        except UserError as exc:
            failure = exc
    else:
        lists = "; ".join(f"{', '.join(t['keep_fp32_ops']) or 'none'}: {t['max_abs_diff']:.3g}" for t in tried)
        raise UserError(f"{failure} (fp16 block lists tried, with their max abs diff: {lists}; try "
                        "--fp16-keep-fp32 with more op types, e.g. Conv,Gemm)")
    parity.update(keep_fp32_ops=blocked, keep_fp32_tried=tried,
                  keep_fp32_chosen_by="--fp16-keep-fp32" if job.options.fp16_keep_fp32 is not None else "measurement")
    job.timings["fp16_s"] = time.perf_counter() - t
    job.say(f"parity fp16: {parity_line(parity)}")
    return parity


def _attempt(job: ExportJob, staging: Staging, gate: Gate, blocked: list) -> dict:
    """Convert with one block list (beside ONNX Runtime's own) into the staged twin and measure it."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    fp32_proto = onnx.load(staging.files["fp32"])
    with hush():
        half = convert_float_to_float16(fp32_proto, keep_io_types=True,
                                        op_block_list=sorted(set(DEFAULT_OP_BLOCK_LIST) | set(blocked)))
    del fp32_proto
    toposort(half.graph)
    contract.write(half, {**base_metadata(job), "precision": "fp16"})
    tmp = staging.files.get("fp16") or staging.new("fp16")  # a second list overwrites the first's temp file
    staging.save(half, "fp16")
    del half
    check_file(tmp)
    # It must load and run on the CPU provider with float32 IO.
    parity = gate.measure(tmp, False, FP16_RTOL, lambda s: FP16_ATOL_REL * s)
    parity["min_top1_agreement"] = FP16_MIN_AGREEMENT
    return parity
