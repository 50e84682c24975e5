"""The plan of one export: which run and checkpoint, which model, where the files go, what they say.

Everything here is cheap except `load_model`, so bad input fails in a second, before any slow work.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import toolkit
from toolkit import artifacts, contract
from toolkit import recipe as recipe_mod
from toolkit.datasets import load_dataset
from toolkit.errors import UserError, first_line
from toolkit.export.options import ExportOptions
from toolkit.export.opset import check_ir_version, check_opset
from toolkit.preprocess import Preprocess
from toolkit.recipe import ARCHS
from toolkit.train.checkpoint import load_checkpoint
from toolkit.train.model import model_from_checkpoint


@dataclass
class ExportJob:
    """What every stage of an export shares."""

    options: ExportOptions  # checked (options.check_options)
    say: Callable  # print, or a no-op with quiet
    run_dir: str  # the run folder; '' for a checkpoint file outside a run
    ckpt_path: str  # the checkpoint exported
    ckpt: dict  # that checkpoint, loaded
    recipe: Any  # toolkit.recipe.Recipe, from inside the checkpoint
    labels: list  # class names, one per logit
    opset: int  # checked against the installed ONNX Runtime
    ir_version: Optional[int]  # the IR version to write; None = the exporter's
    path: str  # the final FP32 .onnx path (twins and the report sit beside it)
    preprocess: Preprocess  # the run's eval preprocessing
    timings: dict = field(default_factory=dict)  # stage -> seconds, for the report
    model: Any = None  # the float32 eval-mode Classifier (load_model)
    sha: str = ""  # sha256 of the checkpoint file (load_model)
    block_of: dict = field(default_factory=dict)  # features index -> conv block number, for --keep-fp32
    ood_score: Optional[str] = None  # the OOD score, picked once (toolkit.export.calibrate.pick_score)

    @property
    def outputs(self) -> list:
        return ["logits", "probabilities"] if self.options.probabilities else ["logits"]

    @property
    def folder(self) -> str:
        return os.path.dirname(os.path.abspath(self.path))


def plan_export(options: ExportOptions, say) -> ExportJob:
    """Resolve the run and its checkpoint, check the architecture, the opset and the output folder."""
    run_dir, ckpt_path = _resolve_run(options.run, options.runs_dir, say)
    ckpt = load_checkpoint(ckpt_path)
    _check_checkpoint(ckpt, ckpt_path)
    progress = ckpt.get("run_state") if isinstance(ckpt.get("run_state"), dict) else {}
    if progress.get("step_in_epoch"):   # a run stopped inside an epoch, before any best.pt
        say(f"note: {ckpt_path} was saved inside epoch {progress.get('epoch', 0) + 1} (after batch "
            f"{progress['step_in_epoch']}) and never validated; `toolkit train RECIPE --resume` finishes the epoch")
    recipe = recipe_mod.from_dict(ckpt["recipe"], source=f"{ckpt_path} (recipe inside the checkpoint)",
                                  check_paths=False)
    head = recipe.model.head
    if options.dynamic_hw and head != "gap":
        raise UserError(f"--dynamic-hw: {ckpt_path} has a {head} head, whose flatten fixes the input at "
                        f"{recipe.preprocess.crop}x{recipe.preprocess.crop}; only a gap head (model.head: gap) "
                        "keeps height and width free")
    opset = check_opset(options.opset, options.int8)
    ir_version = check_ir_version(options.ir_version, opset)
    path = _output_path(options.out, options.exports_dir, recipe.name)
    check_writable(path)
    return ExportJob(options=options, say=say, run_dir=run_dir, ckpt_path=ckpt_path, ckpt=ckpt, recipe=recipe,
                     labels=[str(x) for x in ckpt["labels"]], opset=opset, ir_version=ir_version, path=path,
                     preprocess=Preprocess(**dataclasses.asdict(recipe.preprocess)))


def load_model(job: ExportJob) -> None:
    """Build the checkpoint's model (float32, eval mode) into the job."""
    t = time.perf_counter()
    model, _ = model_from_checkpoint(job.ckpt_path)
    job.model = model.float().eval()
    job.sha = artifacts.sha256_file(job.ckpt_path)
    job.block_of = dict(getattr(job.model, "block_of", {}))
    job.timings["load_s"] = time.perf_counter() - t


def base_metadata(job: ExportJob) -> dict:
    """The metadata of the FP32 file (toolkit.contract); twins change input, precision, quantization."""
    preprocess = job.preprocess.to_dict()
    return {
        "toolkit_format": contract.format_for(preprocess),
        "labels": job.labels,
        "names": {str(i): name for i, name in enumerate(job.labels)},
        "preprocess": preprocess,
        "input": input_spec(job, raw=False),
        "outputs": job.outputs,
        "precision": "fp32",
        "toolkit_version": toolkit.__version__,
        "source_run": job.run_dir,
        "checkpoint": job.ckpt_path,
        "checkpoint_sha256": job.sha,
        "recipe": job.ckpt["recipe"],
        "metrics": job.ckpt.get("metrics") or {},
        "arch": job.recipe.model.arch,
        "head": job.recipe.model.head,
    }


def input_spec(job: ExportJob, raw: bool) -> dict:
    """The `input` metadata: float32 NCHW, or uint8 NHWC pixels for the raw-input twin."""
    crop = job.preprocess.crop
    hw = ["height", "width"] if job.options.dynamic_hw else [crop, crop]
    if raw:
        return {"name": "input", "dtype": "uint8", "layout": "NHWC", "shape": ["batch", *hw, 3], "raw": True}
    return {"name": "input", "dtype": "float32", "layout": "NCHW", "shape": ["batch", 3, *hw], "raw": False}


def load_data(recipe) -> tuple[Any, Optional[str]]:
    """(Dataset or None, why not). Never downloads: export works offline or says it couldn't."""
    try:
        data = recipe.data
        if data.source == "flowers102":
            recipe = dataclasses.replace(recipe, data=dataclasses.replace(data, download=False))
        return load_dataset(recipe, scan=False), None
    except Exception as exc:  # a UserError (missing folder), ImportError, OSError: all mean "no data here"
        return None, first_line(exc)


# ------------------------------------------------------------------------------------------------
# Run, checkpoint, output path

def _resolve_run(run: Optional[str], runs_dir: str, say) -> tuple[str, str]:
    """(run directory or '', checkpoint path) for `run` (a run folder, a checkpoint file, a run name)."""
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
        raise UserError(f"--out {out}: expected a path ending in .onnx, or a folder (one that exists, or a new "
                        f"one written with a trailing slash: --out {out}/)")
    return out


def check_writable(path: str) -> None:
    """Fail now, not after minutes of export work, if `path` can't be written."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UserError(f"{path}: is a folder; expected a .onnx file path to write")
    if problem := artifacts.folder_problem(folder):   # a file in the way says so, not "File exists"
        raise UserError(f"{path}: cannot write there ({problem}); expected a writable folder (choose another "
                        "with --out)")
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".tmp-write-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"{path}: cannot write there ({reason}: {folder}); expected a writable folder "
                        "(choose another with --out)") from None

