"""`toolkit export --format tflite`: the run's checkpoint -> one verified .tflite file for LiteRT and MediaPipe.

Stages, in order; a failure at any one is a UserError and nothing appears under the final name:
  1. the extra is installed (litert-torch, ai-edge-litert), the options, the plan (toolkit/export/plan.py)
  2. litert-torch converts the float32 model behind a channel-last wrapper: input 1 x H x W x 3 float32,
     RGB scaled to [0, 1]; the run's per-channel normalisation runs inside the graph, because MediaPipe's
     ImageClassifier refuses per-channel normalisation metadata (it takes one mean and one std)
  3. metadata MediaPipe reads (toolkit/export/tflite_metadata.py): normalisation 0 / 255 on 0-255 pixels,
     RGB image, labels.txt zipped in
  4. checks, all run before judging so a failure lists every one: LiteRT with XNNPACK and with the
     reference kernels against PyTorch (the FP32 parity gate of toolkit/export/parity.py, on the same real
     and random pixel inputs); the zipped labels equal the checkpoint's; MediaPipe's ImageClassifier, when
     mediapipe is installed, gives the same top-1 as PyTorch on validation images
     with --int8, the INT8 file (toolkit/export/tflite_int8.py) held to --int8-budget on the validation split
  5. the files renamed into place, the report <stem>.tflite.json beside them
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time

import torch

import toolkit
from toolkit.artifacts import atomic_write
from toolkit.errors import UserError
from toolkit.export.int8 import check_int8_data
from toolkit.export.options import ExportOptions, check_options
from toolkit.export.plan import load_data, load_model, plan_export
from toolkit.export.staging import remove_stale_temps
from toolkit.export.tflite import TfliteOptions, check_tflite_options, quiet_litert, require_extra, tflite_path
from toolkit.export.parity import real_images
from toolkit.export.tflite_checks import labels_check, litert_check, mediapipe_check
from toolkit.export.tflite_int8 import convert_int8, int8_budget_check
from toolkit.export.tflite_metadata import attach, metadata_bytes


def export_tflite(run=None, tflite=None, **fields) -> dict:
    """Export a run to a verified .tflite file (see the module docstring); returns the report dict.

    run: an ExportOptions or the run, as for export_run; tflite: a TfliteOptions. Keyword arguments are
    fields of either. --out names the file (<stem>.tflite, or <stem>.onnx for the same) or a folder."""
    require_extra()
    names = {f.name for f in dataclasses.fields(TfliteOptions)}
    tflite = dataclasses.replace(tflite or TfliteOptions(), **{k: v for k, v in fields.items() if k in names})
    check_tflite_options(tflite, {k: v for k, v in fields.items() if k not in names})
    if str(fields.get("out") or "").endswith(".tflite"):   # --out m.tflite: the file asked for, named as m.onnx is
        fields = {**fields, "out": str(fields["out"])[:-len(".tflite")] + ".onnx"}
    options = check_options(ExportOptions.of(run, **{k: v for k, v in fields.items() if k not in names}))
    say = (lambda *a: None) if options.quiet else (lambda *a: print(*a, flush=True))
    t_start = time.perf_counter()
    job = plan_export(options, say)
    load_model(job)
    path = tflite_path(job.path)
    paths = {"fp32": path, **({"int8": path[:-len(".tflite")] + ".int8.tflite"} if options.int8 else {})}
    data, why = load_data(job.recipe)
    if options.int8:
        check_int8_data(data, why)  # cheap, before the conversion
    remove_stale_temps(job.folder, say)  # what an export killed with -9 left
    wrapper = ChannelLast(job.model, job.preprocess.mean, job.preprocess.std).eval()
    with tempfile.TemporaryDirectory(prefix=f".tmp-tflite-pid{os.getpid()}-", dir=job.folder) as work:
        staged = {kind: os.path.join(work, f"{kind}.tflite") for kind in paths}
        job.timings["convert_s"] = _convert(job, wrapper, staged["fp32"])
        n_calib = _convert_int8(job, wrapper, data, staged["int8"]) if options.int8 else 0
        checks, data_info = _verify(job, staged, data, why, tflite, n_calib)
        stale = _stale_int8(path, paths, job.sha)   # read from the report the new one replaces
        for kind, tmp in staged.items():
            os.replace(tmp, paths[kind])
    report = _report(job, paths, checks, data_info, time.perf_counter() - t_start)
    atomic_write(path + ".json", _json(report))
    if stale:
        os.unlink(stale)
        say(f"removed {stale}: it came from another checkpoint")
    for kind, final in paths.items():
        say(f"wrote {final} ({os.path.getsize(final) / 1e6:.1f} MB)")
    say(f"in {report['timings']['total_s']:.1f} s; report: {path}.json")
    return report


def _stale_int8(path: str, paths: dict, sha: str) -> str | None:
    """An INT8 .tflite beside the file from an export of another checkpoint (its report says which): left
    there, it sat beside a new FP32 file of another model, and benchmark --tflite timed the two as one."""
    int8 = path[:-len(".tflite")] + ".int8.tflite"
    if "int8" in paths or not os.path.isfile(int8):
        return None
    try:
        with open(path + ".json") as fh:
            previous = json.load(fh)
    except (OSError, ValueError):
        previous = {}
    same = isinstance(previous, dict) and previous.get("checkpoint_sha256") == sha
    return None if same else int8


class ChannelLast(torch.nn.Module):
    """The checkpoint's model behind NHWC input in [0, 1], its per-channel normalisation in the graph."""

    def __init__(self, model, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, image):
        return self.model((image.permute(0, 3, 1, 2) - self.mean) / self.std)


def _convert(job, wrapper, staged: str) -> float:
    """litert-torch conversion plus metadata, written to `staged`; returns the seconds it took."""
    t = time.perf_counter()
    crop = job.preprocess.crop
    job.say(f"tflite: converting {job.recipe.model.arch} with litert-torch (1 x {crop} x {crop} x 3) ...")
    with torch.no_grad(), quiet_litert():
        import litert_torch

        litert_torch.convert(wrapper, (torch.zeros(1, crop, crop, 3),)).export(staged + ".raw")
    _with_metadata(job, staged + ".raw", staged)
    return time.perf_counter() - t


def _convert_int8(job, wrapper, data, staged: str) -> int:
    t = time.perf_counter()
    n_calib = convert_int8(job, wrapper, data, staged + ".raw")
    _with_metadata(job, staged + ".raw", staged)
    job.timings["int8_convert_s"] = time.perf_counter() - t
    return n_calib


def _with_metadata(job, raw: str, staged: str) -> None:
    """The converted file `raw` with the metadata MediaPipe reads, written to `staged`."""
    with open(raw, "rb") as fh:
        model = fh.read()
    crop = job.preprocess.crop
    meta = metadata_bytes(job.recipe.name, f"{job.recipe.model.arch} image classifier exported by toolkit",
                          [0.0], [255.0], crop, len(job.labels))
    atomic_write(staged, attach(model, meta, [str(label) for label in job.labels]))


def _verify(job, staged: dict, data, why, tflite: TfliteOptions, n_calib: int) -> tuple[dict, dict]:
    """Every check's numbers; one UserError listing all of them when any fails."""
    real, data_info = real_images(job, data, why)
    fp32 = staged["fp32"]
    checks = {"litert_xnnpack": litert_check(job, fp32, real, "xnnpack"),
              "litert_reference": litert_check(job, fp32, real, "reference"),
              "labels": labels_check(job, fp32),
              "mediapipe": mediapipe_check(job, fp32, data, tflite)}
    if "int8" in staged:
        checks["int8_budget"] = int8_budget_check(job, fp32, staged["int8"], data, n_calib)
    for name, check in checks.items():
        job.say(f"tflite {name}: {check['line']}")
    if any(check["ok"] is False for check in checks.values()):
        only_int8 = [name for name, check in checks.items() if check["ok"] is False] == ["int8_budget"]
        raise UserError(f"tflite verification failed for {tflite_path(job.path)}: " + "; ".join(
            f"{name}: {check['line']}" for name, check in checks.items()) + "; nothing was written" +
            (" (the FP32 file passed its checks: rerun without --int8 to keep it)" if only_int8 else ""))
    return checks, data_info


def _report(job, paths: dict, checks: dict, data_info: dict, total_s: float) -> dict:
    import ai_edge_litert
    import litert_torch
    from ai_edge_litert.interpreter import Interpreter

    p, tensor = job.preprocess, Interpreter(model_path=paths["fp32"]).get_input_details()[0]
    return {"name": job.recipe.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "model": paths["fp32"],
            "files": {kind: {"path": f, "bytes": os.path.getsize(f)} for kind, f in paths.items()},
            "bytes": os.path.getsize(paths["fp32"]), "source_run": job.run_dir, "checkpoint": job.ckpt_path,
            "checkpoint_sha256": job.sha, "arch": job.recipe.model.arch, "labels": job.labels,
            "input": {"name": tensor["name"], "layout": "NHWC", "shape": [int(d) for d in tensor["shape"]],
                      "dtype": str(tensor["dtype"].__name__),
                      "scale": "RGB pixels / 255", "normalisation_in_graph": {"mean": list(p.mean),
                                                                               "std": list(p.std)},
                      "resize": p.resize, "crop": p.crop, "fit": p.fit, "interpolation": p.interpolation},
            "parity_data": data_info, "checks": {k: {kk: vv for kk, vv in v.items() if kk != "line"}
                                                 for k, v in checks.items()},
            "timings": {**{k: round(v, 3) for k, v in job.timings.items()}, "total_s": round(total_s, 3)},
            "versions": {"toolkit": toolkit.__version__, "torch": torch.__version__,
                         "litert_torch": getattr(litert_torch, "__version__", "?"),
                         "ai_edge_litert": getattr(ai_edge_litert, "__version__", "?")}}


def _json(obj: dict) -> str:
    return json.dumps(obj, indent=2, default=str) + "\n"
