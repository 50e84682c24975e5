"""ONNX Runtime static quantization of the staged FP32 file, one setting at a time.

`prepare` runs once per export: ORT's pre-processing, the user's --keep-fp32 layers and the graph's
first and last layers, resolved to node names, and the shape arithmetic that always stays float (below).
`quantize` then builds one INT8 candidate for one
Int8Setting; the calibration ranges of each method are computed once and cached in the work folder,
so a second setting with the same method re-quantises without re-running the calibration images.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from toolkit.export.surgery import drop_unused_domains, float_inputs, unquantize_outputs, unshare_initializers
from toolkit.export.torch_graph import hush, resolve_layers
from toolkit.preprocess import Preprocess
from toolkit.runtime.onnx_eval import model_input

# Ops that read a tensor's shape, not its values: what they compute (and everything computed from it alone)
# is shape arithmetic, e.g. timm's TF-"SAME" padding of EfficientNet-Lite, which turns H and W into Pad
# amounts in float (Cast, Div, Ceil, Sub, Mul, Clip, Concat, then a Cast back to int64). ORT's quantizer
# treats those floats as activations and rounds them through uint8 Q/DQ pairs: a pad of 1.0 comes back as
# 0.99999994, the Cast to int64 truncates it to 0, and every stride-2 stage pads one pixel short and shifts
# the image (measured: Lite0 on digits at 64 px, top-1 75.5% -> 38.7%, docs/export.md). They stay float.
SHAPE_SOURCES = ("Shape", "Size")

# The graph's last layer: the classifier's Gemm/MatMul (a 1x1-conv classifier has neither: its last Conv).
LAST_LAYER_OPS = ("Gemm", "MatMul")


@dataclass(frozen=True)
class Int8Setting:
    """One way to quantize: what the search varies."""

    per_channel: bool  # int8 weights per output channel (True) or one scale per tensor (False)
    calib_method: str  # activation ranges from minmax, entropy or percentile calibration
    fp32_edges: bool  # the first Conv and the last Gemm/MatMul (or Conv) stay float

    @property
    def label(self) -> str:
        """'per-tensor entropy, first/last layers fp32': how reports and errors name it."""
        text = f"{'per-channel' if self.per_channel else 'per-tensor'} {self.calib_method}"
        return text + (", first/last layers fp32" if self.fp32_edges else "")

    def as_dict(self) -> dict:
        return {"per_channel": self.per_channel, "calib_method": self.calib_method, "fp32_edges": self.fp32_edges}


@dataclass
class Prepared:
    """The pre-processed FP32 graph and the node names every setting needs."""

    path: str  # the pre-processed FP32 file (ORT's shape inference and graph optimisation)
    work_dir: str  # where candidates and the calibration caches go
    user_nodes: list  # nodes of --keep-fp32, resolved in the pre-processed graph
    edge_nodes: list  # the first Conv and the last layer (see LAST_LAYER_OPS)
    softmax_nodes: list = field(default_factory=list)  # the probabilities softmax stays float32
    shape_nodes: list = field(default_factory=list)  # shape arithmetic (SHAPE_SOURCES): always float

    def always_float(self) -> list:
        """Nodes no setting quantizes: the probabilities softmax and the shape arithmetic."""
        return self.softmax_nodes + self.shape_nodes

    def excluded(self, setting: Int8Setting) -> list:
        """The nodes a setting leaves in float (always_float's are left out of this list: they always are)."""
        extra = [n for n in self.edge_nodes if n not in self.user_nodes] if setting.fp32_edges else []
        return self.user_nodes + extra

    def edges_add_nothing(self) -> bool:
        """True when --keep-fp32 already holds the first and last layers (the fp32_edges settings repeat)."""
        return all(n in self.user_nodes for n in self.edge_nodes)


def prepare(fp32_path: str, work_dir: str, keep_fp32: list, block_of: dict) -> Prepared:
    """Pre-process the FP32 file once and resolve the nodes the settings exclude."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = os.path.join(work_dir, "preprocessed.onnx")
    with hush():
        quant_pre_process(fp32_path, pre)  # symbolic shape inference + ORT's graph optimisation
    graph = onnx.load(pre)
    if unshare_initializers(graph):
        onnx.save(graph, pre)
    user = resolve_layers(graph, keep_fp32, block_of) if keep_fp32 else []
    nodes = list(graph.graph.node)  # ONNX keeps nodes in topological order
    softmax = [n.name for n in nodes if n.op_type == "Softmax"]
    return Prepared(path=pre, work_dir=work_dir, user_nodes=user, edge_nodes=edge_nodes(nodes),
                    softmax_nodes=softmax, shape_nodes=shape_nodes(graph.graph))


def shape_nodes(graph) -> list:
    """Names of the nodes that compute from tensor shapes alone: a Shape/Size node, or a node whose inputs are
    all constants or outputs of such nodes, at least one of them the latter (nodes in topological order)."""
    constants = {t.name for t in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    derived, names = set(), []
    for node in graph.node:
        inputs = [i for i in node.input if i]
        from_shapes = inputs and all(i in constants or i in derived for i in inputs) \
            and any(i in derived for i in inputs)
        if node.op_type in SHAPE_SOURCES or from_shapes:
            derived.update(node.output)
            names.append(node.name)
    return names


def edge_nodes(nodes: list) -> list:
    """Names of the first Conv and of the last Gemm/MatMul (else the last Conv), in graph order."""
    convs = [n.name for n in nodes if n.op_type == "Conv"]
    last = [n.name for n in nodes if n.op_type in LAST_LAYER_OPS] or convs
    out = convs[:1]
    if last and last[-1] not in out:
        out.append(last[-1])
    return out


def quantize(prepared: Prepared, setting: Int8Setting, reader, out_path: str, ir_version=None) -> None:
    """ORT static quantization (QDQ, int8 weights, uint8 activations) of one setting into out_path, with the
    graph outputs left float (no Q/DQ pair rounds the logits). ir_version: the one the twin is written with,
    so the candidate scored is the file published (None = the quantizer's)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[setting.calib_method]
    cache = os.path.join(prepared.work_dir, f"calibration-{setting.calib_method}.json")
    with hush():
        quantize_static(prepared.path, out_path, reader, quant_format=QuantFormat.QDQ,
                        per_channel=setting.per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=method, nodes_to_exclude=prepared.excluded(setting) + prepared.always_float(),
                        extra_options={"CalibTensorRangeSymmetric": False}, calibration_cache_path=cache)
    q = onnx.load(out_path)
    unquantize_outputs(q)
    float_inputs(q, set(prepared.excluded(setting)))  # else ORT re-quantizes kept convs at load (surgery)
    drop_unused_domains(q)
    if ir_version is not None:
        q.ir_version = ir_version
    onnx.save_model(q, out_path, save_as_external_data=False)


def calibration_reader(pixels: np.ndarray, preprocess: Preprocess, batch_size: int = 8):
    """A CalibrationDataReader over uint8 pixels, normalised per batch as the model expects. Every batch
    has the same size, the largest divisor of the image count up to `batch_size`: ONNX Runtime's entropy
    and percentile calibrators stack the batches' outputs, so a short last batch (50 images in 8s) was a
    ValueError there."""
    from onnxruntime.quantization import CalibrationDataReader

    n = len(pixels)
    batch_size = next((d for d in range(min(batch_size, n), 0, -1) if n % d == 0), 1)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.start = 0

        def get_next(self):
            if self.start >= len(pixels):
                return None
            batch = pixels[self.start:self.start + batch_size]
            self.start += batch_size
            return {"input": model_input(batch, preprocess, raw=False)}

        def rewind(self):
            self.start = 0

    return Reader()
