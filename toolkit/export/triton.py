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

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Optional

from toolkit import contract
from toolkit.artifacts import atomic_write
from toolkit.errors import UserError

INSTANCE_KINDS = {"auto": "KIND_AUTO", "gpu": "KIND_GPU", "cpu": "KIND_CPU"}
# ONNX TensorProto element type -> Triton data type (the ones an export can carry).
DATA_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 6: "TYPE_INT32", 7: "TYPE_INT64",
              9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64", 16: "TYPE_BF16"}
NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class TritonOptions:
    """How `toolkit export --format triton` lays out and configures the model repository."""

    repo: Optional[str] = None  # the repository folder; None = exports_dir/triton
    max_batch_size: int = 32  # config.pbtxt max_batch_size (every export has a dynamic batch axis)
    instances: int = 1  # model instances per device (instance_group count)
    instance_kind: str = "auto"  # auto, gpu or cpu (instance_group kind)
    queue_delay_us: int = 100  # dynamic batching: the longest a request waits for others, in microseconds
    model_version: int = 1  # the version folder written; other versions of the model are left alone


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

    proto = onnx.load(onnx_path, load_external_data=False)  # one load: the graph and its metadata
    model = contract.from_props(contract.props_of(proto), onnx_path)
    initializers = {i.name for i in proto.graph.initializer}
    inputs = _tensors([v for v in proto.graph.input if v.name not in initializers])
    outputs = _tensors(proto.graph.output)
    for tensor in inputs + outputs:
        if tensor["batch_dim"] != -1:
            raise UserError(f"{onnx_path}: tensor {tensor['name']!r} has no dynamic batch axis; Triton's "
                            "max_batch_size needs one (every toolkit export has it)")
    layout = (model.input or {}).get("layout", "NCHW")
    return {"inputs": inputs, "outputs": outputs, "labels": [str(x) for x in model.labels], "layout": layout,
            "precision": model.precision}


def _dims(dims: list[int]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


def model_config(name: str, info: dict, options: TritonOptions) -> str:
    """config.pbtxt text for a described export (see `describe`)."""
    fmt = "FORMAT_NHWC" if info["layout"] == "NHWC" else "FORMAT_NCHW"
    lines = [f'name: "{name}"', 'platform: "onnxruntime_onnx"', f"max_batch_size: {options.max_batch_size}", "input ["]
    for i, t in enumerate(info["inputs"]):
        lines += ["  {", f'    name: "{t["name"]}"', f"    data_type: {t['data_type']}",
                  f"    format: {fmt}", f"    dims: {_dims(t['dims'])}", "  }" + ("," if i < len(info["inputs"]) - 1 else "")]
    lines += ["]", "output ["]
    for i, t in enumerate(info["outputs"]):
        # Every output is a score per class, so the classification extension can name each one.
        lines += ["  {", f'    name: "{t["name"]}"', f"    data_type: {t['data_type']}",
                  f"    dims: {_dims(t['dims'])}", '    label_filename: "labels.txt"',
                  "  }" + ("," if i < len(info["outputs"]) - 1 else "")]
    lines += ["]", "dynamic_batching {", f"  max_queue_delay_microseconds: {options.queue_delay_us}", "}",
              "instance_group [", "  {", f"    count: {options.instances}",
              f"    kind: {INSTANCE_KINDS[options.instance_kind]}", "  }", "]"]
    return "\n".join(lines) + "\n"


def check_options(options: TritonOptions) -> None:
    """One line per bad option, before any export work starts."""
    problems = []
    o = options
    for key, value, low in (("--max-batch-size", o.max_batch_size, 1), ("--instances", o.instances, 1),
                            ("--queue-delay-us", o.queue_delay_us, 0), ("--model-version", o.model_version, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            problems.append(f"{key} {value!r}: expected a whole number, at least {low}")
    if o.instance_kind not in INSTANCE_KINDS:
        problems.append(f"--instance-kind {o.instance_kind!r}: expected one of {', '.join(INSTANCE_KINDS)}")
    if problems:
        raise UserError("\n".join(problems))


def write_model(repo: str, name: str, onnx_path: str, options: TritonOptions,
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
    version = options.model_version
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
    config = model_config(name, info, options)
    atomic_write(os.path.join(model_dir, "labels.txt"), "".join(label + "\n" for label in info["labels"]))
    for filename, text in (extra_files or {}).items():
        atomic_write(os.path.join(model_dir, filename), text)
    atomic_write(os.path.join(model_dir, "config.pbtxt"), config)  # last: Triton loads what the config names
    return {"name": name, "dir": model_dir, "model": os.path.join(final, "model.onnx"),
            "config": os.path.join(model_dir, "config.pbtxt"), "labels": os.path.join(model_dir, "labels.txt"),
            "precision": info["precision"]}
