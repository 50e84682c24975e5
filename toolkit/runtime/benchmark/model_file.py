"""The model file under test: its metadata (toolkit.contract), graph input, size, FLOPs and precision twins."""
from __future__ import annotations

import os
from typing import Callable, Optional

from toolkit import contract
from toolkit import artifacts
from toolkit.errors import UserError, first_line
from toolkit.runtime.benchmark.flops import count_flops
from toolkit.runtime.benchmark.records import PRECISIONS

# precision -> file suffix: the precision twins among artifacts.TWIN_SUFFIXES (.raw.onnx is a layout, not a precision)
TWIN_SUFFIX = {"fp32": ".onnx", **{s.split(".")[1]: s for s in artifacts.TWIN_SUFFIXES if s.split(".")[1] in PRECISIONS}}


def _file_bytes(path: str, proto) -> int:
    """The file's size, its external data files included."""
    size = os.path.getsize(path)
    external = set()
    for init in proto.graph.initializer:
        if init.data_location == 1:
            for kv in init.external_data:
                if kv.key == "location":
                    external.add(kv.value)
    for loc in external:
        ext = os.path.join(os.path.dirname(os.path.abspath(path)), loc)
        if os.path.isfile(ext):
            size += os.path.getsize(ext)
    return size


def inspect_model(path: str) -> dict:
    """Metadata (JSON decoded), graph input, file size (external data included) and FLOPs of one file."""
    import onnx

    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises its own types
        raise UserError(f"{path}: not a readable ONNX model ({first_line(exc, 300)}); expected a .onnx file "
                        "written by toolkit export") from None
    meta = contract.decode(contract.props_of(proto))
    init_names = {i.name for i in proto.graph.initializer}
    graph_inputs = [i for i in proto.graph.input if i.name not in init_names]
    dims = []
    if graph_inputs:
        for d in graph_inputs[0].type.tensor_type.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?"))
    crop = None
    if isinstance(meta.get("preprocess"), dict):
        crop = meta["preprocess"].get("crop")
    flops = count_flops(proto, image_size=crop)
    return {"path": path, "metadata": meta, "input_dims": dims, "file_bytes": _file_bytes(path, proto),
            "flops": flops}


def twin_path(base: str, precision: str) -> str:
    stem = base[:-len(".onnx")] if base.endswith(".onnx") else base
    return stem + TWIN_SUFFIX[precision]


def base_of(path: str) -> tuple[str, Optional[str]]:
    """exports/x.int8.onnx -> (exports/x.onnx, 'int8'); a plain file -> (path, None)."""
    for precision, suffix in TWIN_SUFFIX.items():
        if precision != "fp32" and path.endswith(suffix):
            return path[:-len(suffix)] + ".onnx", precision
    return path, None


def resolve_model(model: Optional[str], exports_dir: str, say: Callable) -> str:
    if model is None:
        path = artifacts.newest_export(exports_dir)
        say(f"benchmark: using the newest export {path}")
        return path
    model = os.fspath(model)
    if os.path.isdir(model):
        path = artifacts.newest_export(model)
        say(f"benchmark: using the newest export {path}")
        return path
    if not os.path.isfile(model):
        raise UserError(f"{model}: no such model file; expected an ONNX export (exports/<name>.onnx) or leave it "
                        "out to use the newest export")
    if not model.endswith(".onnx"):
        raise UserError(f"{model}: not an .onnx file; expected an export written by toolkit export "
                        "(exports/<name>.onnx)")
    return model


def export_hint(meta: dict, precision: str) -> str:
    run = meta.get("source_run")
    target = f" {run}" if isinstance(run, str) and run else ""
    return f"toolkit export{target} --{precision}"
