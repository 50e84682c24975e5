"""The model file under test: its metadata (toolkit.contract), graph input, size, precision twins (named in
toolkit.artifacts), and the FLOPs of one forward pass counted from the graph (shapes from ONNX shape inference)."""
from __future__ import annotations

import math
import os
from typing import Any, Callable, Optional

from toolkit import artifacts, contract
from toolkit.errors import UserError, first_line

# op -> index of its weight input, per kind of multiply-accumulate
_CONV_OPS = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3, "FusedConv": 1, "NhwcConv": 1, "NhwcFusedConv": 1,
             "ConvTranspose": 1}
_GEMM_OPS = {"Gemm": 1, "QGemm": 3, "FusedGemm": 1}
_MATMUL_OPS = {"MatMul": 1, "MatMulInteger": 1, "QLinearMatMul": 3, "FusedMatMul": 1, "MatMulIntegerToFloat": 1,
               "DynamicQuantizeMatMul": 1}


def _node_macs(node, shape) -> Optional[int]:
    """Multiply-accumulates of one Conv / Gemm / MatMul node; None when a shape is unknown."""
    op, a, y = node.op_type, shape(node.input[0]), shape(node.output[0])
    if op in _CONV_OPS:
        w = shape(node.input[_CONV_OPS[op]])
        out = a if op == "ConvTranspose" else y  # each input (transposed) or output pixel meets the kernel
        return math.prod(out) * math.prod(w[1:]) if w and out else None
    if op in _GEMM_OPS:
        trans_a = any(at.name == "transA" and at.i for at in node.attribute)
        return math.prod(y) * (a[0] if trans_a else a[1]) if a and y and len(a) == 2 else None
    return math.prod(y) * a[-1] if a and y else None


def count_flops(model: Any, image_size: Optional[int] = None) -> dict:
    """FLOPs of one forward pass of one image: 2 x the multiply-accumulates of Conv / Gemm / MatMul (and
    their quantized and fused forms). `model`: a path or an onnx.ModelProto (not modified). The batch axis
    is set to 1; other symbolic axes (a gap-head export's H and W) to `image_size`.
    Returns {"flops", "macs", "by_op": {op: flops}, "uncounted": [node names whose shapes were unknown]}."""
    import onnx

    proto = onnx.ModelProto()
    proto.CopyFrom(onnx.load(os.fspath(model), load_external_data=False) if isinstance(model, (str, os.PathLike))
                   else model)
    for init in proto.graph.initializer:  # shape inference needs only the dims of large weights
        if math.prod(init.dims) > 4096:
            for f in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data",
                      "string_data", "external_data"):
                init.ClearField(f)
            init.data_location = 0
    inits, batch_fixed = {i.name for i in proto.graph.initializer}, 1
    for inp in (i for i in proto.graph.input if i.name not in inits):
        for axis, dim in enumerate(inp.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                batch_fixed = dim.dim_value if axis == 0 else batch_fixed  # FLOPs are divided by a fixed batch
            elif axis == 0 or image_size is not None:
                dim.dim_value = 1 if axis == 0 else int(image_size)
    try:
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception:  # noqa: BLE001 - fall back to whatever shapes the file carries
        pass
    shapes = {vi.name: [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
              for vi in [*proto.graph.value_info, *proto.graph.input, *proto.graph.output]
              if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape")}
    shapes.update({init.name: list(init.dims) for init in proto.graph.initializer})

    def shape(name):
        s = shapes.get(name)
        return s if s is not None and all(isinstance(d, int) and d > 0 for d in s) else None

    by_op: dict[str, int] = {}
    uncounted: list[str] = []
    for node in (n for n in proto.graph.node if n.op_type in {**_CONV_OPS, **_GEMM_OPS, **_MATMUL_OPS}):
        macs = _node_macs(node, shape)
        if macs is None:
            uncounted.append(node.name or node.op_type)
        else:
            by_op[node.op_type] = by_op.get(node.op_type, 0) + 2 * macs
    flops = sum(by_op.values()) / max(1, batch_fixed)
    return {"flops": int(flops), "macs": int(flops // 2), "by_op": by_op, "uncounted": uncounted}


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
