"""run_benchmark and compare_models: one loop benchmarks N models (run_benchmark is N = 1).

Each model is opened (its twins, preprocessing) and its backends loaded; the GEMM peaks are measured
once for all; then, per batch size, every model's warmed-up blocks (and the reference GEMM) go into ONE
list of entries timed in the same interleaved rounds, so machine noise hits every model alike. Each
model gets its own record (records.InferenceRecord); a comparison adds compare.py's record on top.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import numpy as np

from toolkit.artifacts import base_of, twin_path
from toolkit.errors import UserError, first_line
from toolkit.parsing import parse_list
from toolkit.preprocess import SERVE_FORMATS
import toolkit.runtime.benchmark.assemble as assemble
import toolkit.runtime.benchmark.peak as peak_mod
import toolkit.runtime.benchmark.report as report
from toolkit.runtime.benchmark.backends import BackendLoader, GemmReference, load_onnx_backends, synthetic_jpegs
from toolkit.runtime.benchmark.model_file import export_hint, inspect_model, resolve_model
from toolkit.runtime.benchmark.options import BenchmarkOptions, Plan, file_precision, parse, plan_combos
from toolkit.runtime.benchmark.records import E2E_IMAGES, Block, GemmRound, Row
from toolkit.runtime.benchmark.timing import Progress, calls_per_block, interleaved_rounds, stats, warm_up
from toolkit.runtime.engines import DEFAULT_ENGINE
from toolkit.runtime.onnx_eval import evaluate_onnx


@dataclass
class Subject:
    """One model under test and what was measured on it."""

    name: str  # the file's stem (its folder in a comparison)
    base: str  # the FP32 export; its twins sit beside it
    infos: dict  # precision -> inspect_model of the file it reads ("fp32": the base)
    precisions: tuple
    out_dir: str
    skipped: list  # [Skipped]
    backends: list = field(default_factory=list)  # [Backend], loaded
    failed: list = field(default_factory=list)  # [BackendRecord] of backends that never loaded
    checkpoint: Optional[str] = None  # the PyTorch checkpoint (--torch / --compile)
    notes: list = field(default_factory=list)
    pixels: list = field(default_factory=list)  # the end-to-end JPEGs decoded with this model's preprocessing
    rows: list = field(default_factory=list)  # [Row]
    schedule: list = field(default_factory=list)  # [Block] of its backends and the reference GEMM
    first_runs: dict = field(default_factory=dict)  # (key, mode, batch) -> seconds of the first call

    @property
    def info(self) -> dict:
        return self.infos["fp32"]

    @property
    def meta(self) -> dict:
        return self.info["metadata"]

    @property
    def labels(self) -> list:
        return self.info["contract"].labels


@dataclass
class Bench:
    """What every model of one run shares."""

    opts: BenchmarkOptions
    plan: Plan
    say: Callable
    progress: Progress
    peaks: list = field(default_factory=list)  # [Peak], each measured once
    gemm: Optional[GemmReference] = None
    gemm_rounds: dict = field(default_factory=dict)  # batch -> GemmRound
    jpegs: dict = field(default_factory=dict)  # end-to-end mode -> synthetic JPEG files
    schedule: list = field(default_factory=list)  # [Block] of every model, in execution order


def start(options: Optional[BenchmarkOptions], fields: dict) -> Bench:
    """The options (keyword arguments override the fields of `options`), checked."""
    opts = replace(options, **fields) if options is not None else BenchmarkOptions(**fields)
    say = (lambda *a, **k: None) if opts.quiet else (lambda *a, **k: print(*a, file=sys.stderr, **k))
    return Bench(opts=opts, plan=parse(opts), say=say, progress=Progress(not opts.quiet))


def run_benchmark(model: Optional[str] = None, options: Optional[BenchmarkOptions] = None,
                  torch_backends: Optional[BackendLoader] = None, **fields) -> dict:
    """Benchmark an export (default: the newest in `exports_dir`) and return the JSON record.

    options: a BenchmarkOptions; keyword arguments set (or override) its fields. torch_backends: the loader
    of other layers' backends, needed for torch / compile (the CLI passes load_torch_backends of
    toolkit.train.torch_backend, with --web / --tflite toolkit.export.target_bench's too). Writes
    benchmark.json, .md and .png into out_dir (default benchmarks/<model>-<YYYYmmdd-HHMMSS>/)."""
    bench = start(options, fields)
    subject = open_subject(model, bench, lambda name: bench.opts.out_dir or report.default_out_dir(name))
    measure([subject], bench, torch_backends)
    record = assemble.inference_record(subject, bench)
    report.publish(record, bench.opts.plot, bench.opts.quiet, bench.say)
    return record


def open_subject(model: Optional[str], bench: Bench, out_dir_of: Callable[[str], str]) -> Subject:
    """The export and its precision twins: every file there and readable, the batch axis dynamic."""
    path = resolve_model(model, bench.opts.exports_dir, bench.say)
    base, twin_precision = base_of(path)
    precisions = bench.plan.precisions
    if twin_precision:
        if not os.path.isfile(base):
            base = path
        elif parse_list(bench.opts.precision) == ["fp32"]:
            precisions = (twin_precision,)
        bench.say(f"benchmark: {path} is the {twin_precision} twin of {base}")
    infos = {"fp32": inspect_model(base)}
    files = dict.fromkeys(file_precision(p) for p in precisions)
    missing = [p for p in files if p != "fp32" and not os.path.isfile(twin_path(base, p))]
    if missing:
        raise UserError("\n".join(f"{twin_path(base, p)}: no {p} twin of {base}; make it with: "
                                  f"{export_hint(infos['fp32']['metadata'], p)}" for p in missing))
    dims, sizes = infos["fp32"]["input_dims"], bench.plan.sizes
    if dims and isinstance(dims[0], int) and any(b != dims[0] for b in sizes):
        raise UserError(f"{base}: the batch axis is fixed at {dims[0]}; expected a dynamic batch axis to run batch "
                        f"sizes {', '.join(map(str, sizes))} (re-export it with toolkit export)")
    infos.update({p: inspect_model(twin_path(base, p)) for p in files if p != "fp32"})
    infos.update({p: infos[file_precision(p)] for p in precisions})
    name = os.path.basename(base)[:-len(".onnx")]
    return Subject(name=name, base=base, infos=infos, precisions=precisions, out_dir=out_dir_of(name), skipped=[])


def measure(subjects: list, bench: Bench, torch_backends: Optional[BackendLoader]) -> None:
    """Load, peaks, cold starts, the interleaved rounds per batch size, accuracy: every model together."""
    plan, opts = bench.plan, bench.opts
    for s in subjects:
        _load(s, bench, torch_backends)
    ran = {("cpu" if b.record.device == "cpu" else "cuda", b.record.precision) for s in subjects for b in s.backends}
    bench.peaks = peak_mod.measure_peaks(plan.devices, ran, plan.threads, plan.engines, bench.progress)
    if opts.isolate:
        for s in subjects:
            _cold_starts(s, bench)
    _prepare_inputs(subjects, bench)
    for batch in plan.sizes:
        _time_batch(subjects, bench, batch)
    for s in subjects:
        _measure_accuracy(s, bench)
    bench.progress.close()


def _load(s: Subject, bench: Bench, torch_backends: Optional[BackendLoader]) -> None:
    """The ONNX backends of every combination, then those torch_backends loads (--torch, --web, --tflite)."""
    plan, opts = bench.plan, bench.opts
    combos, s.skipped = plan_combos(plan.engines, plan.devices, s.precisions)
    s.backends = load_onnx_backends(s.infos, combos, s.skipped, plan.threads, max(plan.sizes), bench.progress.live)
    if torch_backends is None:  # the loader of other layers' backends: PyTorch, the browser, LiteRT (the CLI's)
        if opts.torch or opts.compile:
            raise UserError("benchmark: torch / compile need the PyTorch side; from Python pass torch_backends="
                            "toolkit.train.torch_backend.load_torch_backends (the toolkit command does)")
        return
    extra = torch_backends(s.info, s.backends[0].predictor.preprocess, plan.devices, plan.threads, opts,
                           bench.progress.live)
    s.backends += extra.backends
    s.failed += extra.failed
    s.checkpoint, s.notes = extra.checkpoint, s.notes + extra.notes


def _cold_starts(s: Subject, bench: Bench) -> None:
    """Cold start and peak RSS of each backend in a fresh process (OpenVINO's: with its model cache too)."""
    for b in s.backends:
        bench.progress.live(f"cold start of {b.record.key} in a fresh process")
        b.record.cold_start = b.cold_start(bench.plan.threads, bench.plan.sizes)


def _prepare_inputs(subjects: list, bench: Bench) -> None:
    """The synthetic JPEGs of each end-to-end mode, each model's decoded pixels, the reference GEMM."""
    plan = bench.plan
    if bench.opts.reference and "cpu" in plan.devices:
        bench.gemm = GemmReference(plan.threads, peak_mod.PEAK_MATRIX["cpu"])
    # up to 8 distinct 500x375 JPEGs and 4 distinct 12 MP ones: decoding costs the same whatever repeats
    bench.jpegs = {"end_to_end": synthetic_jpegs(min(max(plan.sizes), 8))}
    if "end_to_end_12mp" in plan.modes:
        bench.jpegs["end_to_end_12mp"] = synthetic_jpegs(min(max(plan.sizes), 4), size=E2E_IMAGES["end_to_end_12mp"])
    for s in subjects:
        preprocess = s.backends[0].predictor.preprocess
        s.pixels = [preprocess.pixels(j, formats=SERVE_FORMATS) for j in bench.jpegs["end_to_end"]]


def _time_batch(subjects: list, bench: Bench, batch: int) -> None:
    """Every model's warmed-up entries (and the reference GEMM) timed in the same rounds, then their rows."""
    entries, iters, owners = [], {}, {}  # owners: entry -> (subject, backend, mode)
    for s in subjects:
        for b, mode, fn, k in _warm(s, bench, batch):
            entry = f"{s.name}|{b.record.key}|{mode}"
            entries.append((entry, fn))
            iters[entry], owners[entry] = k, (s, b, mode)
    gemm = bench.gemm
    if gemm is not None:
        _, last = warm_up(gemm.run, 1)
        entries.append((gemm.key, gemm.run))
        iters[gemm.key] = calls_per_block(None, min(float(bench.plan.duration or 1.0), 2.0), bench.plan.rounds, last)
    rounds, several = bench.plan.rounds, len(subjects) > 1

    def on_block(r, entry, k, total):
        if entry in owners:
            s, b, mode = owners[entry]
            bench.progress.live(f"batch {batch} round {r + 1}/{rounds}: {s.name + ' ' if several else ''}"
                                f"{b.record.key} {mode} {k * batch / total if total else 0:.1f} img/s")
    lat, blocks, order = interleaved_rounds(entries, rounds, iters, on_block)
    for r, entry, k in order:
        s, b, mode = owners.get(entry, (None, gemm, gemm and gemm.mode))
        block = Block(r, batch, s and s.name, b.key if b is gemm else b.record.key, mode, k)
        bench.schedule.append(block)
        for mine in ([s] if s else subjects):
            mine.schedule.append(block)
    if gemm is not None:
        g = np.asarray([iters[gemm.key] * gemm.flops / t / 1e9 for t in blocks[gemm.key]])
        bench.gemm_rounds[batch] = GemmRound(batch, round(float(np.median(g)), 1), round(float(g.min()), 1),
                                             round(float(g.max()), 1), len(lat[gemm.key]))
    for entry, (s, b, mode) in owners.items():
        s.rows.append(_row(s, bench, b, mode, batch, lat[entry], blocks[entry], iters[entry]))
    best = max(((s, r) for s in subjects for r in s.rows if r.batch == batch),
               key=lambda sr: sr[1].throughput_ips.median, default=None)
    if best:
        bench.progress.line(f"batch {batch} done; fastest {best[0].name + ' ' if several else ''}{best[1].key} "
                            f"{best[1].mode} {best[1].throughput_ips.median:.1f} img/s")


def _warm(s: Subject, bench: Bench, batch: int) -> list:
    """[(backend, mode, fn, calls per block)] of every live backend warmed up at this batch size. A backend
    that may fail (torch.compile) and fails here is marked failed and timed no more."""
    pixels = np.stack([s.pixels[i % len(s.pixels)] for i in range(batch)])
    jpegs = {m: [js[i % len(js)] for i in range(batch)] for m, js in bench.jpegs.items()}
    out = []
    for b in s.backends:
        if b.record.status != "ok":
            continue
        warmed = []
        try:
            b.prepare(batch, pixels, jpegs)
            for mode in (m for m in bench.plan.modes if m in b.modes):
                fn = (lambda b=b, mode=mode: b.run(mode))
                bench.progress.live(f"batch {batch}: warming up {b.record.key} {mode}")
                warmed.append((b, mode, fn, *warm_up(fn, bench.opts.warmup)))
        except Exception as exc:  # noqa: BLE001 - torch.compile may fail on its first call; say why
            if not b.may_fail:
                raise
            b.record.status, b.record.error = "failed", first_line(exc, 300)
            continue
        for b, mode, fn, first, last in warmed:
            s.first_runs[(b.record.key, mode, batch)] = first
            out.append((b, mode, fn, calls_per_block(bench.opts.iterations, bench.plan.duration, bench.plan.rounds,
                                                     last)))
    return out


def _sig(x: float) -> float:
    """Four significant digits: a tiny model's 12 MP rows stay above zero."""
    return float(f"{x:.4g}")


def own_peak_precision(precision: str, device: str) -> str:
    """Which precision's GEMM peak a row is read against: its own where one is measured (bf16, int8 on
    CPU; fp16 on CUDA), else fp32 (FP16 on a CPU computes in FP32)."""
    if device == "cpu":
        return precision if precision in ("bf16", "int8") else "fp32"
    return "fp16" if precision.startswith("fp16") else ("int8" if precision == "int8" else "fp32")


_FROM_BACKEND = ("key", "backend", "engine", "engine_device", "inference_precision", "device", "precision", "provider",
                 "file_bytes")  # the fields a Row copies from its BackendRecord


def _row(s: Subject, bench: Bench, b, mode: str, batch: int, lat: list, blocks: list, k: int) -> Row:
    """One backend x mode x batch size: the timing statistics and GFLOP/s against the peaks and the GEMM."""
    rec = b.record
    latency, per_image, throughput = stats(lat, blocks, k, batch)
    kind = "cpu" if rec.device == "cpu" else "cuda"
    peak_of = {(pk.device, pk.precision): pk for pk in bench.peaks if pk.gflops}
    fp32, own = peak_of.get((kind, "fp32")), peak_of.get((kind, own_peak_precision(rec.precision, kind)))
    gemm = bench.gemm_rounds.get(batch) if kind == "cpu" else None
    gflops = _sig(rec.flops_per_image * throughput.median / 1e9) if rec.flops_per_image else None
    size = E2E_IMAGES.get(mode)
    return Row(
        **{f: getattr(rec, f) for f in _FROM_BACKEND}, mode=mode, e2e_image=f"{size[0]}x{size[1]}" if size else None,
        batch=batch, iterations=len(lat), rounds=bench.plan.rounds, throughput_ips=throughput, latency_ms=latency,
        latency_per_image_ms=per_image, first_run_s=round(s.first_runs[(rec.key, mode, batch)], 4), gflops=gflops,
        fraction_of_peak=_sig(gflops / fp32.gflops) if gflops and fp32 else None,
        fraction_of_precision_peak=_sig(gflops / own.gflops) if gflops and own else None,
        peak_precision=own and own.precision, precision_peak_engine=own and own.engine,
        fraction_of_gemm_in_rounds=_sig(gflops / gemm.median_gflops) if gflops and gemm and gemm.median_gflops
        else None, cold_start_s=None, peak_rss_mb=None, gpu_mem_mb=None, top1=None, baseline=None, speedup=None,
        decode_share=None if mode == "model" else b.decode_share(mode))


def _measure_accuracy(s: Subject, bench: Bench) -> None:
    """Each precision's accuracy on the recipe's split (--data), on CPU with ONNX Runtime."""
    opts = bench.opts
    if not opts.data:
        return
    for p in s.precisions:
        bench.progress.live(f"accuracy of {p} on the {opts.split} split of {opts.data}")
        res = evaluate_onnx(s.infos[p]["path"], opts.data, split=opts.split, threads=bench.plan.threads, quiet=True)
        accuracy = {"split": opts.split, "top1": res.get("top1"), "top5": res.get("top5"), "n": res.get("n"),
                    "provider": "CPUExecutionProvider"}
        for b in s.backends:
            if b.record.backend == DEFAULT_ENGINE and b.record.precision == p:  # evaluate_onnx's engine
                b.record.accuracy = accuracy
