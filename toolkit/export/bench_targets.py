"""`toolkit benchmark MODEL --web FOLDER --tflite FILE`: the export's other targets, timed in the same rounds as
ONNX Runtime on MODEL.

TargetOptions are benchmark's flags; target_backends is the BackendLoader the CLI hands to run_benchmark.
The backends live beside the code that already runs each target: web_bench.py (the web folder's page
in headless chromium, as the export's browser check drives it) and tflite_bench.py (LiteRT). No torch
here: the CLI reads TargetOptions on the edge install. A runtime missing here gives no row and one
note in the record (and under the table) naming what to install.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Optional

from toolkit import contract
from toolkit.errors import UserError
from toolkit.export.tflite_bench import tflite_rows
from toolkit.export.web_bench import web_rows
from toolkit.export.web_browser import DEFAULT_CHROMIUM
from toolkit.parsing import parse_list
from toolkit.runtime.benchmark.backends import BackendLoader, ExtraBackends


@dataclass
class TargetOptions:
    """The other targets of the same model that `toolkit benchmark` times beside ONNX Runtime."""

    web: Optional[str] = None  # a folder from `toolkit export --format web`: also time its page in headless
    #                            chromium (onnxruntime-web WASM, 1 thread and --threads threads)
    tflite: Optional[str] = None  # a .tflite file from `toolkit export --format tflite`: also time it on LiteRT
    #                               (XNNPACK, --threads threads)
    chromium: str = DEFAULT_CHROMIUM  # with --web: the browser playwright drives headless


def split_options(given: dict) -> tuple[TargetOptions, dict]:
    """(the TargetOptions among a command's flags, the rest)."""
    names = {f.name for f in dataclasses.fields(TargetOptions)}
    return (TargetOptions(**{k: v for k, v in given.items() if k in names}),
            {k: v for k, v in given.items() if k not in names})


def check_targets(targets: TargetOptions) -> None:
    """One line per path that is not what its flag expects, before any work."""
    problems = []
    web, tflite = targets.web, targets.tflite
    if web is not None and not all(os.path.isfile(os.path.join(str(web), f)) for f in ("index.html", "model.onnx")):
        problems.append(f"--web {web}: expected a folder written by toolkit export --format web (index.html, "
                        "model.onnx)")
    if tflite is not None and not (str(tflite).endswith(".tflite") and os.path.isfile(str(tflite))):
        problems.append(f"--tflite {tflite}: expected a .tflite file written by toolkit export --format tflite")
    if problems:
        raise UserError("\n".join(problems))


def _check_same_checkpoint(targets: TargetOptions, sha: Optional[str]) -> None:
    """The web folder and the .tflite must be exports of the model benchmarked: another model's rows were
    printed beside it, with its FLOPs and its `x base`, without a word."""
    found = {}
    if targets.web is not None:
        with contextlib.suppress(Exception):
            found[f"--web {targets.web}"] = contract.raw_props(os.path.join(str(targets.web), "model.onnx")).get(
                "checkpoint_sha256")
    if targets.tflite is not None:
        with contextlib.suppress(OSError, ValueError, AttributeError), open(f"{targets.tflite}.json") as fh:
            found[f"--tflite {targets.tflite}"] = json.load(fh).get("checkpoint_sha256")
    other = [name for name, theirs in found.items() if sha and theirs and theirs != sha]
    if other:
        raise UserError("; ".join(other) + ": exported from another checkpoint than the model benchmarked; "
                        "expected the web folder and .tflite file exported from the same run as MODEL")


@contextlib.contextmanager
def target_backends(targets: TargetOptions, then: Optional[BackendLoader] = None):
    """The BackendLoader for run_benchmark: `then`'s backends (PyTorch's, when given), then the browser and
    LiteRT ones, on the CPU; the browser and the folder's server live until the block ends. Without --web
    and --tflite it is `then` itself."""
    if targets.web is None and targets.tflite is None:
        yield then
        return
    check_targets(targets)
    with contextlib.ExitStack() as stack:
        def load(info: dict, preprocess, devices: tuple, threads: int, options, live) -> ExtraBackends:
            extra = then(info, preprocess, devices, threads, options, live) if then else ExtraBackends()
            if "cpu" not in devices:
                extra.notes.append("no onnxruntime-web or LiteRT rows: they run on the CPU (add cpu to --device)")
                return extra
            _check_same_checkpoint(targets, info["metadata"].get("checkpoint_sha256"))
            precisions = [p.lower() for p in parse_list(options.precision or "fp32", str, "precision")]
            flops, rows = info["flops"]["flops"], []
            if targets.web is not None:
                live("loading the web folder in headless chromium")
                rows.append(web_rows(stack, str(targets.web), str(targets.chromium), precisions, threads, preprocess,
                                     flops))
            if targets.tflite is not None:
                live("loading the .tflite file on LiteRT")
                rows.append(tflite_rows(str(targets.tflite), precisions, threads, flops))
            for backends, notes in rows:
                extra.backends += backends
                extra.notes += notes
            return extra
        yield load
