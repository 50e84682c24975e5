"""Triton Inference Server model repository from verified toolkit exports.

    <repo>/<model>/config.pbtxt        platform onnxruntime_onnx, batching, dims, instance groups
    <repo>/<model>/labels.txt          one class per line, wired to every output via label_filename
    <repo>/<model>/<version>/model.onnx

Triton serves the same self-describing file that `toolkit export` proved against PyTorch; this module
only lays it out and describes its tensors in Triton's model-config language (protobuf text format).
The config is written from the ONNX graph itself (names, element types, shapes), so it cannot drift
from the file. Light module: onnx only, no torch.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from typing import Optional

from toolkit.artifacts import atomic_write
from toolkit.errors import UserError

INSTANCE_KINDS = {"auto": "KIND_AUTO", "gpu": "KIND_GPU", "cpu": "KIND_CPU"}
# ONNX TensorProto element type -> Triton data type (the ones an export can carry).
DATA_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 6: "TYPE_INT32", 7: "TYPE_INT64",
              9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64", 16: "TYPE_BF16"}
NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _tensors(values) -> list[dict]:
    """[{name, data_type, dims (without the batch axis; -1 where free)}] of graph inputs or outputs."""
    out = []
    for value in values:
        tensor = value.type.tensor_type
        if tensor.elem_type not in DATA_TYPES:
            raise UserError(f"tensor {value.name!r}: ONNX element type {tensor.elem_type} has no Triton data type")
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        out.append({"name": value.name, "data_type": DATA_TYPES[tensor.elem_type], "dims": dims[1:],
                    "batch_dim": dims[0] if dims else None})
    return out


def describe(onnx_path: str) -> dict:
    """What config.pbtxt needs from an exported file: inputs, outputs, labels, input layout."""
    import onnx

    proto = onnx.load(onnx_path, load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    if meta.get("toolkit_format") != "1":
        raise UserError(f"{onnx_path}: not a toolkit export (no toolkit_format metadata); expected a file written "
                        "by toolkit export")
    initializers = {i.name for i in proto.graph.initializer}
    inputs = _tensors([v for v in proto.graph.input if v.name not in initializers])
    outputs = _tensors(proto.graph.output)
    for tensor in inputs + outputs:
        if tensor["batch_dim"] != -1:
            raise UserError(f"{onnx_path}: tensor {tensor['name']!r} has no dynamic batch axis; Triton's "
                            "max_batch_size needs one (every toolkit export has it)")
    labels = json.loads(meta["labels"])
    layout = json.loads(meta.get("input", "{}")).get("layout", "NCHW")
    return {"inputs": inputs, "outputs": outputs, "labels": [str(x) for x in labels], "layout": layout,
            "precision": meta.get("precision", "fp32")}


def _dims(dims: list[int]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


def model_config(name: str, info: dict, max_batch_size: int = 32, instances: int = 1, kind: str = "auto",
                 queue_delay_us: int = 100) -> str:
    """config.pbtxt text for a described export (see `describe`)."""
    fmt = "FORMAT_NHWC" if info["layout"] == "NHWC" else "FORMAT_NCHW"
    lines = [f'name: "{name}"', 'platform: "onnxruntime_onnx"', f"max_batch_size: {max_batch_size}", "input ["]
    for i, t in enumerate(info["inputs"]):
        lines += ["  {", f'    name: "{t["name"]}"', f"    data_type: {t['data_type']}",
                  f"    format: {fmt}", f"    dims: {_dims(t['dims'])}", "  }" + ("," if i < len(info["inputs"]) - 1 else "")]
    lines += ["]", "output ["]
    for i, t in enumerate(info["outputs"]):
        # Every output is a score per class, so the classification extension can name each one.
        lines += ["  {", f'    name: "{t["name"]}"', f"    data_type: {t['data_type']}",
                  f"    dims: {_dims(t['dims'])}", '    label_filename: "labels.txt"',
                  "  }" + ("," if i < len(info["outputs"]) - 1 else "")]
    lines += ["]", "dynamic_batching {", f"  max_queue_delay_microseconds: {queue_delay_us}", "}",
              "instance_group [", "  {", f"    count: {instances}", f"    kind: {INSTANCE_KINDS[kind]}", "  }", "]"]
    return "\n".join(lines) + "\n"


def check_options(max_batch_size, instances, kind, queue_delay_us, version) -> None:
    """One line per bad option, before any export work starts."""
    problems = []
    for key, value, low in (("--max-batch-size", max_batch_size, 1), ("--instances", instances, 1),
                            ("--queue-delay-us", queue_delay_us, 0), ("--model-version", version, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            problems.append(f"{key} {value!r}: expected a whole number, at least {low}")
    if kind not in INSTANCE_KINDS:
        problems.append(f"--instance-kind {kind!r}: expected one of {', '.join(INSTANCE_KINDS)}")
    if problems:
        raise UserError("\n".join(problems))


def write_model(repo: str, name: str, onnx_path: str, version: int = 1, max_batch_size: int = 32,
                instances: int = 1, kind: str = "auto", queue_delay_us: int = 100,
                extra_files: Optional[dict] = None) -> dict:
    """Move one verified export (`onnx_path`, e.g. from a staging folder) into repository `repo` as model
    `name`; returns what was written.

    The version folder is built beside its final place and renamed in, so Triton (which may poll the
    repository) never sees half a model; other versions of the model are left alone."""
    if not NAME.match(name):
        raise UserError(f"model name {name!r}: Triton model names are letters, digits, '_', '.' and '-'")
    info = describe(onnx_path)
    bad = [label for label in info["labels"] if "\n" in label or "\r" in label]
    if bad:
        raise UserError(f"label {bad[0]!r}: labels.txt holds one label per line, so labels can't contain newlines")
    model_dir = os.path.join(repo, name)
    os.makedirs(model_dir, exist_ok=True)
    final = os.path.join(model_dir, str(version))
    staging = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=model_dir)
    try:
        shutil.move(onnx_path, os.path.join(staging, "model.onnx"))  # a rename on the same file system
        old = None
        if os.path.exists(final):
            old = tempfile.mkdtemp(prefix=f".old-{version}-", dir=model_dir)
            os.replace(final, os.path.join(old, "v"))
        os.replace(staging, final)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)
    config = model_config(name, info, max_batch_size, instances, kind, queue_delay_us)
    atomic_write(os.path.join(model_dir, "labels.txt"), "".join(label + "\n" for label in info["labels"]))
    for filename, text in (extra_files or {}).items():
        atomic_write(os.path.join(model_dir, filename), text)
    atomic_write(os.path.join(model_dir, "config.pbtxt"), config)  # last: Triton loads what the config names
    return {"name": name, "dir": model_dir, "model": os.path.join(final, "model.onnx"),
            "config": os.path.join(model_dir, "config.pbtxt"), "labels": os.path.join(model_dir, "labels.txt"),
            "precision": info["precision"]}
