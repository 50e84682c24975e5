"""The torch side of export: the module to export, torch.onnx.export, reference logits, and the mapping
from torch module names to ONNX node names (for --keep-fp32)."""
from __future__ import annotations

import ast
import contextlib
import io
import os
import re
import time
import warnings
from typing import Iterable, Optional

import numpy as np

from toolkit import contract
from toolkit.errors import UserError, first_line
from toolkit.export.plan import ExportJob, base_metadata, input_spec
from toolkit.artifacts import twin_path
from toolkit.export.staging import Staging, check_file, writing
from toolkit.export.surgery import strip_debug_metadata
from toolkit.preprocess import Preprocess

TORCHSCRIPT_MAX_OPSET = 20  # torch.onnx._constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET in torch 2.14


@contextlib.contextmanager
def hush():
    """The exporters, ORT's converters and its quantizer print and warn a lot; none of it is for the user."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def export_graphs(job: ExportJob, staging: Staging) -> str:
    """Export the FP32 graph (and the raw-input one), write their metadata, run the checker in full;
    returns the exporter used."""
    variants = [("fp32", False)] + ([("raw", True)] if job.options.raw_input else [])
    t = time.perf_counter()
    exporter = ""
    for kind, raw in variants:
        exporter = _export_one(job, staging, kind, raw)
    job.timings["export_s"] = time.perf_counter() - t
    t = time.perf_counter()
    for kind in list(staging.files):
        check_file(staging.files[kind])
    job.timings["check_s"] = time.perf_counter() - t
    job.say(f"exported {job.recipe.model.arch} ({job.recipe.model.head} head, {len(job.labels)} classes) with the "
            f"{exporter} exporter, opset {job.opset}; onnx checker passed")
    return exporter


def _export_one(job: ExportJob, staging: Staging, kind: str, raw: bool) -> str:
    import onnx

    tmp = staging.new(kind)
    module = wrap(job.model, job.preprocess, raw, job.options.probabilities)
    example, dynamic = _example_input(job, raw)
    try:
        with writing(twin_path(job.path, kind)):  # a full disk is not the checkpoint's fault
            exporter = torch_export(module, example, tmp, job.opset, job.outputs, dynamic)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{job.ckpt_path}: torch.onnx.export failed ({first_line(exc)})") from None
    proto = onnx.load(tmp)
    if os.path.exists(tmp + ".data"):  # never expected (external_data=False); folded in regardless
        os.unlink(tmp + ".data")
    strip_debug_metadata(proto)
    if kind == "fp32" and job.options.keep_fp32:
        resolve_layers(proto, job.options.keep_fp32, job.block_of)  # a typo fails now, not after the parity gate
    contract.write(proto, {**base_metadata(job), "input": input_spec(job, raw)})
    staging.save(proto, kind)
    return exporter


def _example_input(job: ExportJob, raw: bool):
    """(example input, its dynamic axes) of the graph: float32 NCHW, or uint8 NHWC pixels when raw."""
    import torch

    crop, dynamic_hw = job.preprocess.crop, job.options.dynamic_hw
    if raw:
        return (torch.randint(0, 256, (2, crop, crop, 3), dtype=torch.uint8),
                {0: "batch", 1: "height", 2: "width"} if dynamic_hw else {0: "batch"})
    return torch.randn(2, 3, crop, crop), {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}


def export_float_copy(job: ExportJob, model, path: str) -> None:
    """`model` (a fine-tuned copy of job.model) exported as the FP32 graph would be, to `path`: the same
    exporter, opset, outputs and node names, without metadata (the INT8 ladder's QAT rung quantizes it)."""
    example, dynamic = _example_input(job, raw=False)
    with writing(twin_path(job.path, "int8")):
        torch_export(wrap(model, job.preprocess, False, job.options.probabilities), example, path, job.opset,
                     job.outputs, dynamic)


def wrap(model, preprocess: Preprocess, raw: bool, probabilities: bool):
    """The module to export: the Classifier itself, or a thin wrapper adding in-graph normalisation
    (raw uint8 NHWC input) and/or a softmax output."""
    import torch
    from torch import nn

    if not raw and not probabilities:
        return model

    class Exported(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.register_buffer("mean", torch.tensor(preprocess.mean, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(preprocess.std, dtype=torch.float32).view(1, 3, 1, 1))

        def forward(self, x):
            if raw:  # exactly Preprocess.normalize: x * (1/255), minus mean, over std, HWC -> CHW
                x = x.permute(0, 3, 1, 2).to(torch.float32) * (1.0 / 255.0)
                x = (x - self.mean) / self.std
            logits = self.model(x)
            if probabilities:
                return logits, torch.softmax(logits, dim=1)
            return logits

    return Exported().eval()


def torch_export(module, example, path: str, opset: int, output_names: list, dynamic: dict) -> str:
    """Write `module` to `path` as ONNX; returns the exporter used.

    Exporter choice, measured with torch 2.14.1 on these VGG classifiers: the TorchScript exporter
    (dynamo=False) writes exactly the requested opset as one protobuf in ~0.5 s, names nodes by
    module scope (/head/head.1/Gemm, which --keep-fp32 relies on) and gives a plain Conv/Relu/
    MaxPool/Gemm graph. The dynamo exporter has no opset-17 implementation: it exports opset 18 and
    its down-conversion to 17 fails on VGG (the graph silently stays at 18), it defaults to external
    data, and it takes ~3 s. Torch deprecates the TorchScript exporter, so we use it only for the
    opsets it implements (<= 20) and the dynamo exporter (single file, external_data=False) above.
    `dynamic` maps an axis index of the input to its name; the batch axis of every output follows.
    """
    import torch

    output_axes = {name: {0: "batch"} for name in output_names}
    with hush():
        if opset <= TORCHSCRIPT_MAX_OPSET:
            torch.onnx.export(module, (example,), path, dynamo=False, input_names=["input"],
                              output_names=output_names, opset_version=opset, do_constant_folding=True,
                              dynamic_axes={"input": dynamic, **output_axes})
            return "torchscript"
        dims = {axis: torch.export.Dim(name, min=1 if name == "batch" else 32) for axis, name in dynamic.items()}
        torch.onnx.export(module, (example,), path, dynamo=True, external_data=False, input_names=["input"],
                          output_names=output_names, opset_version=opset, dynamic_shapes=(dims,))
        return "dynamo"


def torch_logits(model, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model(torch.from_numpy(np.ascontiguousarray(x))).float().numpy()


# ------------------------------------------------------------------------------------------------
# ONNX graph helpers

def _module_of(node) -> Optional[str]:
    """The torch module a node came from ('head.1', 'features.0'), or None."""
    for prop in node.metadata_props:  # dynamo exporter
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = [s for s in ast.literal_eval(prop.value) if s]
            except (ValueError, SyntaxError):
                scopes = []
            mods = [s for s in scopes[:-1] if s.split(".")[0] in ("features", "head", "model")]
            if mods:
                return _strip_wrapper(mods[-1])
    parts = node.name.split("/")  # TorchScript exporter: /features/features.0/Conv, /model/head/head.1/Gemm
    if len(parts) >= 3 and parts[0] == "":
        return _strip_wrapper(parts[-2])
    return None


def _strip_wrapper(name: str) -> str:
    return name[len("model."):] if name.startswith("model.") else name


def _features_unit(node, module: str) -> Optional[int]:
    """The backbone unit (features.N) a node sits in, however deep: '/features/features.3/block/...' -> 3."""
    found = re.search(r"(?:^|/)features\.(\d+)(?:[./]|$)", node.name) or re.match(r"features\.(\d+)(?:\.|$)", module)
    return int(found.group(1)) if found else None


def resolve_layers(model_proto, names: Iterable[str], block_of: dict) -> list[str]:
    """ONNX node names for --keep-fp32 entries: 'head' (the classifier's Gemm/MatMul nodes),
    'block1'..'block5' (that conv block's Conv nodes), a module name ('head.4', 'features.0'),
    or an exact node name. An entry that matches nothing is a UserError."""
    nodes = list(model_proto.graph.node)
    out: list[str] = []
    for name in names:
        name = str(name).strip()
        if not name:
            continue
        hits = []
        for node in nodes:
            module = _module_of(node) or ""
            if name == "head":
                hit = module.startswith("head") and node.op_type in ("Gemm", "MatMul")
            elif name.startswith("block") and name[5:].isdigit():
                unit = _features_unit(node, module)
                hit = node.op_type == "Conv" and unit is not None and block_of.get(unit) == int(name[5:])
            else:
                hit = node.name == name or (module == name and node.op_type in ("Gemm", "MatMul", "Conv"))
            if hit:
                hits.append(node.name)
        if not hits:
            raise UserError(f"--keep-fp32 {name!r}: no such layer in the graph; expected head, block1..block5, "
                            "a module name such as head.1 or features.0, or an ONNX node name")
        out += [h for h in hits if h not in out]
    return out

