"""FLOPs of one forward pass, counted from the ONNX graph (shapes from ONNX shape inference)."""
from __future__ import annotations

import os
from typing import Any, Iterable, Optional

_CONV_OPS = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3, "FusedConv": 1, "NhwcConv": 1,
             "NhwcFusedConv": 1, "ConvTranspose": 1}  # op -> index of its weight input
_GEMM_OPS = {"Gemm": 1, "QGemm": 3, "FusedGemm": 1}
_MATMUL_OPS = {"MatMul": 1, "MatMulInteger": 1, "QLinearMatMul": 3, "FusedMatMul": 1,
               "MatMulIntegerToFloat": 1, "DynamicQuantizeMatMul": 1}


def _prod(xs: Iterable) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


def _strip_weights(model) -> None:
    """Drop the data of large initializers (shape inference only needs their dims)."""
    for init in model.graph.initializer:
        if _prod(init.dims) > 4096:
            for f in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data",
                      "string_data", "external_data"):
                init.ClearField(f)
            init.data_location = 0


def _fix_input_dims(proto, image_size: Optional[int]) -> int:
    """Set the symbolic batch axis of the graph inputs to 1 and other symbolic axes to `image_size`;
    returns the batch the graph is fixed at (its FLOPs are divided by it)."""
    init_names = {i.name for i in proto.graph.initializer}
    batch_fixed = 1
    for inp in proto.graph.input:
        if inp.name in init_names:
            continue
        for axis, dim in enumerate(inp.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                if axis == 0:
                    batch_fixed = dim.dim_value
                continue
            value = 1 if axis == 0 else image_size  # symbolic H / W of a gap-head export
            if value is None:
                continue
            dim.ClearField("dim_param")
            dim.dim_value = int(value)
    return batch_fixed


def _known_shapes(graph) -> dict:
    """{tensor name: [dims, None where unknown]} of every value, input, output and initializer."""
    shapes: dict[str, list] = {}
    for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None
                               for d in vi.type.tensor_type.shape.dim]
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _node_macs(node, shape) -> Optional[int]:
    """Multiply-accumulates of one Conv / Gemm / MatMul node; None when a shape is unknown."""
    op = node.op_type
    if op in _CONV_OPS:
        w, y, x = shape(node.input[_CONV_OPS[op]]), shape(node.output[0]), shape(node.input[0])
        if op == "ConvTranspose":
            return _prod(x) * _prod(w[1:]) if w and x else None
        return _prod(y) * _prod(w[1:]) if w and y else None
    a, y = shape(node.input[0]), shape(node.output[0])
    if op in _GEMM_OPS:
        trans_a = any(at.name == "transA" and at.i for at in node.attribute)
        return _prod(y) * (a[0] if trans_a else a[1]) if a and y and len(a) == 2 else None
    return _prod(y) * a[-1] if a and y else None


def count_flops(model: Any, image_size: Optional[int] = None) -> dict:
    """FLOPs of one forward pass of one image: 2 x the multiply-accumulates of Conv / Gemm / MatMul
    (and their quantized and fused forms), with shapes from ONNX shape inference.

    `model`: a path or an onnx.ModelProto (not modified). The batch axis is set to 1; other
    symbolic axes of a 4-D image input (a gap-head export with dynamic H and W) to `image_size`.
    Returns {"flops", "macs", "by_op": {op: flops}, "uncounted": [node names whose shapes were unknown]}.
    """
    import onnx
    from onnx import shape_inference

    if isinstance(model, (str, os.PathLike)):
        proto = onnx.load(os.fspath(model), load_external_data=False)
    else:
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
    _strip_weights(proto)
    batch_fixed = _fix_input_dims(proto, image_size)
    try:
        inferred = shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception:  # noqa: BLE001 - fall back to whatever shapes the file carries
        inferred = proto
    shapes = _known_shapes(inferred.graph)

    def shape(name):
        s = shapes.get(name)
        return s if s is not None and all(isinstance(d, int) and d > 0 for d in s) else None

    by_op: dict[str, int] = {}
    uncounted: list[str] = []
    for node in inferred.graph.node:
        if node.op_type not in _CONV_OPS and node.op_type not in _GEMM_OPS and node.op_type not in _MATMUL_OPS:
            continue
        macs = _node_macs(node, shape)
        if macs is None:
            uncounted.append(node.name or node.op_type)
            continue
        by_op[node.op_type] = by_op.get(node.op_type, 0) + 2 * macs
    flops = sum(by_op.values()) / max(1, batch_fixed)
    return {"flops": int(flops), "macs": int(flops // 2), "by_op": by_op, "uncounted": uncounted}
