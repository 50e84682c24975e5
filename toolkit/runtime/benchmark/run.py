"""run_benchmark: the steps of one inference benchmark, from the export to the written record.

The rules the measurements follow are in the package docstring (toolkit/runtime/benchmark/__init__.py).
"""
from __future__ import annotations

import datetime as _dt
import math
import os
import sys
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import numpy as np

from toolkit.errors import UserError, first_line
from toolkit.runtime.benchmark import combos as combos_mod
from toolkit.runtime.benchmark.backends import _Backend, _EngineBackend, _GemmReference, synthetic_jpegs
from toolkit.runtime.benchmark.model_file import _base_of, _export_hint, _resolve_model, inspect_model, twin_path
from toolkit.runtime.benchmark.options import BenchmarkOptions, Settings, _as_tuple, parse
from toolkit.runtime.benchmark.peak import _merge_peak, measure_peak
from toolkit.runtime.benchmark.probe import run_probe
from toolkit.runtime.benchmark.record import build_record
from toolkit.runtime.benchmark.report import _write_outputs, format_table
from toolkit.runtime.benchmark.rounds import _Progress, _stats, _warm_up, interleaved_rounds
from toolkit.runtime.benchmark.schema import E2E_IMAGES


@dataclass
class _Run:
    """What one benchmark run gathers, step by step (record.build_record reads it)."""

    opts: BenchmarkOptions
    s: Settings
    say: Callable
    progress: _Progress
    base: str = ""  # the FP32 export; its twins sit beside it
    info_base: dict = field(default_factory=dict)  # inspect_model of the base
    infos: dict = field(default_factory=dict)  # precision -> inspect_model of its file
    out_dir: str = ""
    backends: list = field(default_factory=list)  # every loaded _Backend
    failed: list = field(default_factory=list)  # {"key", "backend", "device", "precision", "error"}
    skipped: list = field(default_factory=list)  # {"engine", "device", "precision", "reason"}: combos not run
    ckpt_path: Optional[str] = None  # the PyTorch checkpoint (--torch / --compile)
    ckpt_note: Optional[str] = None  # why that checkpoint may not be the export's
    peaks: list = field(default_factory=list)  # measure_peak records
    cold: dict = field(default_factory=dict)  # backend key -> probe result
    gemm: Optional[_GemmReference] = None
    gemm_in_rounds: dict = field(default_factory=dict)  # batch -> the reference GEMM's GFLOP/s in the rounds
    jpegs: list = field(default_factory=list)  # the synthetic end-to-end inputs
    photos: list = field(default_factory=list)  # the synthetic 12 MP JPEGs (mode end_to_end_12mp)
    results: list = field(default_factory=list)  # one row per backend x mode x batch
    schedule: list = field(default_factory=list)  # the execution order of the blocks
    first_runs: dict = field(default_factory=dict)  # (key, mode, batch) -> seconds of the first call
    accuracy: dict = field(default_factory=dict)  # precision -> accuracy on the recipe's split
    decoded: list = field(default_factory=list)  # run.jpegs decoded and preprocessed for this model
    live: list = field(default_factory=list)  # the backends still timed (torch.compile may drop out)

    @property
    def meta(self) -> dict:
        return self.info_base["metadata"]


def run_benchmark(model: Optional[str] = None, options: Optional[BenchmarkOptions] = None, **fields) -> dict:
    """Benchmark an export (default: the newest in `exports_dir`) and return the JSON record.

    options: a BenchmarkOptions; keyword arguments set (or override) its fields, so
    run_benchmark(path, precision="fp32,int8", torch=True) works as before. Writes benchmark.json,
    benchmark.md and benchmark.png into out_dir (default benchmarks/<model>-<YYYYmmdd-HHMMSS>/).
    """
    opts = replace(options, **fields) if options is not None else BenchmarkOptions(**fields)
    say = (lambda *a, **k: None) if opts.quiet else (lambda *a, **k: print(*a, file=sys.stderr, **k))
    run = _Run(opts=opts, s=parse(opts), say=say, progress=_Progress(False))
    _open_model(run, model)
    run.progress = _Progress(not opts.quiet)
    _load_backends(run)
    _measure_peaks(run)
    if opts.isolate:
        _cold_starts(run)
    _time_batches(run)
    _measure_accuracy(run)
    _measure_peaks_again(run)
    run.progress.close()
    record = build_record(run)
    _write_outputs(record, run.out_dir, opts.plot, say)
    if not opts.quiet:
        print(format_table(record))
        say(f"benchmark: wrote {', '.join(v for v in record['files'].values() if v)}")
    return record


def _open_model(run: _Run, model: Optional[str]) -> None:
    """The export and its precision twins: every file there and readable, the batch axis dynamic."""
    path = _resolve_model(model, run.opts.exports_dir, run.say)
    base, twin_precision = _base_of(path)
    if twin_precision:
        if not os.path.isfile(base):
            base = path
        elif tuple(_as_tuple(run.opts.precision, str)) == ("fp32",):
            run.s.precisions = (twin_precision,)
        run.say(f"benchmark: {path} is the {twin_precision} twin of {base}")
    run.base, run.info_base = base, inspect_model(base)
    precisions, sizes = run.s.precisions, run.s.sizes
    files = list(dict.fromkeys(combos_mod.file_precision(p) for p in precisions))
    missing = [p for p in files if p != "fp32" and not os.path.isfile(twin_path(base, p))]
    if missing:
        raise UserError("\n".join(f"{twin_path(base, p)}: no {p} twin of {base}; make it with: "
                                  f"{_export_hint(run.meta, p)}" for p in missing))
    dims = run.info_base["input_dims"]
    if dims and isinstance(dims[0], int) and any(b != dims[0] for b in sizes):
        raise UserError(f"{base}: the batch axis is fixed at {dims[0]}; expected a dynamic batch axis to run batch "
                        f"sizes {', '.join(map(str, sizes))} (re-export it with toolkit export)")
    run.infos = {p: (run.info_base if combos_mod.file_precision(p) == "fp32" else inspect_model(twin_path(base, p)))
                 for p in precisions}
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run.out_dir = run.opts.out_dir or os.path.join("benchmarks", f"{os.path.basename(base)[:-len('.onnx')]}-{stamp}")


def _load_backends(run: _Run) -> None:
    """Every backend, loaded once: device problems surface here, before anything is timed. A bf16
    combination the machine can't run is skipped with its reason (an error only when it is all)."""
    combos, run.skipped = combos_mod.plan(run.s.engines, run.s.devices, run.s.precisions)
    for combo in combos:
        run.progress.live(f"loading {combo.key}")
        try:
            run.backends.append(_EngineBackend(run.infos[combo.precision], combo, run.s.threads, max(run.s.sizes)))
        except UserError as exc:
            if combo.precision != "bf16" or len(combos) == 1:
                raise
            run.skipped.append({"engine": combo.engine, "device": combo.device, "precision": combo.precision,
                                "reason": str(exc)})
    if not run.backends:
        raise UserError("benchmark: nothing to run: " + "; ".join(combos_mod.skip_note(x) for x in run.skipped))
    if run.opts.torch or run.opts.compile:
        from toolkit.train.torch_backend import checkpoint_note, find_checkpoint, load_torch_backends

        run.ckpt_path = find_checkpoint(run.meta, run.base, run.opts.checkpoint)
        loaded, failed = load_torch_backends(
            run.ckpt_path, run.s.devices, run.s.threads, run.backends[0].predictor.preprocess,
            eager=run.opts.torch, compiled=run.opts.compile, live=run.progress.live)
        run.backends += loaded
        run.failed += failed
        run.ckpt_note = checkpoint_note(run.ckpt_path, run.meta)


def _measure_peaks(run: _Run, backends: Optional[list] = None) -> None:
    """The FP32 GEMM peak per device kind, plus BF16 and INT8 (CPU) or FP16 (CUDA) when those precisions
    run (on `backends`, default run.backends), each with the fastest engine available."""
    ran = {(b.device if b.device == "cpu" else "cuda", b.precision) for b in (backends or run.backends)}
    for dev in dict.fromkeys("cpu" if d == "cpu" else "cuda" for d in run.s.devices):
        run.progress.live(f"measuring the {dev} GEMM peak")
        run.peaks.append(measure_peak(dev, run.s.threads, "fp32", engines=run.s.engines))
        for extra in {"cpu": ("bf16", "int8"), "cuda": ("fp16",)}[dev]:
            if (dev, extra) in ran:
                run.peaks.append(measure_peak(dev, run.s.threads, extra, engines=run.s.engines))
    for pk in run.peaks:
        if pk["gflops"]:
            run.progress.line(f"peak {pk['precision']} GEMM on {pk['device']}: {pk['gflops']:.0f} GFLOP/s "
                              f"({pk['engine']}, {pk['matrix']}x{pk['matrix']}"
                              + (f", {pk['threads']} threads)" if pk["threads"] else ")"))


def _cold_starts(run: _Run) -> None:
    """Cold start and peak RSS of each backend in a fresh process; with a model cache where its engine has one."""
    for b in run.backends:
        run.progress.live(f"cold start of {b.key} in a fresh process")
        spec = b.probe_spec(run.s.threads, run.s.sizes)
        run.cold[b.key], cache = b.cold_starts(spec, run_probe)   # OpenVINO's adapter adds its model cache
        if cache is not None and "error" not in run.cold[b.key]:
            run.cold[b.key]["model_cache"] = cache


def _time_batches(run: _Run) -> None:
    """Per batch size: warm up every backend, then time them all in interleaved rounds."""
    _prepare_inputs(run)
    for batch in run.s.sizes:
        entries, iters, owners = _batch_entries(run, batch)
        if run.gemm is not None:
            _add_gemm_entry(run, entries, iters, owners)
        _time_one_batch(run, batch, entries, iters, owners)


def _prepare_inputs(run: _Run) -> None:
    """The synthetic JPEGs, their decoded pixels (this model's preprocessing) and the reference GEMM."""
    from toolkit.preprocess import SERVE_FORMATS

    if run.opts.reference and "cpu" in run.s.devices:
        run.gemm = _GemmReference(run.s.threads)
    run.jpegs = synthetic_jpegs(min(max(run.s.sizes), 8))
    if "end_to_end_12mp" in run.s.modes:  # 4 distinct photos: decoding costs the same whatever repeats
        run.photos = synthetic_jpegs(min(max(run.s.sizes), 4), size=E2E_IMAGES["end_to_end_12mp"])
    preprocess = run.backends[0].predictor.preprocess
    run.decoded = [preprocess.pixels(j, formats=SERVE_FORMATS) for j in run.jpegs]
    run.live = list(run.backends)


def _batch_entries(run: _Run, batch: int) -> tuple[list, dict, dict]:
    """([(entry, fn)], {entry: calls per block}, {entry: (backend, mode)}) of every live backend, warmed
    up at this batch size; a backend that fails its warm-up (torch.compile) leaves run.live."""
    pixels = np.stack([run.decoded[i % len(run.decoded)] for i in range(batch)])
    jpegs = [run.jpegs[i % len(run.jpegs)] for i in range(batch)]
    photos = [run.photos[i % len(run.photos)] for i in range(batch)] if run.photos else []
    entries, iters, owners = [], {}, {}
    for b in list(run.live):
        warmed = _warm_backend(run, b, batch, pixels, jpegs, photos)
        if warmed is None:
            run.live.remove(b)
            continue
        for entry, fn, mode, k in warmed:
            entries.append((entry, fn))
            iters[entry], owners[entry] = k, (b, mode)
    return entries, iters, owners


def _add_gemm_entry(run: _Run, entries: list, iters: dict, owners: dict) -> None:
    """The reference GEMM as one more entry of the rounds (same noise as the models)."""
    _, last = _warm_up(run.gemm.run, 1)
    entry = f"{run.gemm.key}|{run.gemm.mode}"
    entries.append((entry, run.gemm.run))
    iters[entry] = max(1, int(round(min(float(run.s.duration or 1.0), 2.0) / run.s.rounds / max(last, 1e-6))))
    owners[entry] = (run.gemm, run.gemm.mode)


def _warm_backend(run: _Run, b: _Backend, batch: int, pixels: np.ndarray, jpegs: list,
                  photos: list) -> Optional[list]:
    """[(entry, fn, mode, calls per block)] of one warmed-up backend; None when torch.compile failed
    on its first call (recorded in run.failed). The 12 MP mode runs on the backends that take it."""
    warmed = []
    try:
        b.prepare(batch, pixels, jpegs)
        if photos and b.photo_modes:
            b.prepare_photos(photos)
        for mode in (m for m in run.s.modes if m in ("model", "end_to_end") or m in b.photo_modes):
            fn = (lambda b=b, mode=mode: b.run(mode))
            run.progress.live(f"batch {batch}: warming up {b.key} {mode}")
            first, last = _warm_up(fn, run.opts.warmup)
            warmed.append((f"{b.key}|{mode}", fn, mode, first, last))
    except Exception as exc:  # noqa: BLE001 - torch.compile may fail on its first call; say why
        if b.backend != "torch-compile":
            raise
        run.failed.append({"key": b.key, "backend": b.backend, "device": b.device, "precision": b.precision,
                           "error": first_line(exc, 300)})
        return None
    out = []
    for entry, fn, mode, first, last in warmed:
        run.first_runs[(b.key, mode, batch)] = first
        if run.opts.iterations is not None:
            k = max(1, math.ceil(int(run.opts.iterations) / run.s.rounds))
        else:
            k = max(1, int(round(float(run.s.duration) / run.s.rounds / max(last, 1e-6))))
        out.append((entry, fn, mode, k))
    return out


def _time_one_batch(run: _Run, batch: int, entries: list, iters: dict, owners: dict) -> None:
    """The interleaved rounds of one batch size, and a result row per backend x mode."""
    rounds = run.s.rounds

    def on_block(r, entry, k, total):
        b, mode = owners[entry]
        if b is not run.gemm:
            run.progress.live(f"batch {batch} round {r + 1}/{rounds}: {b.key} {mode} "
                              f"{k * batch / total if total else 0:.1f} img/s")
    lat, blocks, order = interleaved_rounds(entries, rounds, iters, on_block)
    run.schedule.extend({"round": r, "batch": batch, "key": owners[e][0].key, "mode": owners[e][1],
                         "iterations": k} for r, e, k in order)
    _add_rows(run, batch, lat, blocks, iters, owners)
    _say_fastest(run, batch)


def _add_rows(run: _Run, batch: int, lat: dict, blocks: dict, iters: dict, owners: dict) -> None:
    """One result row per backend x mode of `owners` (entry -> (backend, mode)); the GEMM's GFLOP/s."""
    rounds, gemm = run.s.rounds, run.gemm
    for entry, (b, mode) in owners.items():
        if b is gemm:
            g = np.asarray([iters[entry] * gemm.flops / t / 1e9 for t in blocks[entry]])
            run.gemm_in_rounds[batch] = {"batch": batch, "median_gflops": round(float(np.median(g)), 1),
                                         "min_gflops": round(float(g.min()), 1),
                                         "max_gflops": round(float(g.max()), 1), "calls": len(lat[entry])}
            continue
        size = E2E_IMAGES.get(mode)
        row = {"key": b.key, "backend": b.backend, "engine": b.engine or "torch",
               "engine_device": b.engine_device or b.provider, "inference_precision": b.inference_precision
               or b.precision, "device": b.device, "precision": b.precision, "provider": b.provider, "mode": mode,
               "e2e_image": f"{size[0]}x{size[1]}" if size else None, "batch": batch,
               "iterations": len(lat[entry]), "rounds": rounds}
        row.update(_stats(lat[entry], blocks[entry], iters[entry], batch))
        row["first_run_s"] = round(run.first_runs[(b.key, mode, batch)], 4)
        run.results.append(row)


def _say_fastest(run: _Run, batch: int, label: str = "") -> None:
    best = max((r for r in run.results if r["batch"] == batch), key=lambda r: r["throughput_ips"]["median"],
               default=None)
    if best:
        run.progress.line(f"batch {batch} done; fastest {label}{best['key']} {best['mode']} "
                          f"{best['throughput_ips']['median']:.1f} img/s")


def _measure_accuracy(run: _Run) -> None:
    """Each precision's accuracy on the recipe's split (--data), on CPU."""
    if not run.opts.data:
        return
    from toolkit.runtime.onnx_eval import evaluate_onnx

    for p in run.s.precisions:
        run.progress.live(f"accuracy of {p} on the {run.opts.split} split of {run.opts.data}")
        res = evaluate_onnx(run.infos[p]["path"], run.opts.data, split=run.opts.split, threads=run.s.threads,
                            quiet=True)
        run.accuracy[p] = {"split": run.opts.split, "top1": res.get("top1"), "top5": res.get("top5"),
                           "n": res.get("n"), "provider": "CPUExecutionProvider"}


def _measure_peaks_again(run: _Run) -> None:
    """The peak once more, now that the timing is done: the best of both samples counts, and the
    reference GEMM's best round too."""
    for pk in run.peaks:
        run.progress.live(f"measuring the {pk['device']} {pk['precision']} GEMM peak again")
        _merge_peak(pk, measure_peak(pk["device"], run.s.threads, pk["precision"], engines=run.s.engines))
    for pk in run.peaks:
        if pk["device"] == "cpu" and pk["precision"] == "fp32":
            pk["in_rounds"] = [run.gemm_in_rounds[b] for b in run.s.sizes if b in run.gemm_in_rounds]
            best_round = max((x["max_gflops"] for x in pk["in_rounds"]), default=None)
            mine = next((c for c in pk["candidates"] if c["engine"] == "onnxruntime MatMul"), None)
            if best_round and mine is not None and best_round > (mine.get("gflops") or 0):
                mine["gflops"], mine["from"] = best_round, "its best round in the timing"
                if best_round > (pk["gflops"] or 0):
                    pk["gflops"], pk["engine"] = best_round, mine["engine"]
