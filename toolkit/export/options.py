"""What `toolkit export` is asked to do: one dataclass of options, and their cheap checks.

The CLI's `toolkit export` flags map one to one onto ExportOptions fields (see docs/export.md).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from numbers import Integral
from typing import Iterable, Optional

from toolkit.calibration import MIN_AGREEMENT, check_accept_rate, check_share
from toolkit.errors import UserError
from toolkit.parsing import parse_bool, parse_list

CALIB_METHODS = ("minmax", "entropy", "percentile")


@dataclass
class ExportOptions:
    """Options of one export (the `toolkit export` flags)."""

    run: Optional[str] = None  # a run folder, a checkpoint file or a run name under runs_dir; None = newest run
    out: Optional[str] = None  # the .onnx path or a folder; None = exports_dir/<recipe name>.onnx
    opset: int = 17  # default-domain ONNX opset (checked against the installed ONNX Runtime)
    fp16: bool = False  # add the <stem>.fp16.onnx twin: fp16 weights, float32 inputs and outputs
    fp16_keep_fp32: Optional[Iterable[str]] = None  # op types the FP16 twin keeps in float32 (Sigmoid,Softmax); None = measured
    int8: bool = False  # add the <stem>.int8.onnx twin: static QDQ quantization under int8_budget
    raw_input: bool = False  # add the <stem>.raw.onnx twin: uint8 NHWC pixels in, normalisation in the graph
    probabilities: bool = False  # add a softmax `probabilities` output beside `logits`
    dynamic_hw: bool = False  # height and width dynamic too (gap head only)
    calib_images: int = 64  # training images sampled for INT8 calibration
    calib_method: Optional[str] = None  # INT8 calibration (CALIB_METHODS); None = minmax first, the search varies it
    per_channel: Optional[bool] = None  # INT8 weights per channel, else per tensor; None = per-channel, then searched
    int8_search: bool = True  # when the first INT8 setting misses int8_budget, try the others (docs/export.md)
    keep_fp32: Iterable[str] = ()  # layers --int8 leaves in float: head, block1..block5, a module or node name
    int8_budget: float = 1.0  # the largest allowed top-1 drop FP32 -> INT8, in points, on the validation split
    int8_qat_steps: int = 0  # INT8's last rung: steps of quantization-aware fine-tuning when no setting fits; 0 = off
    parity_images: int = 16  # validation images the parity gate runs (beside random tensors)
    bf16_check: bool = False  # also judge the FP32 file on OpenVINO bf16 against PyTorch (toolkit/export/bf16.py)
    accept_rate: float = 0.95  # share of validation images the "unknown" threshold accepts, in (0, 1]
    min_agreement: float = MIN_AGREEMENT  # share of validation images on which every twin and engine must take the FP32 file's accept/reject decision, in (0, 1]
    ood: Optional[str] = None  # a folder of photos that are none of the classes: report how many are rejected
    ir_version: Optional[int] = None  # write this ONNX IR version (older runtimes); None = the exporter's
    exports_dir: str = "exports"  # where exports go when `out` is not given
    runs_dir: str = "runs"  # where run names and the newest run are looked up
    quiet: bool = False  # print nothing
    list_files: bool = True  # close with the list of written files (export_triton moves them on, so it doesn't)

    @classmethod
    def of(cls, run=None, **fields) -> "ExportOptions":
        """ExportOptions from export_run's arguments: an ExportOptions (fields override it) or the run."""
        names = [f.name for f in dataclasses.fields(cls)]
        for key in fields:   # a misspelt keyword was Python's TypeError from __init__
            if key not in names:
                near = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
                raise UserError(f"export: no option {key!r}" + (f"; did you mean {near[0]!r}?" if near else
                                                                 "; expected one of ExportOptions' fields"))
        if isinstance(run, cls):
            return dataclasses.replace(run, **fields)
        return cls(run=run, **fields)


def check_options(options: ExportOptions) -> ExportOptions:
    """The options with keep_fp32 as a list and int8_budget as a float; a UserError for a bad one.

    Only what needs no checkpoint; the opset and the output path are checked once the run is known."""
    # every switch read as the word it may be: export_run(int8="false") wrote the INT8 twin ('false' is true)
    options = dataclasses.replace(options, **{f.name: parse_bool(getattr(options, f.name), "--" + f.name.replace(
        "_", "-")) for f in dataclasses.fields(options) if isinstance(f.default, bool)})
    if options.calib_method is not None and options.calib_method not in CALIB_METHODS:
        raise UserError(f"--calib-method {options.calib_method!r}: expected one of {', '.join(CALIB_METHODS)}")
    for key, value in (("--calib-images", options.calib_images), ("--parity-images", options.parity_images)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
            raise UserError(f"{key} {value!r}: expected a whole number, at least 1")
    qat = options.int8_qat_steps
    if isinstance(qat, bool) or not isinstance(qat, Integral) or qat < 0:
        raise UserError(f"--int8-qat-steps {qat!r}: expected a whole number of steps, 0 (off) or more")
    if qat and not options.int8:
        raise UserError("--int8-qat-steps only applies with --int8; add --int8 or drop --int8-qat-steps")
    try:
        budget = float(options.int8_budget)
    except (TypeError, ValueError):
        raise UserError(f"--int8-budget {options.int8_budget!r}: expected a number of top-1 points, "
                        "e.g. 1.0") from None
    if not math.isfinite(budget):
        raise UserError(f"--int8-budget {options.int8_budget!r}: expected a finite number of top-1 points, e.g. 1.0")
    if budget != ExportOptions.int8_budget and not options.int8:
        raise UserError("--int8-budget only applies with --int8; add --int8 or drop --int8-budget")
    keep = parse_list(options.keep_fp32, name="--keep-fp32")
    if keep and not options.int8:
        raise UserError("--keep-fp32 only applies with --int8; add --int8 or drop --keep-fp32")
    fp16_keep = None if options.fp16_keep_fp32 is None else check_op_types(options.fp16_keep_fp32, options.fp16)
    per_channel = None if options.per_channel is None else parse_bool(options.per_channel, "--per-channel")
    agreement = check_share(options.min_agreement, "--min-agreement", "the share of validation images on which a "
                            "twin must take the FP32 file's accept/reject decision", MIN_AGREEMENT)
    return dataclasses.replace(options, int8_budget=budget, accept_rate=check_accept_rate(options.accept_rate),
                               min_agreement=agreement, keep_fp32=keep, per_channel=per_channel,
                               fp16_keep_fp32=fp16_keep)


def check_op_types(value, fp16: bool) -> list:
    """--fp16-keep-fp32 as a list of ONNX op types ("none" or empty: keep none); a UserError for a name that is
    not an ONNX operator, or without --fp16."""
    import onnx

    if not fp16:
        raise UserError("--fp16-keep-fp32 only applies with --fp16; add --fp16 or drop --fp16-keep-fp32")
    ops = [op for op in parse_list(value, name="--fp16-keep-fp32") if op.lower() != "none"]
    unknown = [op for op in ops if not onnx.defs.has(op)]
    if unknown:
        raise UserError(f"--fp16-keep-fp32: {', '.join(unknown)} is not an ONNX operator type; expected op types "
                        "such as Sigmoid,HardSigmoid,ReduceMean,Softmax (or none)")
    return ops
