"""ONNX export: one self-describing file per run, proven equal to PyTorch, with FP16 and INT8 twins.

    export_run()                      # newest run -> exports/<name>.onnx (+ exports/<name>.report.json)
    export_run("runs/flowers", int8=True, keep_fp32=("head",))

Steps, in order; a failure at any step is a UserError and nothing appears under a final name:
  1. resolve the run and its checkpoint, check the architecture, the opset and the output folder
     (all cheap, so bad input fails in a second, before any slow work);
  2. torch.onnx.export to a temp file in the output folder (single file, `input` -> `logits`
     [+ `probabilities`], dynamic batch axis; H and W too with dynamic_hw and a gap head);
  3. metadata (labels, preprocessing, input spec, provenance, recipe, metrics), onnx checker in full;
  4. parity gate: ONNX Runtime (CPU) against PyTorch on real validation images of the run plus random
     tensors, at batch sizes 1, 2, 7 and 16 (FP32: rtol 1e-3, atol 1e-4, top-1 agreement 100%);
  5. optional twins: FP16 weights with float32 IO (own tolerance), INT8 static QDQ quantization
     under an accuracy budget measured on the validation split, a raw-input (uint8 NHWC) graph;
  6. all files renamed into place together, then the JSON report beside them.
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import io
import json
import os
import shutil
import tempfile
import time
import warnings
from functools import lru_cache
from typing import Any, Iterable, Optional

import numpy as np

from toolkit.artifacts import atomic_write
from toolkit.errors import UserError, first_line
from toolkit.runtime.onnx_eval import cpu_session, load_pixels, model_input, run_logits
from toolkit.runtime.onnx_eval import report as accuracy_report
from toolkit.preprocess import Preprocess

PARITY_BATCH_SIZES = (1, 2, 7, 16)
FP32_RTOL, FP32_ATOL = 1e-3, 1e-4
# FP16 twin: weights (and, on CUDA, arithmetic) in half precision; 11-bit mantissas give ~1e-3
# relative error per layer, which accumulates over VGG's layers. Its gate: logits within
# rtol 2e-2 / atol 2e-2 x (largest |logit| of the reference), and top-1 agreement of at least 99%
# (a flip between two classes closer than the tolerance counts as a tie, not a disagreement).
FP16_RTOL, FP16_ATOL_REL, FP16_MIN_AGREEMENT = 2e-2, 2e-2, 0.99
CALIB_METHODS = ("minmax", "entropy", "percentile")
MIN_OPSET = 11  # ONNX Runtime's quantizer needs 10+, nothing older is worth supporting
INT8_MIN_OPSET = 13  # per-channel QDQ (DequantizeLinear's axis attribute)
TORCHSCRIPT_MAX_OPSET = 20  # torch.onnx._constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET in torch 2.14
TWINS = {"fp16": ".fp16.onnx", "int8": ".int8.onnx", "raw": ".raw.onnx"}
FRIENDLY_LAYERS = ("head", "block1", "block2", "block3", "block4", "block5")


def _noop(*_args, **_kwargs) -> None:
    return None


def _say(*args) -> None:
    print(*args, flush=True)


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB"


# ------------------------------------------------------------------------------------------------
# Opset: what the installed ONNX Runtime can load

@lru_cache(maxsize=None)
def ort_max_opset() -> int:
    """The newest default-domain opset the installed ONNX Runtime loads.

    onnxruntime has no public API for this, and its support lags onnx's own opset number, so we
    ask the runtime itself: build a one-node model per opset and try to open a session on it
    (milliseconds each). ORT refuses an opset it doesn't implement when the model is loaded."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    best = 0
    options = ort.SessionOptions()
    options.log_severity_level = 4
    for opset in range(MIN_OPSET, onnx.defs.onnx_opset_version() + 4):
        graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8  # every ORT since 1.10 reads IR 8
        try:
            ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception:
            break
        best = opset
    return best


def _integer(value: Any, flag: str, example: int) -> int:
    """An option that must be a whole number (fire may hand over 17, 17.0 or '17')."""
    try:
        number = int(value)
        if isinstance(value, bool) or number != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise UserError(f"{flag} {value!r}: expected an integer such as {example}") from None
    return number


def check_opset(opset: Any, int8: bool = False) -> int:
    import onnxruntime as ort

    value = _integer(opset, "--opset", 17)
    top = ort_max_opset()
    if value > top:
        raise UserError(f"--opset {value}: too new for the installed ONNX Runtime {ort.__version__}, which loads "
                        f"opsets up to {top}; expected {MIN_OPSET}..{top} (the default 17 loads in ONNX Runtime "
                        "1.13 and later)")
    if value < MIN_OPSET:
        raise UserError(f"--opset {value}: too old; expected {MIN_OPSET}..{top}")
    if int8 and value < INT8_MIN_OPSET:
        raise UserError(f"--opset {value} with --int8: per-channel INT8 (QDQ) needs opset {INT8_MIN_OPSET} or "
                        f"newer; expected {INT8_MIN_OPSET}..{top}")
    return value


def check_ir_version(ir_version: Any, opset: int) -> Optional[int]:
    """None (keep the exporter's) or an IR version that can carry `opset`."""
    if ir_version is None:
        return None
    import onnx
    from onnx import helper

    value = _integer(ir_version, "--ir-version", 8)
    low = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    if not low <= value <= onnx.IR_VERSION:
        raise UserError(f"--ir-version {value}: opset {opset} needs IR version {low} or newer, and the installed "
                        f"onnx {onnx.__version__} writes up to {onnx.IR_VERSION}; expected {low}..{onnx.IR_VERSION} "
                        "(lower --opset for an older IR version)")
    return value


# ------------------------------------------------------------------------------------------------
# Run, checkpoint, output path

def _resolve_run(run: Optional[str], runs_dir: str, say) -> tuple[str, str]:
    """(run directory or '', checkpoint path) for `run` (a run folder, a checkpoint file, a run name)."""
    from toolkit import artifacts

    if run is None:
        run_dir = artifacts.newest_run(runs_dir)
        ckpt = artifacts.run_checkpoint(run_dir)
        say(f"exporting newest run: {run_dir} ({os.path.relpath(ckpt, run_dir)})")
        return run_dir, ckpt
    run = str(run)
    if not os.path.exists(run) and os.path.isdir(os.path.join(runs_dir, run)):
        run = os.path.join(runs_dir, run)  # a bare run name
    ckpt = artifacts.run_checkpoint(run)
    if os.path.isdir(run):
        return run, ckpt
    parent = os.path.dirname(os.path.dirname(os.path.abspath(ckpt)))
    is_run = os.path.basename(os.path.dirname(os.path.abspath(ckpt))) == "checkpoints"
    return (os.path.relpath(parent) if is_run else ""), ckpt


def _check_checkpoint(ckpt: dict, path: str) -> None:
    """One-line errors for a checkpoint that loads but can't be exported (before building anything)."""
    from toolkit.recipe import ARCHS

    missing = [k for k in ("model", "labels", "recipe") if k not in ckpt]
    if missing:
        raise UserError(f"{path}: checkpoint lacks {', '.join(missing)}; expected a checkpoint written by "
                        "toolkit train")
    model_cfg = (ckpt["recipe"] or {}).get("model") if isinstance(ckpt["recipe"], dict) else None
    arch = (model_cfg or {}).get("arch")
    if arch not in ARCHS:
        raise UserError(f"{path}: unknown architecture {arch!r} in the checkpoint's recipe; export supports "
                        f"{', '.join(ARCHS)}")
    labels = ckpt["labels"]
    if not isinstance(labels, (list, tuple)) or len(labels) < 1:
        raise UserError(f"{path}: checkpoint has no class labels; expected a checkpoint written by toolkit train")


def _output_path(out: Optional[str], exports_dir: str, name: str) -> str:
    if out is None:
        return os.path.join(exports_dir, f"{name}.onnx")
    out = str(out)
    if os.path.isdir(out) or out.endswith(("/", os.sep)):
        return os.path.join(out, f"{name}.onnx")
    if not out.endswith(".onnx"):
        raise UserError(f"--out {out}: expected a path ending in .onnx, or a folder")
    return out


def _check_writable(path: str) -> None:
    """Fail now, not after minutes of export work, if `path` can't be written."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UserError(f"{path}: is a folder; expected a .onnx file path to write")
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".tmp-write-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"{path}: cannot write there ({reason}: {folder}); expected a writable folder "
                        "(choose another with --out)") from None


def _twin_path(path: str, kind: str) -> str:
    return path[:-len(".onnx")] + TWINS[kind]


def _report_path(path: str) -> str:
    return path[:-len(".onnx")] + ".report.json"


# ------------------------------------------------------------------------------------------------
# The torch side: wrapping and exporting

def _wrap(model, preprocess: Preprocess, raw: bool, probabilities: bool):
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


def _torch_export(module, example, path: str, opset: int, output_names: list, dynamic: dict) -> str:
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
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if opset <= TORCHSCRIPT_MAX_OPSET:
            torch.onnx.export(module, (example,), path, dynamo=False, input_names=["input"],
                              output_names=output_names, opset_version=opset, do_constant_folding=True,
                              dynamic_axes={"input": dynamic, **output_axes})
            return "torchscript"
        dims = {axis: torch.export.Dim(name, min=1 if name == "batch" else 32) for axis, name in dynamic.items()}
        torch.onnx.export(module, (example,), path, dynamo=True, external_data=False, input_names=["input"],
                          output_names=output_names, opset_version=opset, dynamic_shapes=(dims,))
        return "dynamo"


def _torch_logits(model, x: np.ndarray) -> np.ndarray:
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
                hit = (node.op_type == "Conv" and module.startswith("features.") and module[9:].isdigit()
                       and block_of.get(int(module[9:])) == int(name[5:]))
            else:
                hit = node.name == name or (module == name and node.op_type in ("Gemm", "MatMul", "Conv"))
            if hit:
                hits.append(node.name)
        if not hits:
            raise UserError(f"--keep-fp32 {name!r}: no such layer in the graph; expected head, block1..block5, "
                            "a module name such as head.1 or features.0, or an ONNX node name")
        out += [h for h in hits if h not in out]
    return out


def _toposort(graph) -> None:
    """Sort nodes topologically in place (onnxruntime's float16 converter appends its input casts
    at the end of the node list, which ORT accepts but the ONNX checker rejects)."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(i in known for i in node.input):
                ordered.append(node)
                known.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise RuntimeError("graph has a cycle or a dangling input: " + rest[0].name)
        pending = rest
    copies = [type(n)() for n in ordered]
    for dst, src in zip(copies, ordered):
        dst.CopyFrom(src)
    del graph.node[:]
    graph.node.extend(copies)


def _drop_unused_domains(model_proto) -> None:
    """ORT's optimiser declares a dozen com.microsoft.* domains it didn't use; keep the used ones."""
    used = {n.domain for n in model_proto.graph.node} | {""}
    keep = [op for op in model_proto.opset_import if op.domain in used or op.domain == "ai.onnx"]
    del model_proto.opset_import[:]
    model_proto.opset_import.extend(keep)


def _unquantize_outputs(model_proto) -> list[str]:
    """Remove the QuantizeLinear -> DequantizeLinear pair that ORT's QDQ quantizer puts on graph outputs.

    Logits rounded to 256 levels would turn close classes into ties; the last layer's int8 arithmetic
    stays, only its output is left in float. Returns the outputs that were changed."""
    graph = model_proto.graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    changed, drop = [], []
    for out in graph.output:
        dq = producer.get(out.name)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear" or len(consumers.get(q.output[0], [])) != 1:
            continue
        source = q.input[0]
        src_node = producer.get(source)
        if src_node is None or any(o.name == source for o in graph.output):
            continue
        for i, name in enumerate(src_node.output):
            if name == source:
                src_node.output[i] = out.name
        for c in consumers.get(source, []):
            for i, name in enumerate(c.input):
                if name == source:
                    c.input[i] = out.name
        drop += [q, dq]
        changed.append(out.name)
    if drop:
        keep = [n for n in graph.node if all(n is not d for d in drop)]
        del graph.node[:]
        graph.node.extend(keep)
        used = {i for n in graph.node for i in n.input}
        inits = [t for t in graph.initializer if t.name in used]
        del graph.initializer[:]
        graph.initializer.extend(inits)
        info = [v for v in graph.value_info if v.name not in {d.output[0] for d in drop}]
        del graph.value_info[:]
        graph.value_info.extend(info)
    return changed


def _strip_debug_metadata(model_proto) -> None:
    """The dynamo exporter stores stack traces (this machine's file paths) on every node."""
    for node in model_proto.graph.node:
        keep = [p for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)


def _set_metadata(model_proto, meta: dict) -> None:
    from onnx import helper

    del model_proto.metadata_props[:]
    helper.set_model_props(model_proto, {k: v if isinstance(v, str) else json.dumps(v, default=str)
                                         for k, v in meta.items()})
    model_proto.producer_name = "toolkit"
    model_proto.doc_string = f"toolkit export of {meta.get('source_run') or meta.get('checkpoint')}"


def _save(model_proto, path: str) -> None:
    import onnx

    onnx.save_model(model_proto, path, save_as_external_data=False)


def _check(path: str) -> None:
    import onnx

    try:
        onnx.checker.check_model(path, full_check=True)
    except Exception as exc:
        raise UserError(f"{path}: the ONNX checker rejected the exported graph ({first_line(exc)})") from None


# ------------------------------------------------------------------------------------------------
# The parity gate

def _compare(ref: np.ndarray, got: np.ndarray, rtol: float, atol: float) -> dict:
    """Closeness and top-1 agreement of `got` against `ref` (both N x classes).

    A top-1 flip between two classes whose reference logits differ by less than the tolerance is a
    numeric tie, counted under 'ties' and not as a disagreement."""
    n = len(ref)
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    a_ref, a_got = ref.argmax(1), got.argmax(1)
    rows = np.arange(n)
    gap = ref[rows, a_ref] - ref[rows, a_got]
    tie = (a_ref != a_got) & (gap <= 2 * (atol + rtol * np.abs(ref[rows, a_ref])))
    mismatch = int(((a_ref != a_got) & ~tie).sum())
    return {"n": n, "max_abs_diff": float(diff.max()) if diff.size else 0.0,
            "close": bool(np.allclose(got, ref, rtol=rtol, atol=atol)),
            "top1_agreement": (n - mismatch) / n if n else 1.0, "ties": int(tie.sum()), "mismatches": mismatch}


def _parity_cases(real: np.ndarray, preprocess: Preprocess, dynamic_hw: bool, seed: int = 0) -> list[dict]:
    """Inputs for the gate: per batch size, a batch of real images (cycled when there are fewer) and a
    batch of random inputs. Each case carries uint8 pixels (for a raw-input graph) and float32 NCHW."""
    rng = np.random.default_rng(seed)
    crop = preprocess.crop
    cases, offset = [], 0
    for bs in PARITY_BATCH_SIZES:
        if len(real):
            idx = (offset + np.arange(bs)) % len(real)
            offset += bs
            cases.append({"kind": "real", "bs": bs, "pixels": real[idx],
                          "x": preprocess.normalize(real[idx])})
        pixels = rng.integers(0, 256, (bs, crop, crop, 3), dtype=np.uint8)
        cases.append({"kind": "random", "bs": bs, "pixels": pixels,
                      # N(0, 1) tensors reach well outside the normalised image range on purpose
                      "x": rng.standard_normal((bs, 3, crop, crop)).astype(np.float32),
                      "x_raw": preprocess.normalize(pixels)})
    if dynamic_hw:
        h, w = crop + 32, crop + 64
        pixels = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
        cases.append({"kind": "random", "bs": 2, "pixels": pixels, "hw": [h, w],
                      "x": rng.standard_normal((2, 3, h, w)).astype(np.float32),
                      "x_raw": preprocess.normalize(pixels)})
    return cases


def _parity(session, model, cases: list, raw: bool, rtol: float, atol_fn, probabilities: bool,
            ref_cache: dict) -> dict:
    """Run every case through ORT and PyTorch; per batch size and overall results (not yet judged)."""
    per_bs: dict = {}
    overall_ref, overall_got, kinds = [], [], []
    prob_ok = True
    outputs = ["logits", "probabilities"] if probabilities else ["logits"]
    for i, case in enumerate(cases):
        x_ref = case["x_raw"] if raw and "x_raw" in case else case["x"]
        key = (i, raw and "x_raw" in case)
        if key not in ref_cache:
            ref_cache[key] = _torch_logits(model, x_ref)
        ref = ref_cache[key]
        feed = case["pixels"] if raw else case["x"]
        result = session.run(outputs, {"input": feed})
        got = np.asarray(result[0], np.float32)
        if probabilities:
            soft = np.exp(ref - ref.max(1, keepdims=True))
            soft /= soft.sum(1, keepdims=True)
            prob_ok &= bool(np.allclose(result[1], soft, rtol=rtol, atol=1e-5))
        overall_ref.append(ref)
        overall_got.append(got)
        kinds += [case["kind"]] * len(ref)
        key_bs = str(case["bs"]) if "hw" not in case else f"{case['bs']}@{case['hw'][0]}x{case['hw'][1]}"
        per_bs.setdefault(key_bs, []).append((case["kind"], ref, got))
    scale = max(1e-6, float(max(np.abs(r).max() for r in overall_ref)))
    atol = atol_fn(scale)
    results = {}
    for key_bs, parts in per_bs.items():
        ref = np.concatenate([p[1] for p in parts])
        got = np.concatenate([p[2] for p in parts])
        cmp = _compare(ref, got, rtol, atol)
        cmp["n_real"] = sum(len(p[1]) for p in parts if p[0] == "real")
        cmp["n_random"] = sum(len(p[1]) for p in parts if p[0] == "random")
        results[key_bs] = cmp
    ref, got = np.concatenate(overall_ref), np.concatenate(overall_got)
    kinds_arr = np.asarray(kinds)
    total = _compare(ref, got, rtol, atol)
    real_mask = kinds_arr == "real"
    total.update({
        "rtol": rtol, "atol": atol, "batch_sizes": results,
        "max_abs_diff_real": float(np.abs(got[real_mask] - ref[real_mask]).max()) if real_mask.any() else None,
        "real_inputs": int(real_mask.sum()), "random_inputs": int((~real_mask).sum()),
        "max_abs_logit": float(np.abs(ref).max()),
    })
    if probabilities:
        total["probabilities_match"] = prob_ok
    return total


def _parity_line(p: dict) -> str:
    real = f", real images {p['max_abs_diff_real']:.2e}" if p.get("max_abs_diff_real") is not None else ""
    return (f"max abs diff {p['max_abs_diff']:.2e}{real} over {p['real_inputs']} real + {p['random_inputs']} random "
            f"inputs, top-1 agreement {p['top1_agreement'] * 100:.1f}%")


def _judge(p: dict, what: str, path: str, min_agreement: float = 1.0) -> None:
    problems = []
    if not p["close"]:
        worst = max(p["batch_sizes"].items(), key=lambda kv: kv[1]["max_abs_diff"])
        problems.append(f"logits differ by up to {p['max_abs_diff']:.3g} (worst at batch {worst[0]}; allowed "
                        f"rtol {p['rtol']:g}, atol {p['atol']:.3g})")
    if p["top1_agreement"] < min_agreement:
        problems.append(f"top-1 agreement {p['top1_agreement'] * 100:.1f}% (expected at least "
                        f"{min_agreement * 100:g}%, {p['mismatches']} of {p['n']} inputs differ)")
    else:
        problems.append(f"top-1 agreement {p['top1_agreement'] * 100:.1f}%")
    if p.get("probabilities_match") is False:
        problems.append("the probabilities output is not softmax(logits)")
    if len(problems) > 1 or p["top1_agreement"] < min_agreement:
        raise UserError(f"parity gate failed for {path} ({what}, ONNX Runtime CPU vs PyTorch on "
                        f"{p['real_inputs']} real + {p['random_inputs']} random inputs): {'; '.join(problems)}; "
                        "nothing was written")


# ------------------------------------------------------------------------------------------------
# Data of the run (validation images for parity, train images for calibration)

def _load_data(recipe) -> tuple[Any, Optional[str]]:
    """(Dataset or None, why not). Never downloads: export works offline or says it couldn't."""
    try:
        from toolkit.datasets import load_dataset

        data = recipe.data
        if data.source == "flowers102":
            recipe = dataclasses.replace(recipe, data=dataclasses.replace(data, download=False))
        return load_dataset(recipe, scan=False), None
    except Exception as exc:  # a UserError (missing folder), ImportError, OSError: all mean "no data here"
        return None, first_line(exc)


# ------------------------------------------------------------------------------------------------
# INT8

def _calibration_reader(pixels: np.ndarray, preprocess: Preprocess, batch_size: int = 8):
    from onnxruntime.quantization import CalibrationDataReader

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


def _unshare_initializers(model_proto) -> int:
    """Give every Conv/Gemm its own weight and bias tensors; returns how many copies were made.

    The exporter merges initializers with equal values (an untrained model's all-zero conv biases
    become one tensor). A bias shared by several convs keeps ORT from fusing their QDQ patterns into
    quantized convs, and INT8 then runs slower than FP32.
    """
    from onnx import numpy_helper

    inits = {init.name: init for init in model_proto.graph.initializer}
    seen: set = set()
    copies = 0
    for node in model_proto.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        for i, name in enumerate(node.input):
            if name not in inits:
                continue
            if name in seen:
                copy = numpy_helper.from_array(numpy_helper.to_array(inits[name]), f"{name}__{node.name or copies}")
                model_proto.graph.initializer.append(copy)
                node.input[i] = copy.name
                copies += 1
            seen.add(name)
    return copies


def _quantize(fp32_path: str, out_path: str, work_dir: str, reader, calib_method: str, per_channel: bool,
              keep_fp32: Iterable[str], block_of: dict) -> list[str]:
    """ORT static quantization (QDQ, int8 weights, uint8 activations); returns the excluded nodes."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = os.path.join(work_dir, "preprocessed.onnx")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        quant_pre_process(fp32_path, pre)  # symbolic shape inference + ORT's graph optimisation
    graph = onnx.load(pre)
    if _unshare_initializers(graph):
        onnx.save(graph, pre)
    excluded = resolve_layers(graph, keep_fp32, block_of) if keep_fp32 else []
    # The probabilities output stays a float32 softmax (uint8 probabilities would be coarse).
    softmax = [n.name for n in graph.graph.node if n.op_type == "Softmax"]
    del graph
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[calib_method]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        quantize_static(pre, out_path, reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=method, nodes_to_exclude=excluded + softmax,
                        extra_options={"CalibTensorRangeSymmetric": False})
    return excluded


# ------------------------------------------------------------------------------------------------
# The command

def export_run(run: Optional[str] = None, out: Optional[str] = None, opset: int = 17, fp16: bool = False,
               int8: bool = False, raw_input: bool = False, probabilities: bool = False, dynamic_hw: bool = False,
               calib_images: int = 64, calib_method: str = "minmax", per_channel: bool = True,
               keep_fp32: Iterable[str] = (), int8_budget: float = 1.0, parity_images: int = 16,
               ir_version: Optional[int] = None, exports_dir: str = "exports", runs_dir: str = "runs",
               quiet: bool = False, list_files: bool = True) -> dict:
    """Export a run's checkpoint to a verified, self-describing ONNX file; returns the report dict.

    run: a run folder, a checkpoint file, or a run name under runs_dir; None = the newest run.
    out: the .onnx path (or a folder); default exports_dir/<recipe name>.onnx. Twins sit beside it:
    <stem>.fp16.onnx, <stem>.int8.onnx, <stem>.raw.onnx, and the report <stem>.report.json.
    ir_version: write this ONNX IR version instead of the exporter's, for older runtimes (Triton's).
    list_files=False leaves out the closing list of written files (export_triton moves them on).
    """
    import onnx

    import toolkit
    from toolkit.train import checkpoint as ckpt_mod
    from toolkit import recipe as recipe_mod

    say = _noop if quiet else _say
    t_start = time.perf_counter()
    timings: dict = {}

    # 1. Cheap checks first -------------------------------------------------------------------
    if calib_method not in CALIB_METHODS:
        raise UserError(f"--calib-method {calib_method!r}: expected one of {', '.join(CALIB_METHODS)}")
    for key, value in (("--calib-images", calib_images), ("parity_images", parity_images)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise UserError(f"{key} {value!r}: expected a whole number, at least 1")
    try:
        int8_budget = float(int8_budget)
    except (TypeError, ValueError):
        raise UserError(f"--int8-budget {int8_budget!r}: expected a number of top-1 points, e.g. 1.0") from None
    if isinstance(keep_fp32, str):
        keep_fp32 = [k for k in keep_fp32.split(",") if k.strip()]
    keep_fp32 = [str(k).strip() for k in keep_fp32 if str(k).strip()]
    if keep_fp32 and not int8:
        raise UserError("--keep-fp32 only applies with --int8; add --int8 or drop --keep-fp32")

    run_dir, ckpt_path = _resolve_run(run, runs_dir, say)
    ckpt = ckpt_mod.load_checkpoint(ckpt_path)
    _check_checkpoint(ckpt, ckpt_path)
    recipe = recipe_mod.from_dict(ckpt["recipe"], source=f"{ckpt_path} (recipe inside the checkpoint)",
                                  check_paths=False)
    labels = [str(x) for x in ckpt["labels"]]
    head = recipe.model.head
    if dynamic_hw and head != "gap":
        raise UserError(f"--dynamic-hw: {ckpt_path} has a {head} head, whose flatten fixes the input at "
                        f"{recipe.preprocess.crop}x{recipe.preprocess.crop}; only a gap head (model.head: gap) "
                        "keeps height and width free")
    opset = check_opset(opset, int8)
    ir_version = check_ir_version(ir_version, opset)
    path = _output_path(out, exports_dir, recipe.name)
    _check_writable(path)
    folder = os.path.dirname(os.path.abspath(path))
    preprocess = Preprocess(**dataclasses.asdict(recipe.preprocess))
    crop = preprocess.crop

    t = time.perf_counter()
    model, _ = ckpt_mod.model_from_checkpoint(ckpt_path)
    model = model.float().eval()
    sha = ckpt_mod.sha256_file(ckpt_path)
    block_of = dict(getattr(model, "block_of", {}))
    timings["load_s"] = time.perf_counter() - t

    outputs = ["logits", "probabilities"] if probabilities else ["logits"]
    hw = ["height", "width"] if dynamic_hw else [crop, crop]
    base_meta = {
        "toolkit_format": "1",
        "labels": labels,
        "names": {str(i): name for i, name in enumerate(labels)},
        "preprocess": preprocess.to_dict(),
        "input": {"name": "input", "dtype": "float32", "layout": "NCHW", "shape": ["batch", 3, *hw], "raw": False},
        "outputs": outputs,
        "precision": "fp32",
        "toolkit_version": toolkit.__version__,
        "source_run": run_dir,
        "checkpoint": ckpt_path,
        "checkpoint_sha256": sha,
        "recipe": ckpt["recipe"],
        "metrics": ckpt.get("metrics") or {},
        "arch": recipe.model.arch,
        "head": head,
    }

    staged: dict = {}  # kind -> temp path in the output folder
    work_dir = None

    ir_written: dict = {}  # kind -> the IR version in the file

    def save(proto, kind: str) -> None:
        if ir_version is not None:
            proto.ir_version = ir_version  # before the checker and the parity gate, so they judge these bytes
        ir_written[kind] = int(proto.ir_version)
        _save(proto, staged[kind])

    def stage(kind: str) -> str:
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.path.basename(path)[:-5]}-{kind}-", suffix=".onnx",
                                   dir=folder)
        os.close(fd)
        staged[kind] = tmp
        return tmp

    try:
        # 2-3. Export, metadata, checker -------------------------------------------------------
        variants = [("fp32", False)] + ([("raw", True)] if raw_input else [])
        exporter = None
        import torch

        t = time.perf_counter()
        for kind, raw in variants:
            tmp = stage(kind)
            module = _wrap(model, preprocess, raw, probabilities)
            if raw:
                example = torch.randint(0, 256, (2, crop, crop, 3), dtype=torch.uint8)
                dynamic = {0: "batch", 1: "height", 2: "width"} if dynamic_hw else {0: "batch"}
            else:
                example = torch.randn(2, 3, crop, crop)
                dynamic = {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}
            try:
                exporter = _torch_export(module, example, tmp, opset, outputs, dynamic)
            except UserError:
                raise
            except Exception as exc:
                raise UserError(f"{ckpt_path}: torch.onnx.export failed ({first_line(exc)})") from None
            proto = onnx.load(tmp)
            if os.path.exists(tmp + ".data"):  # never expected (external_data=False); folded in regardless
                os.unlink(tmp + ".data")
            _strip_debug_metadata(proto)
            if kind == "fp32" and keep_fp32:
                resolve_layers(proto, keep_fp32, block_of)  # a typo fails now, not after the parity gate
            meta = dict(base_meta)
            if raw:
                meta["input"] = {"name": "input", "dtype": "uint8", "layout": "NHWC", "shape": ["batch", *hw, 3],
                                 "raw": True}
            _set_metadata(proto, meta)
            save(proto, kind)
            del proto
        timings["export_s"] = time.perf_counter() - t
        t = time.perf_counter()
        for kind in list(staged):
            _check(staged[kind])
        timings["check_s"] = time.perf_counter() - t
        say(f"exported {recipe.model.arch} ({head} head, {len(labels)} classes) with the {exporter} exporter, "
            f"opset {opset}; onnx checker passed")

        # 4. Parity gate ---------------------------------------------------------------------
        t = time.perf_counter()
        data, why = _load_data(recipe)
        real = np.zeros((0, crop, crop, 3), np.uint8)
        data_info: dict = {"split": None, "real_images": 0, "note": None}
        if data is not None:
            split = "val" if data.val else "test" if data.test else "train"
            items = getattr(data, split)
            real, _, skipped = load_pixels(items, preprocess, recipe.data.max_pixels, limit=int(parity_images))
            data_info.update(split=split, real_images=int(len(real)),
                             skipped=[f"{p}: {r}" for p, r in skipped])
            if split != "val":
                data_info["note"] = f"the run's data has no val split; parity used {split} images"
        if len(real) == 0:
            note = (f"could not load the run's data ({why})" if why else "the run's data has no readable images")
            data_info["note"] = note + "; parity gate used random tensors only"
            say(f"note: {data_info['note']}")
        cases = _parity_cases(real, preprocess, dynamic_hw)
        parity: dict = {}
        ref_cache: dict = {}
        for kind, raw in variants:
            session = cpu_session(staged[kind])
            parity[kind] = _parity(session, model, cases, raw, FP32_RTOL, lambda s: FP32_ATOL, probabilities,
                                   ref_cache)
            del session
            _judge(parity[kind], "fp32" if kind == "fp32" else "fp32, raw uint8 input",
                   path if kind == "fp32" else _twin_path(path, kind))
            say(f"parity {kind}: {_parity_line(parity[kind])}")
        timings["parity_s"] = time.perf_counter() - t

        # 5a. FP16 ---------------------------------------------------------------------------
        if fp16:
            from onnxruntime.transformers.float16 import convert_float_to_float16

            t = time.perf_counter()
            fp32_proto = onnx.load(staged["fp32"])
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                half = convert_float_to_float16(fp32_proto, keep_io_types=True)
            del fp32_proto
            _toposort(half.graph)
            _set_metadata(half, {**base_meta, "precision": "fp16"})
            tmp = stage("fp16")
            save(half, "fp16")
            del half
            _check(tmp)
            session = cpu_session(tmp)  # must load and run on the CPU provider with float32 IO
            parity["fp16"] = _parity(session, model, cases, False, FP16_RTOL, lambda s: FP16_ATOL_REL * s,
                                     probabilities, ref_cache)
            del session
            parity["fp16"]["min_top1_agreement"] = FP16_MIN_AGREEMENT
            _judge(parity["fp16"], "fp16 twin", _twin_path(path, "fp16"), FP16_MIN_AGREEMENT)
            timings["fp16_s"] = time.perf_counter() - t
            say(f"parity fp16: {_parity_line(parity['fp16'])}")

        # 5b. INT8 ---------------------------------------------------------------------------
        int8_info = None
        if int8:
            t = time.perf_counter()
            if data is None:
                raise UserError(f"--int8: could not load the run's data ({why}); INT8 needs its training images "
                                "for calibration and its validation images for the accuracy budget")
            eval_split = "val" if data.val else "test" if data.test else None
            if not data.train or eval_split is None:
                raise UserError("--int8: the run's data has no training images to calibrate on or no "
                                "validation/test images to check the accuracy budget on")
            order = np.random.default_rng(0).permutation(len(data.train))[:int(calib_images)]
            calib, _, _ = load_pixels([data.train[i] for i in order], preprocess, recipe.data.max_pixels)
            if len(calib) == 0:
                raise UserError("--int8: none of the sampled training images could be read for calibration")
            say(f"int8: calibrating ({calib_method}, {len(calib)} train images, "
                f"{'per-channel' if per_channel else 'per-tensor'} weights"
                f"{', keeping ' + ', '.join(keep_fp32) + ' in fp32' if keep_fp32 else ''}) ...")
            work_dir = tempfile.mkdtemp(prefix=".tmp-quant-", dir=folder)
            tmp = stage("int8")
            excluded = _quantize(staged["fp32"], tmp, work_dir, _calibration_reader(calib, preprocess),
                                 calib_method, per_channel, keep_fp32, block_of)
            q = onnx.load(tmp)
            _unquantize_outputs(q)
            _drop_unused_domains(q)
            quant = {"format": "QDQ", "weights": "int8", "activations": "uint8", "per_channel": bool(per_channel),
                     "calib_method": calib_method, "calib_images": int(len(calib)), "keep_fp32": keep_fp32,
                     "excluded_nodes": excluded}
            _set_metadata(q, {**base_meta, "precision": "int8", "quantization": quant})
            save(q, "int8")
            del q
            _check(tmp)
            # The accuracy budget, through ORT on the validation split, the same code as evaluate.
            items = getattr(data, eval_split)
            pixels, targets, _ = load_pixels(items, preprocess, recipe.data.max_pixels)
            if len(pixels) == 0:
                raise UserError(f"--int8: none of the {len(items)} {eval_split} images could be read")
            acc, logits = {}, {}
            for kind in ("fp32", "int8"):
                session = cpu_session(staged[kind])
                logits[kind] = run_logits(session, pixels, preprocess, False)
                acc[kind] = accuracy_report(logits[kind], targets, labels)
                del session
            drop = acc["fp32"]["top1"] - acc["int8"]["top1"]
            int8_info = {**quant, "split": eval_split, "n": int(len(pixels)), "budget": int8_budget,
                         "fp32_top1": acc["fp32"]["top1"], "int8_top1": acc["int8"]["top1"],
                         "fp32_top5": acc["fp32"]["top5"], "int8_top5": acc["int8"]["top5"],
                         "top1_drop": drop, "top1_agreement_with_fp32":
                             float((logits["fp32"].argmax(1) == logits["int8"].argmax(1)).mean())}
            timings["int8_s"] = time.perf_counter() - t
            if drop > int8_budget:
                hints = [m for m in ("entropy", "percentile") if m != calib_method]
                raise UserError(
                    f"int8 accuracy gate failed: top-1 {acc['fp32']['top1']:.2f}% (fp32) -> "
                    f"{acc['int8']['top1']:.2f}% (int8) on {len(pixels)} {eval_split} images, a drop of {drop:.2f} "
                    f"points over the budget of {int8_budget:g}; try --calib-method {' or '.join(hints)}, more "
                    f"--calib-images (used {len(calib)}), or --keep-fp32 head; nothing was written (the fp32 "
                    "export passed its gate: rerun without --int8 to keep it)")
            say(f"int8: top-1 {acc['fp32']['top1']:.2f}% -> {acc['int8']['top1']:.2f}% on {len(pixels)} "
                f"{eval_split} images (drop {drop:.2f}, budget {int8_budget:g})")

        # 6. Commit: every gate passed -----------------------------------------------------------
        finals = {"fp32": path, **{k: _twin_path(path, k) for k in staged if k != "fp32"}}
        files = {}
        for kind, tmp in staged.items():
            files[kind] = {"path": finals[kind], "bytes": os.path.getsize(tmp)}
        for kind in staged:
            _publish(staged[kind], finals[kind])
        staged.clear()
        removed = _remove_stale_twins(path, files, sha, say)
        if int8_info:
            int8_info["size_ratio"] = files["int8"]["bytes"] / files["fp32"]["bytes"]
        timings["total_s"] = time.perf_counter() - t_start
        import onnxruntime
        import torch

        result = {
            "name": recipe.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "model": path, "report": _report_path(path), "files": files, "removed_stale_twins": removed,
            "source_run": run_dir, "checkpoint": ckpt_path, "checkpoint_sha256": sha,
            "arch": recipe.model.arch, "head": head, "labels": labels, "metrics": base_meta["metrics"],
            "opset": opset, "ir_version": ir_written["fp32"], "exporter": exporter, "input": base_meta["input"], "outputs": outputs,
            "dynamic_hw": bool(dynamic_hw), "raw_input": bool(raw_input),
            "parity_data": data_info, "parity": parity, "int8": int8_info,
            "timings": {k: round(v, 3) for k, v in timings.items()},
            "versions": {"toolkit": toolkit.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
                         "onnxruntime": onnxruntime.__version__},
        }
        _write_json(_report_path(path), result)
    finally:
        for tmp in staged.values():
            for p in (tmp, tmp + ".data"):
                if os.path.exists(p):
                    os.unlink(p)
        if work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)

    if list_files:
        say(f"wrote {path} ({_mb(files['fp32']['bytes'])}) in {timings['total_s']:.1f} s")
        for kind in ("raw", "fp16", "int8"):
            if kind in files:
                ratio = files[kind]["bytes"] / files["fp32"]["bytes"] * 100
                say(f"wrote {files[kind]['path']} ({_mb(files[kind]['bytes'])}, {ratio:.0f}% of fp32)")
        say(f"report: {_report_path(path)}")
    return result


def _remove_stale_twins(path: str, files: dict, sha: str, say) -> list:
    """A twin left from an export of another checkpoint would contradict the new file; remove it."""
    import onnx

    removed = []
    for kind in TWINS:
        twin = _twin_path(path, kind)
        if kind in files or not os.path.isfile(twin):
            continue
        try:
            props = {p.key: p.value for p in onnx.load(twin, load_external_data=False).metadata_props}
        except Exception:
            continue  # not ours to judge
        if props.get("toolkit_format") == "1" and props.get("checkpoint_sha256") != sha:
            os.unlink(twin)
            removed.append(twin)
            say(f"removed {twin}: it came from another checkpoint")
    return removed


def _publish(tmp: str, final: str) -> None:
    """Rename a finished temp file into place with ordinary permissions (mkstemp makes it 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, final)


def _write_json(path: str, obj: dict) -> None:
    atomic_write(path, json.dumps(obj, indent=2, default=str) + "\n")


# ------------------------------------------------------------------------------------------------
# Triton Inference Server model repository

def export_triton(run: Optional[str] = None, repo: Optional[str] = None, max_batch_size: int = 32,
                  instances: int = 1, instance_kind: str = "auto", queue_delay_us: int = 100, model_version: int = 1,
                  exports_dir: str = "exports", quiet: bool = False, **export_options) -> dict:
    """Export a run (all gates as for a plain export) and lay the files out as a Triton model repository.

    repo: the repository folder (default exports_dir/triton). The FP32 file becomes model <name>; each
    twin its own model, <name>_fp16, <name>_int8, <name>_raw. Returns the export report with a
    'triton' list of the models written."""
    from toolkit.export import triton

    say = _noop if quiet else _say
    triton.check_options(max_batch_size, instances, instance_kind, queue_delay_us, model_version)
    repo = str(repo) if repo else os.path.join(exports_dir, "triton")
    if str(repo).endswith(".onnx") or (os.path.exists(repo) and not os.path.isdir(repo)):
        raise UserError(f"--out {repo}: with --format triton, expected a folder for the model repository")
    _check_writable(os.path.join(repo, "probe.onnx"))
    # The gated files are built outside the repository (Triton may be polling it), then moved in.
    staging = tempfile.mkdtemp(prefix=".tmp-triton-", dir=os.path.dirname(os.path.abspath(repo)))
    try:
        report = export_run(run=run, out=staging + os.sep, exports_dir=exports_dir, quiet=quiet, list_files=False,
                            **export_options)
        name, written = report["name"], []
        for kind in ("fp32", "fp16", "int8", "raw"):
            if kind not in report["files"]:
                continue
            model_name = name if kind == "fp32" else f"{name}_{kind}"
            written.append(triton.write_model(repo, model_name, report["files"][kind]["path"], model_version,
                                              max_batch_size, instances, instance_kind, queue_delay_us))
            report["files"][kind]["path"] = written[-1]["model"]
        report.update(model=written[0]["model"], report=os.path.join(written[0]["dir"], "export_report.json"),
                      triton=written)
        _write_json(report["report"], report)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    say(f"wrote Triton model repository {repo}/:")
    for model in written:
        say(f"  {model['name']:<20} {os.path.relpath(model['model'], repo)} ({model['precision']}), config.pbtxt, "
            "labels.txt")
    say(f"serve it: docker run --rm -p8000:8000 -p8001:8001 -p8002:8002 -v {os.path.abspath(repo)}:/models "
        "nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models")
    return report
