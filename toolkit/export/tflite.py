"""`toolkit export --format tflite`: its options and their checks, and LiteRtSession, the file on LiteRT (light: the
CLI imports this to build its flags, benchmark --tflite runs the file without torch; the export itself is
toolkit/export/tflite_pipeline.py)."""
from __future__ import annotations

import contextlib
import importlib.util
import sys
from dataclasses import dataclass

import numpy as np

from toolkit.errors import UserError

EXTRA = "pip install 'toolkit[tflite]'"
MEDIAPIPE_MODES = ("auto", "require", "skip")
# ai_edge_litert's op resolvers: XNNPACK (what apps run on CPU) and TFLite's reference kernels.
KERNELS = {"xnnpack": "BUILTIN", "reference": "BUILTIN_REF"}
# ExportOptions fields a .tflite export has no use for: one line each before any work.
NOT_FOR_TFLITE = ("fp16", "fp16_keep_fp32", "raw_input", "probabilities", "dynamic_hw", "bf16_check", "ir_version",
                  "keep_fp32", "per_channel", "calib_method", "int8_search")
# The "unknown" answer's flags: a .tflite file carries no temperature or threshold (docs/targets.md), so a
# user who asks for rejection would get a file that can never answer "unknown" without a word.
NO_UNKNOWN_IN_TFLITE = ("ood", "accept_rate", "min_agreement")


@dataclass
class TfliteOptions:
    """What `toolkit export --format tflite` checks beyond the parity gate."""

    mediapipe: str = "auto"  # MediaPipe ImageClassifier top-1 check: auto (when installed), require or skip
    agreement_images: int = 64  # validation images MediaPipe's top-1 is compared on (PyTorch's as reference)


def require_extra() -> None:
    """One line naming the extra when litert-torch or ai-edge-litert is missing, before any work."""
    missing = [name for name, module in (("litert-torch", "litert_torch"), ("ai-edge-litert", "ai_edge_litert"))
               if importlib.util.find_spec(module) is None]
    if missing:
        raise UserError(f"--format tflite needs {' and '.join(missing)}: {EXTRA}")


def check_tflite_options(tflite: TfliteOptions, given: dict) -> None:
    """One line per bad option or ONNX-only flag, before any work."""
    problems = [f"--{k.replace('_', '-')} goes with --format onnx or triton, not tflite"
                for k in NOT_FOR_TFLITE if k in given]
    problems += [f"--{k.replace('_', '-')} goes with --format onnx, triton or web: a .tflite file carries no "
                 "temperature or \"unknown\" threshold (docs/targets.md)" for k in NO_UNKNOWN_IN_TFLITE if k in given]
    if tflite.mediapipe not in MEDIAPIPE_MODES:
        problems.append(f"--mediapipe {tflite.mediapipe!r}: expected one of {', '.join(MEDIAPIPE_MODES)}")
    n = tflite.agreement_images
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        problems.append(f"--agreement-images {n!r}: expected a whole number, at least 1")
    if problems:
        raise UserError("\n".join(problems))
    if tflite.mediapipe == "require" and importlib.util.find_spec("mediapipe") is None:
        raise UserError("--mediapipe require: mediapipe is not installed (pip install mediapipe==0.10.21; "
                        "its wheels need numpy<2 and protobuf<5, so use a separate environment)")


def tflite_path(onnx_path: str) -> str:
    return onnx_path[:-len(".onnx")] + ".tflite"


@contextlib.contextmanager
def quiet_litert():
    """litert-torch and LiteRT print pages of their own (progress bars, C++ log lines, an XNNPACK notice) on
    stdout and stderr; the user reads export's one line a step instead. When the block fails, the last of
    what they printed goes to stderr before the error, since that is where the cause is (not when the user
    stopped it)."""
    from toolkit.runtime.session import captured_native_output

    captured: list = []
    try:
        with captured_native_output() as captured:
            yield
    except Exception:   # not Ctrl-C / SIGTERM: a stop the user asked for has no cause to show
        if captured and captured[0].strip():   # filled as the inner block ends, error or not
            sys.stderr.write(captured[0][-4000:].rstrip() + "\n")
        raise


class LiteRtSession:
    """ORT's run(outputs, feed) over a batch-1 .tflite: uint8 NHWC pixels in, one invoke per image."""

    def __init__(self, path: str, kernels: str, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        resolver = getattr(OpResolverType, KERNELS[kernels])
        with quiet_litert():
            self.interpreter = Interpreter(model_path=path, num_threads=threads,
                                           experimental_op_resolver_type=resolver)
            self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]["index"]
        output = self.interpreter.get_output_details()[0]
        self.output = output["index"]
        # an INT8 file answers int8 codes: logits = scale * (code - zero_point); (0.0, 0) for a float output
        self.scale, self.zero_point = output["quantization"]

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        rows = []
        for image in pixels:
            self.interpreter.set_tensor(self.input, (image[None].astype(np.float32) / 255.0))
            self.interpreter.invoke()
            rows.append(self.interpreter.get_tensor(self.output).copy())
        out = np.concatenate(rows).astype(np.float32)
        return self.scale * (out - self.zero_point) if self.scale else out

    def run(self, outputs: list, feed: dict) -> list:
        return [self.logits(feed["input"])]
