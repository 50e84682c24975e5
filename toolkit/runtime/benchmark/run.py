"""run_benchmark and compare_models: one loop benchmarks N models (run_benchmark is N = 1). The GEMM peaks are
measured once; per batch size every model's warmed-up blocks run in the same interleaved rounds, so machine noise
hits every model alike. Each model gets its own record; a comparison adds report.compare_record."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

from toolkit.artifacts import TWINS, base_of, twin_path
from toolkit.errors import UserError, first_line
from toolkit.parsing import parse_list
import toolkit.runtime.benchmark.peak as peak_mod
import toolkit.runtime.benchmark.report as report
from toolkit.runtime.benchmark.backends import (BackendLoader, ExtraBackends, inspect_model, load_onnx_backends,
                                                random_pixels, resolve_model, synthetic_jpegs)
from toolkit.runtime.benchmark.machine import default_out_dir
from toolkit.runtime.benchmark.options import BenchmarkOptions, file_precision, parse, plan_combos
from toolkit.runtime.benchmark.records import E2E_IMAGES, Block, Row, Settings
from toolkit.runtime.benchmark.timing import Progress, interleaved_rounds, stats, warm_up
from toolkit.runtime.engines import DEFAULT_ENGINE
from toolkit.runtime.onnx_eval import evaluate_onnx


@dataclass
class Subject:
    """One model under test and what was measured on it."""

    name: str  # the file's stem (its folder in a comparison)
    base: str  # the FP32 export; its twins sit beside it
    infos: dict  # precision -> inspect_model of the file it reads ("fp32": the base)
    precisions: tuple
    out_dir: str = ""  # where its record goes
    skipped: list = field(default_factory=list)  # [Skipped]
    backends: list = field(default_factory=list)  # [Backend], loaded
    extra: ExtraBackends = field(default_factory=ExtraBackends)  # other layers' (PyTorch's)
    rows: list = field(default_factory=list)  # [Row]

    def __post_init__(self):
        self.info = self.infos["fp32"]
        self.meta, self.labels = self.info["metadata"], self.info["contract"].labels


@dataclass
class Bench:
    """What every model of one run shares."""

    opts: BenchmarkOptions
    plan: Settings
    progress: Progress  # .line: what the user should know now (stderr; nothing when quiet)
    peaks: list = field(default_factory=list)  # [Peak], each measured once
    jpegs: dict = field(default_factory=dict)  # end-to-end mode -> synthetic JPEG files
    schedule: list = field(default_factory=list)  # [Block] of every model, in execution order


def start(options: Optional[BenchmarkOptions], fields: dict) -> Bench:
    """The options (keyword arguments override the fields of `options`), checked."""
    opts = replace(options, **fields) if options is not None else BenchmarkOptions(**fields)
    return Bench(opts=opts, plan=parse(opts), progress=Progress(not opts.quiet))


def run_benchmark(model: Optional[str] = None, options: Optional[BenchmarkOptions] = None,
                  torch_backends: Optional[BackendLoader] = None, **fields) -> dict:
    """Benchmark an export (default: the newest in `exports_dir`) and return the JSON record.

    options: a BenchmarkOptions; keyword arguments set (or override) its fields. torch_backends: the
    BackendLoader of other layers' backends, needed for torch / compile (the CLI passes the torch side's, with
    --web / --tflite wrapped by toolkit.export.bench_targets). Writes benchmark.json and .md into out_dir."""
    bench = start(options, fields)
    subject = open_subject(model, bench)
    subject.out_dir = bench.opts.out_dir or default_out_dir(subject.name)
    measure([subject], bench, torch_backends)
    record = report.inference_record(subject, bench)
    report.publish(record, bench.opts.quiet)
    return record


def compare_models(models: Sequence[str], options: Optional[BenchmarkOptions] = None,
                   pareto_batch: Optional[int] = None, torch_backends: Optional[BackendLoader] = None,
                   **fields) -> dict:
    """Benchmark several exports side by side and return the comparison record (kind "compare").

    options / fields / torch_backends: as run_benchmark's, applied to every model alike. pareto_batch: the
    batch size of the Pareto marks in the table (default: the largest of batch_sizes)."""
    bench = start(options, fields)
    if len(models) < 2:
        raise UserError(f"benchmark: comparing needs at least two models, got {len(models)}; expected "
                        "toolkit benchmark A.onnx B.onnx [...]")
    sizes = bench.plan.batch_sizes
    batch = max(sizes) if pareto_batch is None else pareto_batch
    if batch not in sizes:
        raise UserError(f"pareto_batch: {pareto_batch!r} is not one of the batch sizes timed "
                        f"({', '.join(map(str, sizes))}); expected one of them")
    out_dir = bench.opts.out_dir or default_out_dir("compare")
    subjects = []
    for s in (open_subject(os.fspath(model), bench) for model in models):  # each its own folder, named uniquely
        s.name = next(n for n in [s.name] + [f"{s.name}-{k}" for k in range(2, len(models) + 2)]
                      if n not in {x.name for x in subjects})
        s.out_dir = os.path.join(out_dir, s.name)
        subjects.append(s)
    if bench.opts.data:
        _check_labels(subjects)
    measure(subjects, bench, torch_backends)
    records = [report.inference_record(s, bench) for s in subjects]
    for rec in records:
        report.publish(rec, quiet=True)
    record = report.compare_record(subjects, records, bench, batch, out_dir)
    report.publish(record, bench.opts.quiet, also=" and one folder per model")
    return record


def _check_labels(subjects: list) -> None:
    """Top-1 on one recipe split compares models only when they name the same classes."""
    ref, want = subjects[0], set(subjects[0].labels)
    for s in (s for s in subjects[1:] if set(s.labels) != want):
        extra, lacking = (", ".join(sorted(x)[:8]) + " ..." * (len(x) > 8)
                          for x in (set(s.labels) - want, want - set(s.labels)))
        parts = [f"has {extra} that {ref.base} has not"] * bool(extra) + [f"lacks {lacking}"] * bool(lacking)
        raise UserError(f"{s.base}: its labels differ from {ref.base}'s: it {'; it '.join(parts)}; expected the "
                        f"same class names in every model to compare top-1 on one recipe split (--data)")


def _check_precisions(path: str, base: str, twin_precision: Optional[str], asked: list) -> None:
    """A twin file is timed as itself: --precision naming another precision would time other files than the
    one given (or, for a raw-input twin, files export never makes)."""
    own = twin_precision or "fp32"
    others = [p for p in asked if p not in ("fp32", own)]
    if twin_precision and others:
        raise UserError(f"{path} is the {twin_precision} twin; --precision {','.join(asked)} would time other "
                        f"files: expected the FP32 file ({base}) with --precision {','.join(asked)}, or this "
                        "file alone (no --precision)")
    if path.endswith(TWINS["raw"]) and others:
        raise UserError(f"{path} is the raw-input twin, which has no precision twins; expected --precision "
                        f"{','.join(others)} with the FP32 file ({path[:-len(TWINS['raw'])]}.onnx)")


def open_subject(model: Optional[str], bench: Bench) -> Subject:
    """The export and its precision twins: every file there and readable, the batch axis dynamic."""
    path = resolve_model(model, bench.opts.exports_dir, bench.progress.line)
    base, twin_precision = base_of(path)
    precisions = bench.plan.precisions
    _check_precisions(path, base, twin_precision, parse_list(bench.opts.precision))
    if twin_precision:
        if not os.path.isfile(base):
            base = path
        else:
            precisions = (twin_precision,)
        bench.progress.line(f"{path} is the {twin_precision} twin of {base}")
    infos = {"fp32": inspect_model(base)}
    files = dict.fromkeys(file_precision(p) for p in precisions)
    missing = [p for p in files if p != "fp32" and not os.path.isfile(twin_path(base, p))]
    run = infos["fp32"]["metadata"].get("source_run")
    if missing:
        raise UserError("\n".join(f"{twin_path(base, p)}: no {p} twin of {base}; make it with: toolkit export"
                                  f"{f' {run}' if isinstance(run, str) and run else ''} --{p}" for p in missing))
    dims, sizes = infos["fp32"]["input_dims"], bench.plan.batch_sizes
    if dims and isinstance(dims[0], int) and any(b != dims[0] for b in sizes):
        raise UserError(f"{base}: the batch axis is fixed at {dims[0]}; expected a dynamic batch axis to run batch "
                        f"sizes {', '.join(map(str, sizes))} (re-export it with toolkit export)")
    infos.update({p: inspect_model(twin_path(base, p)) for p in files if p != "fp32"})
    infos.update({p: infos[file_precision(p)] for p in precisions})
    # named as the file given: an export and its twins compared side by side are d, d.fp16, d.int8
    return Subject(name=os.path.basename(path)[:-len(".onnx")], base=base, infos=infos, precisions=precisions)


def measure(subjects: list, bench: Bench, torch_backends: Optional[BackendLoader]) -> None:
    """Load (the ONNX backends of every combination, then the PyTorch ones), peaks, cold starts, the interleaved
    rounds per batch size, accuracy: every model together."""
    plan, live = bench.plan, bench.progress.live
    if (plan.torch or plan.compile) and torch_backends is None:
        raise UserError("benchmark: torch / compile need the PyTorch side; from Python pass torch_backends="
                        "toolkit.train.torch_backend.load_torch_backends (the toolkit command does)")
    for s in subjects:
        combos, s.skipped = plan_combos(plan.engines, plan.devices, s.precisions)
        s.backends = load_onnx_backends(s.infos, combos, s.skipped, plan.threads, max(plan.batch_sizes), live)
        if torch_backends is not None:  # other layers' backends: PyTorch, the browser, LiteRT (the CLI's)
            s.extra = torch_backends(s.info, s.backends[0].preprocess, plan.devices, plan.threads, bench.opts, live)
            s.backends += s.extra.backends
    ran = {("cpu" if b.record.device == "cpu" else "cuda", b.record.precision) for s in subjects for b in s.backends}
    bench.peaks = peak_mod.measure_peaks(plan.devices, ran, plan.threads, plan.engines, bench.progress)
    for b in (b for s in subjects for b in s.backends if plan.isolate and b.record.status == "ok"):
        live(f"cold start of {b.record.key} in a fresh process")
        b.record.cold_start = b.cold_start(plan.threads, plan.batch_sizes)
    # up to 8 distinct 500x375 JPEGs and 4 distinct 12 MP ones: decoding costs the same whatever repeats
    bench.jpegs = {mode: synthetic_jpegs(min(max(plan.batch_sizes), n), E2E_IMAGES[mode])
                   for mode, n in (("end_to_end", 8), ("end_to_end_12mp", 4)) if mode in plan.modes}
    for batch in plan.batch_sizes:
        _time_batch(subjects, bench, batch)
    for s, p in ((s, p) for s in subjects for p in s.precisions if plan.data):  # on CPU with ONNX Runtime
        live(f"accuracy of {p} on the {plan.split} split of {plan.data}")
        res = evaluate_onnx(s.infos[p]["path"], plan.data, split=plan.split, threads=plan.threads, quiet=True)
        accuracy = {"split": plan.split, "top1": res.get("top1"), "top5": res.get("top5"), "n": res.get("n"),
                    "provider": "CPUExecutionProvider"}
        for b in (b for b in s.backends if b.record.backend == DEFAULT_ENGINE and b.record.precision == p):
            b.record.accuracy = accuracy
            for row in (r for r in s.rows if r.key == b.record.key):
                row.top1 = accuracy["top1"]
    bench.progress.close()


def _time_batch(subjects: list, bench: Bench, batch: int) -> None:
    """Every model's warmed-up entries timed in the same rounds, then their rows."""
    entries, owners = {}, {}  # entry -> (fn, calls per block); entry -> (subject, backend, mode, first call's s)
    for s in subjects:
        for b, mode, fn, first, k in _warm(s, bench, batch):
            entry = f"{s.name}|{b.record.key}|{mode}"
            entries[entry], owners[entry] = (fn, k), (s, b, mode, first)
    rounds, several = bench.plan.rounds, len(subjects) > 1

    def on_block(r, entry, k, total):
        s, b, mode, _ = owners[entry]
        bench.progress.live(f"batch {batch} round {r + 1}/{rounds}: {s.name + ' ' if several else ''}"
                            f"{b.record.key} {mode} {k * batch / total if total else 0:.1f} img/s")
    lat, blocks, order = interleaved_rounds(entries, rounds, on_block)
    for r, entry, k in order:
        s, b, mode, _ = owners[entry]
        bench.schedule.append(Block(r, batch, s.name, b.record.key, mode, k))
    for entry, (s, b, mode, first) in owners.items():
        s.rows.append(_row(bench, b, mode, batch, lat[entry], blocks[entry], entries[entry][1], first))
    for s in subjects:
        _baselines([r for r in s.rows if r.batch == batch])
    s, r = max(((s, r) for s in subjects for r in s.rows if r.batch == batch), key=lambda x: x[1].throughput_ips.median)
    bench.progress.line(f"batch {batch} done; fastest {s.name + ' ' if several else ''}{r.key} {r.mode} "
                        f"{r.throughput_ips.median:.1f} img/s")


def _warm(s: Subject, bench: Bench, batch: int) -> list:
    """[(backend, mode, fn, first call's seconds, calls per block)] of every live backend warmed up at this batch
    size. A backend that may fail (torch.compile) and fails here is marked failed and timed no more."""
    pixels = random_pixels(batch, s.backends[0].preprocess.crop)
    jpegs = {m: [js[i % len(js)] for i in range(batch)] for m, js in bench.jpegs.items()}
    out = []
    for b in (b for b in s.backends if b.record.status == "ok"):
        warmed = []
        try:
            b.prepare(batch, pixels, jpegs)
            for mode in (m for m in bench.plan.modes if m in b.modes):
                fn = (lambda b=b, mode=mode: b.run(mode))
                bench.progress.live(f"batch {batch}: warming up {b.record.key} {mode}")
                warmed.append((b, mode, fn, *warm_up(fn, bench.plan)))
        except Exception as exc:  # noqa: BLE001 - torch.compile may fail on its first call; say why
            if not b.may_fail:
                raise
            b.record.status, b.record.error = "failed", first_line(exc, 300)
            continue
        out += warmed
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


def _row(bench: Bench, b, mode: str, batch: int, lat: list, blocks: list, k: int, first: float) -> Row:
    """One backend x mode x batch size: the timing statistics, GFLOP/s against the peaks, cold start and memory."""
    rec = b.record
    latency, per_image, throughput = stats(lat, blocks, k, batch)
    kind = "cpu" if rec.device == "cpu" else "cuda"
    peak_of = {(pk.device, pk.precision): pk for pk in bench.peaks if pk.gflops}
    fp32, own = peak_of.get((kind, "fp32")), peak_of.get((kind, own_peak_precision(rec.precision, kind)))
    gflops = _sig(rec.flops_per_image * throughput.median / 1e9) if rec.flops_per_image else None
    size, cold = E2E_IMAGES.get(mode), rec.cold_start if rec.cold_start and "error" not in rec.cold_start else {}
    return Row(
        **{f: getattr(rec, f) for f in _FROM_BACKEND}, mode=mode, e2e_image=f"{size[0]}x{size[1]}" if size else None,
        batch=batch, iterations=len(lat), rounds=bench.plan.rounds, throughput_ips=throughput, latency_ms=latency,
        latency_per_image_ms=per_image, first_run_s=round(first, 4), gflops=gflops,
        fraction_of_peak=_sig(gflops / fp32.gflops) if gflops and fp32 else None,
        fraction_of_precision_peak=_sig(gflops / own.gflops) if gflops and own else None,
        peak_precision=own and own.precision, precision_peak_engine=own and own.engine,
        cold_start_s=round(cold["session_s"] + cold["first_inference_s"].get(str(batch), 0.0), 4) if cold else None,
        peak_rss_mb=cold["peak_rss_mb"].get(str(batch)) if cold else None, gpu_mem_mb=cold.get("gpu_mem_mb"),
        decode_share=None if mode == "model" else b.decode_share(mode))


def _baselines(rows: list) -> None:
    """Each row's speed-up over PyTorch eager FP32 on its device, else ORT FP32 (PyTorch has no 12 MP rows)."""
    by = {(r.key, r.mode): r for r in rows}
    for row in rows:
        tdev = row.device.replace("tensorrt", "cuda")
        ref = next((by[k, row.mode] for k in (f"torch-eager/{tdev}/fp32", f"onnxruntime/{row.device}/fp32")
                    if (k, row.mode) in by), None)
        row.baseline = ref and ref.key
        row.speedup = round(row.throughput_ips.median / ref.throughput_ips.median, 3) \
            if ref and ref.throughput_ips.median else None
