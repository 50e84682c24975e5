"""What `toolkit benchmark` is asked to do (BenchmarkOptions), checked and parsed into Settings, and the
engine x device x precision combinations (Combo) it runs: fp32, fp16 and int8 name the export and its
twins, bf16 the FP32 file at OpenVINO's bf16 inference precision. A combination an engine can't run is
skipped with its reason in the record; only when nothing is left is it an error.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

from toolkit import recipe as recipe_mod
from toolkit.artifacts import folder_problem
from toolkit.errors import UserError
from toolkit.parsing import parse_list
from toolkit.datasets import SPLITS
from toolkit.runtime.engines import INFERENCE_PRECISIONS, adapter_for, engines_with, parse_engines
from toolkit.runtime.benchmark.machine import physical_cores
from toolkit.runtime.benchmark.records import DEVICES, MODES, PRECISIONS, Settings, Skipped
from toolkit.runtime.benchmark.timing import DEFAULT_DURATION_S, DEFAULT_ROUNDS


@dataclass
class BenchmarkOptions:
    """run_benchmark's keyword arguments; list-valued ones take lists or comma-separated strings."""

    batch_sizes: Any = (1, 8, 32)  # batch sizes to time
    precision: Any = ("fp32",)  # fp32 / fp16 / bf16 / int8: the export, its twins <name>.fp16/.int8.onnx; bf16 = the
    #                             FP32 file at OpenVINO's bf16 inference precision
    engine: Any = ("onnxruntime",)  # onnxruntime / openvino: each runs every precision x device it can, interleaved
    device: Any = ("cpu",)  # cpu / cuda (cuda:N) / tensorrt
    torch: bool = False  # add the run's PyTorch model (eager FP32; on CUDA also autocast FP16) as the baseline
    compile: bool = False  # add torch.compile of the same model
    duration: Optional[float] = None  # timed seconds per backend x mode x batch size (default 5), over the rounds
    iterations: Optional[int] = None  # or: timed calls per backend x mode x batch size, over the rounds
    warmup: Optional[int] = None  # calls per backend and batch size before timing (default >= 3 and >= 0.5 s)
    rounds: int = DEFAULT_ROUNDS  # interleaved rounds; each backend runs one block per round
    threads: Optional[int] = None  # intra-op threads for ORT and PyTorch (default: physical cores)
    data: Optional[str] = None  # a recipe whose `split` measures each precision's accuracy
    split: str = "val"  # the recipe's split for the accuracy
    end_to_end: bool = True  # also time JPEG decode + preprocess + inference + top-5
    photos: bool = True  # with end_to_end: also on 12 MP (4032x3024) JPEGs, mode end_to_end_12mp (ONNX engines)
    out_dir: Optional[str] = None  # where the files go (default benchmarks/<model>-<YYYYmmdd-HHMMSS>/)
    exports_dir: str = "exports"  # where the newest export is looked up when no model is given
    quiet: bool = False  # no progress, no table, no messages
    isolate: bool = True  # cold start and peak RSS in a fresh process per backend (off: not measured)
    checkpoint: Optional[str] = None  # the PyTorch checkpoint for --torch (default: the one the export names)


@dataclass(frozen=True)
class Combo:
    """One engine x device x precision the rounds time."""

    engine: str  # onnxruntime | openvino
    device: str  # the benchmark's device word: cpu, cuda[:N], tensorrt
    precision: str  # fp32 | fp16 | bf16 | int8: the row's label

    key = property(lambda self: f"{self.engine}/{self.device}/{self.precision}")
    inference_precision = property(lambda self: "bf16" if self.precision == "bf16" else "fp32")  # OpenVINO's hint


def file_precision(precision: str) -> str:
    """Which file a precision reads: fp32 (the export), fp16 or int8 (its twins); bf16 reads the FP32 file."""
    return "fp32" if precision == "bf16" else precision


def why_not(engine: str, device: str, precision: str) -> Optional[str]:
    """Why `engine` can't run this device x precision here, or None when it can (its adapter says)."""
    adapter = adapter_for(engine)
    if precision in INFERENCE_PRECISIONS and precision not in adapter.inference_precisions:
        return (f"{engine} has no {precision} inference precision (it runs a file as exported); {precision} runs "
                f"on --engine {' or '.join(engines_with(precision))}")
    if not adapter.supports_device(device):
        able = [e for e in engines_with("fp32") if adapter_for(e).supports_device(device)]
        return f"{engine} has no {device} device; {device} runs on --engine {' or '.join(able) or 'none here'}"
    return None


def plan_combos(engines: list, devices: list, precisions: tuple) -> tuple[list, list]:
    """([Combo] to run, [Skipped]), devices outermost, then engines, then precisions, in the order given."""
    every = [(e, d, p, why_not(e, d, p)) for d in devices for e in engines for p in precisions]
    run, skipped = [Combo(e, d, p) for e, d, p, why in every if not why], [Skipped(*x) for x in every if x[3]]
    if not run:
        raise UserError("benchmark: nothing to run: " + "; ".join(
            f"{s.engine} {s.precision} on {s.device}: {s.reason}" for s in skipped))
    return run, skipped


def _check_counts(o: BenchmarkOptions) -> None:
    if o.duration is not None and o.iterations is not None:
        raise UserError("benchmark: pass --duration or --iterations, not both")
    if o.duration is not None and not float(o.duration) > 0:
        raise UserError(f"duration: {o.duration!r}; expected a positive number of seconds")
    for name in ("iterations", "threads", "rounds", "warmup"):  # warm-up always runs: at least 1
        value = getattr(o, name)
        if value is not None and (int(value) != value or int(value) < 1):
            raise UserError(f"{name}: {value!r}; expected a positive whole number")


def check_out_dir(out_dir: Optional[str]) -> None:
    """The record's folder can be made (by default under benchmarks/): found now, not after minutes of timing."""
    where = out_dir or "benchmarks"
    problem = folder_problem(where)
    if problem:
        raise UserError(f"out_dir: {where!r}: {problem}; expected a writable folder for the benchmark's record "
                        "(--out-dir)")


def parse(o: BenchmarkOptions) -> Settings:
    """Check every option (one UserError naming the first bad one; a bad recipe now, not after minutes of
    timing) and parse the lists: batch sizes ascending, the rest unique in the order given, "gpu" is "cuda"."""
    sizes = sorted(set(parse_list(o.batch_sizes, int, "batch_sizes")))
    if not sizes or min(sizes) < 1:
        raise UserError(f"batch_sizes: {o.batch_sizes!r}; expected positive whole numbers, e.g. 1,8,32")
    precisions = list(dict.fromkeys(p.lower() for p in parse_list(o.precision or "fp32", str, "precision")))
    devices = list(dict.fromkeys("cuda" if d.lower() == "gpu" else d.lower()
                                 for d in parse_list(o.device or "cpu", str, "device")))
    for name, values, allowed in (("precision", precisions, PRECISIONS),
                                  ("device", [d.split(":")[0] for d in devices], DEVICES)):
        bad = [v for v in values if v not in allowed]
        if bad:
            raise UserError(f"{name}: {', '.join(map(repr, bad))} not known; expected one or more of "
                            f"{', '.join(allowed)}" + (" (or cuda:N)" if name == "device" else ""))
    _check_counts(o)
    check_out_dir(o.out_dir)
    if o.split != BenchmarkOptions.split and not o.data:
        raise UserError(f"split: {o.split!r} goes with --data RECIPE (the accuracy's data); without it nothing "
                        "is scored")
    if o.data:
        recipe_mod.load(os.fspath(o.data))
        if o.split not in SPLITS:
            raise UserError(f"split: {o.split!r}; expected one of {', '.join(SPLITS)}")
    return Settings(
        batch_sizes=sizes, precisions=precisions, engines=list(parse_engines(parse_list(o.engine or "onnxruntime"))),
        devices=devices, modes=list(MODES if o.photos else MODES[:2]) if o.end_to_end else ["model"],
        threads=int(o.threads) if o.threads else physical_cores(), threads_source="given" if o.threads else
        "physical cores", rounds=int(o.rounds), iterations=None if o.iterations is None else int(o.iterations),
        duration_s=None if o.iterations is not None else float(DEFAULT_DURATION_S if o.duration is None else o.duration),
        warmup="auto" if o.warmup is None else int(o.warmup), data=o.data, split=o.split if o.data else None,
        torch=bool(o.torch), compile=bool(o.compile), end_to_end=bool(o.end_to_end), isolate=bool(o.isolate))
