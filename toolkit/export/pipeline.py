"""ONNX export: one self-describing file per run, proven equal to PyTorch, with FP16 and INT8 twins.

    export_run()                      # newest run -> exports/<name>.onnx (+ exports/<name>.report.json)
    export_run("runs/flowers", int8=True, keep_fp32=("head",))
    export_run(ExportOptions(run="runs/flowers", fp16=True))

Stages, in order; a failure at any one is a UserError and nothing appears under a final name:
  1. plan: resolve the run and its checkpoint, check the architecture, the opset and the output folder
     (all cheap, so bad input fails in a second, before any slow work)            toolkit/export/plan.py
  2. torch.onnx.export to a temp file in the output folder (single file, `input` -> `logits`
     [+ `probabilities`], dynamic batch axis; H and W too with dynamic_hw and a gap head), the
     metadata (toolkit.contract), the onnx checker in full                        toolkit/export/torch_graph.py
  3. parity gate: ONNX Runtime (CPU) against PyTorch on real validation images of the run plus random
     tensors, at batch sizes 1, 2, 7 and 16                                        toolkit/export/parity.py
  4. optional twins: FP16 weights with float32 IO (own tolerance)                 toolkit/export/twins.py
     INT8 static QDQ quantization under an accuracy budget measured on the validation split, trying
     other settings when the first misses it                                       toolkit/export/int8.py
  5. calibration: each file's own temperature and OOD threshold on the validation split, and the same
     accept/reject decision on every engine and twin (>= 99%)                     toolkit/export/calibrate.py
  6. all files renamed into place together, then the JSON report beside them       toolkit/export/staging.py
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from typing import Optional

import toolkit
from toolkit import artifacts
from toolkit.errors import UserError
import toolkit.export.triton as triton_mod
from toolkit.export.opset import check_ir_version, check_opset, ort_max_opset  # noqa: F401 (public here too)
from toolkit.export.bf16 import bf16_check, require_bf16
from toolkit.export.calibrate import calibrate_files
from toolkit.export.options import ExportOptions, check_options
from toolkit.export.parity import gate_fp32
from toolkit.export.plan import ExportJob, base_metadata, load_data, load_model, plan_export
from toolkit.export.staging import (Staging, remove_stale_temps, remove_stale_twins, report_path, write_json,
                                    writing)
from toolkit.export.torch_graph import export_graphs, resolve_layers  # noqa: F401 (public here too)
from toolkit.export.int8 import int8_twin
from toolkit.export.twins import FP16_MIN_AGREEMENT, fp16_twin  # noqa: F401 (public here too)
from toolkit.runtime.ood_eval import ood_pixels

__all__ = ["ExportOptions", "export_run", "export_triton", "ort_max_opset", "check_opset", "check_ir_version",
           "resolve_layers", "FP16_MIN_AGREEMENT"]


def _noop(*_args, **_kwargs) -> None:
    return None


def _say(*args) -> None:
    print(*args, flush=True)


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB"


def export_run(run=None, stages: tuple = (), **fields) -> dict:
    """Export a run's checkpoint to a verified, self-describing ONNX file; returns the report dict.

    run: an ExportOptions, or the run (a run folder, a checkpoint file, a run name under runs_dir; None =
    the newest run). Keyword arguments are ExportOptions fields (they override a given ExportOptions).
    stages: a format's own stages ((name, stage) pairs), run after the twins and calibration and before anything
    is published, each as stage(job, staging, gate, data, why) -> its report section (a UserError publishes
    nothing).
    Twins sit beside the file: <stem>.fp16.onnx, <stem>.int8.onnx, <stem>.raw.onnx, and the report
    <stem>.report.json.
    """
    t_start = time.perf_counter()
    options = check_options(ExportOptions.of(run, **fields))
    if options.bf16_check:
        require_bf16()   # openvino and a BF16 CPU, before any slow work
    say = _noop if options.quiet else _say
    job = plan_export(options, say)
    out_pixels = ood_pixels(options.ood, job.preprocess, job.recipe.data.max_pixels) if options.ood else None
    load_model(job)
    remove_stale_temps(os.path.dirname(os.path.abspath(job.path)), say)
    with writing(job.path), Staging(job.path, job.ir_version) as staging:
        exporter = export_graphs(job, staging)
        data, why = load_data(job.recipe)
        gate, data_info, parity = gate_fp32(job, staging, data, why)
        if options.bf16_check:
            parity["bf16_openvino"] = bf16_check(job, staging, gate)
        if options.fp16:
            parity["fp16"] = fp16_twin(job, staging, gate)
        int8_info = int8_twin(job, staging, data, why, out_pixels) if options.int8 else None
        calibrated = calibrate_files(job, staging, data, out_pixels)  # before the stages: they copy the files
        extra = {name: stage(job, staging, gate, data, why) for name, stage in stages}
        ir_version = staging.ir_written["fp32"]
        files = staging.publish()
    removed = remove_stale_twins(job.path, files, job.sha, say)
    if int8_info:
        int8_info["size_ratio"] = files["int8"]["bytes"] / files["fp32"]["bytes"]
    job.timings["total_s"] = time.perf_counter() - t_start
    report = {**_report(job, files, removed, exporter, ir_version, data_info, parity, int8_info),
              "calibration": calibrated, **extra}
    write_json(report_path(job.path), report)
    if options.list_files:
        _list_files(job, files)
    return report


def _report(job: ExportJob, files: dict, removed: list, exporter: str, ir_version: int, data_info: dict,
            parity: dict, int8_info: Optional[dict]) -> dict:
    """The export report (<stem>.report.json): what was written, from what, and every gate's numbers."""
    import onnx
    import onnxruntime
    import torch

    meta, o = base_metadata(job), job.options
    return {
        "name": job.recipe.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": job.path, "report": report_path(job.path), "files": files, "removed_stale_twins": removed,
        "source_run": job.run_dir, "checkpoint": job.ckpt_path, "checkpoint_sha256": job.sha,
        "arch": job.recipe.model.arch, "head": job.recipe.model.head, "labels": job.labels,
        "metrics": meta["metrics"], "opset": job.opset, "ir_version": ir_version, "exporter": exporter,
        "input": meta["input"], "outputs": job.outputs,
        "dynamic_hw": bool(o.dynamic_hw), "raw_input": bool(o.raw_input),
        "parity_data": data_info, "parity": parity, "int8": int8_info,
        "timings": {k: round(v, 3) for k, v in job.timings.items()},
        "versions": {"toolkit": toolkit.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__},
    }


def _list_files(job: ExportJob, files: dict) -> None:
    job.say(f"wrote {job.path} ({_mb(files['fp32']['bytes'])}) in {job.timings['total_s']:.1f} s")
    for kind in ("raw", "fp16", "int8"):
        if kind in files:
            ratio = files[kind]["bytes"] / files["fp32"]["bytes"] * 100
            job.say(f"wrote {files[kind]['path']} ({_mb(files[kind]['bytes'])}, {ratio:.0f}% of fp32)")
    job.say(f"report: {report_path(job.path)}")


# ------------------------------------------------------------------------------------------------
# Triton Inference Server model repository

def export_triton(run=None, triton=None, **fields) -> dict:
    """Export a run (all gates as for a plain export) and lay the files out as a Triton model repository.

    run: an ExportOptions or the run, as for export_run; triton: a TritonOptions. Keyword arguments are
    fields of either (repo, max_batch_size, instances, instance_kind, queue_delay_us, model_version are
    TritonOptions'). repo defaults to exports_dir/triton. The FP32 file becomes model <name>; each twin its
    own model, <name>_fp16, <name>_int8, <name>_raw. Returns the export report with a 'triton' list of the
    models written."""
    names = {f.name for f in dataclasses.fields(triton_mod.TritonOptions)}
    triton = dataclasses.replace(triton or triton_mod.TritonOptions(), **{k: v for k, v in fields.items()
                                                                          if k in names})
    options = ExportOptions.of(run, **{k: v for k, v in fields.items() if k not in names})
    say = _noop if options.quiet else _say
    triton_mod.check_options(triton)
    repo = str(triton.repo) if triton.repo else os.path.join(options.exports_dir, "triton")
    if repo.endswith(".onnx") or (os.path.exists(repo) and not os.path.isdir(repo)):
        raise UserError(f"--out {repo}: with --format triton, expected a folder for the model repository")
    if problem := artifacts.folder_problem(repo):
        raise UserError(f"--out {repo}: {problem}; expected a folder for the model repository")
    # The gated files are built outside the repository (Triton may be polling it), then moved in.
    parent = os.path.dirname(os.path.abspath(repo))
    remove_stale_temps(parent, say)  # what an export killed with -9 left
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".tmp-triton-pid{os.getpid()}-", dir=parent)
    try:
        report = export_run(options, out=staging + os.sep, list_files=False)
        written = _move_into_repo(report, repo, triton)
        report.update(model=written[0]["model"], report=os.path.join(written[0]["dir"], "export_report.json"),
                      triton=written)
        write_json(report["report"], report)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _say_repo(say, repo, written)
    return report


def _move_into_repo(report: dict, repo: str, triton) -> list:
    """Each exported file becomes one model of the repository; the report's paths follow them."""
    written = []
    for kind in ("fp32", "fp16", "int8", "raw"):
        if kind not in report["files"]:
            continue
        model_name = report["name"] if kind == "fp32" else f"{report['name']}_{kind}"
        written.append(triton_mod.write_model(repo, model_name, report["files"][kind]["path"], triton))
        report["files"][kind]["path"] = written[-1]["model"]
    return written


def _say_repo(say, repo: str, written: list) -> None:
    say(f"wrote Triton model repository {repo.rstrip(os.sep) or repo}{os.sep}:")
    for model in written:
        say(f"  {model['name']:<20} {os.path.relpath(model['model'], repo)} ({model['precision']}), config.pbtxt, "
            "labels.txt")
    say(f"serve it: docker run --rm -p8000:8000 -p8001:8001 -p8002:8002 -v {os.path.abspath(repo)}:/models "
        "nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models")
