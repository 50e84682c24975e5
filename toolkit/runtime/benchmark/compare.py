"""Which model for my box: several exports benchmarked in one run, accuracy against images/s.

    toolkit benchmark a.onnx b.onnx c.onnx --data recipes/flowers.yaml --precision fp32,int8

Every model is opened and loaded as a run of its own (run._Run: its twins, its preprocessing, its
backends), then all models' timed blocks go into ONE list of entries per batch size, timed in the
same interleaved rounds (rounds.interleaved_rounds), so machine noise hits every model alike. The
GEMM peaks are measured once for all. Each model keeps its own benchmark.json/.md/.png in
<out>/<model>/; compare.json, compare.md and pareto.png (compare_report) sit in <out>/.
"""
from __future__ import annotations

import datetime as _dt
import os
import sys
from dataclasses import replace
from typing import Optional, Sequence

from toolkit.errors import UserError
from toolkit.runtime.benchmark import run as run_mod
from toolkit.runtime.benchmark.compare_report import format_compare_table, write_compare_outputs
from toolkit.runtime.benchmark.machine import _now_iso, machine_info, versions
from toolkit.runtime.benchmark.options import BenchmarkOptions, parse
from toolkit.runtime.benchmark.record import build_record
from toolkit.runtime.benchmark.report import _write_outputs
from toolkit.runtime.benchmark.rounds import _Progress, interleaved_rounds
from toolkit.runtime.benchmark.schema import SCHEMA_VERSION

PARETO_MODE = "model"  # the comparison reads inference-only throughput (the same for every model's input size)


def pareto_flags(points: Sequence[tuple]) -> list:
    """For (images/s, top-1) pairs: True where no other pair is at least as fast and at least as accurate
    and better in one of them; False where one is; None where either value is unknown."""
    known = [(i, float(x), float(y)) for i, (x, y) in enumerate(points) if x is not None and y is not None]
    flags: list = [None] * len(points)
    for i, x, y in known:
        flags[i] = not any(x2 >= x and y2 >= y and (x2 > x or y2 > y) for j, x2, y2 in known if j != i)
    return flags


def compare_models(models: Sequence[str], options: Optional[BenchmarkOptions] = None,
                   pareto_batch: Optional[int] = None, **fields) -> dict:
    """Benchmark several exports side by side and return the comparison record (kind "compare").

    options / fields: as run_benchmark's, applied to every model alike. pareto_batch: the batch size
    the Pareto marks and pareto.png use (default: the largest of batch_sizes)."""
    opts = replace(options, **fields) if options is not None else BenchmarkOptions(**fields)
    if len(models) < 2:
        raise UserError(f"benchmark: comparing needs at least two models, got {len(models)}; expected "
                        "toolkit benchmark A.onnx B.onnx [...]")
    say = (lambda *a, **k: None) if opts.quiet else (lambda *a, **k: print(*a, file=sys.stderr, **k))
    settings = parse(opts)
    batch = _pareto_batch(pareto_batch, settings.sizes)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = opts.out_dir or os.path.join("benchmarks", f"compare-{stamp}")
    runs = _open_models(models, opts, say, out_dir)
    if opts.data:
        _check_labels(runs)
    progress = _Progress(not opts.quiet)
    for run in runs:
        run.progress = progress
        run_mod._load_backends(run)
    first = runs[0]
    run_mod._measure_peaks(first, [b for run in runs for b in run.backends])
    for run in runs[1:]:
        run.peaks = first.peaks  # one measurement, the same dicts in every record
    if opts.isolate:
        for run in runs:
            run_mod._cold_starts(run)
    schedule = _time_models(runs)
    for run in runs:
        run_mod._measure_accuracy(run)
    run_mod._measure_peaks_again(first)
    progress.close()
    records = []
    for run in runs:
        records.append(build_record(run))
        _write_outputs(records[-1], run.out_dir, opts.plot, say)
    record = build_compare_record(runs, records, opts, batch, schedule, out_dir)
    write_compare_outputs(record, out_dir, opts.plot, say)
    if not opts.quiet:
        print(format_compare_table(record))
        say(f"benchmark: wrote {', '.join(v for v in record['files'].values() if v)} and one folder per model")
    return record


def _pareto_batch(pareto_batch: Optional[int], sizes: tuple) -> int:
    if pareto_batch is None:
        return max(sizes)
    try:
        batch = int(pareto_batch)
    except (TypeError, ValueError):
        batch = None
    if batch not in sizes:
        raise UserError(f"pareto_batch: {pareto_batch!r} is not one of the batch sizes timed "
                        f"({', '.join(map(str, sizes))}); expected one of them")
    return batch


def _open_models(models: Sequence[str], opts: BenchmarkOptions, say, out_dir: str) -> list:
    """One run._Run per model, each with its own output folder <out_dir>/<model name>[-k]."""
    runs, names = [], set()
    for model in models:
        run = run_mod._Run(opts=opts, s=parse(opts), say=say, progress=_Progress(False))
        run_mod._open_model(run, os.fspath(model))
        name = stem = os.path.basename(run.base)[:-len(".onnx")]
        k = 2
        while name in names:
            name, k = f"{stem}-{k}", k + 1
        names.add(name)
        run.out_dir = os.path.join(out_dir, name)
        runs.append(run)
    return runs


def _labels_of(run) -> list:
    labels = run.meta.get("labels")
    return [str(x) for x in labels] if isinstance(labels, list) else []


def _check_labels(runs: list) -> None:
    """Top-1 on one recipe split compares models only when they name the same classes."""
    ref = runs[0]
    want = set(_labels_of(ref))
    for run in runs[1:]:
        have = set(_labels_of(run))
        if have == want:
            continue
        extra, lacking = sorted(have - want), sorted(want - have)
        parts = ([f"has {', '.join(extra[:8])}{' ...' if len(extra) > 8 else ''} that {ref.base} has not"]
                 if extra else []) + ([f"lacks {', '.join(lacking[:8])}{' ...' if len(lacking) > 8 else ''}"]
                                      if lacking else [])
        raise UserError(f"{run.base}: its labels differ from {ref.base}'s: it {'; it '.join(parts)}; expected the "
                        f"same class names in every model to compare top-1 on one recipe split (--data)")


def _time_models(runs: list) -> list:
    """Per batch size: every model's warmed-up entries (and the reference GEMM once) in one list, timed
    in the same interleaved rounds. Returns the combined schedule, each block naming its model."""
    first, schedule = runs[0], []
    for run in runs:
        run_mod._prepare_inputs(run)
        if run is not first:
            run.gemm = None  # one reference GEMM in the rounds, shared by every model's record
    names = [os.path.basename(run.out_dir) for run in runs]
    for batch in first.s.sizes:
        entries, iters, owners = [], {}, {}  # owners: entry -> (model index, backend, mode)
        for i, run in enumerate(runs):
            e, it, ow = run_mod._batch_entries(run, batch)
            if run is first and run.gemm is not None:
                run_mod._add_gemm_entry(run, e, it, ow)
            entries += [(f"{i}#{name}", fn) for name, fn in e]
            iters.update({f"{i}#{name}": k for name, k in it.items()})
            owners.update({f"{i}#{name}": (i, *owner) for name, owner in ow.items()})

        def on_block(r, entry, k, total, batch=batch):
            i, b, mode = owners[entry]
            if b is not first.gemm:
                first.progress.live(f"batch {batch} round {r + 1}/{first.s.rounds}: {names[i]} {b.key} {mode} "
                                    f"{k * batch / total if total else 0:.1f} img/s")
        lat, blocks, order = interleaved_rounds(entries, first.s.rounds, iters, on_block)
        for r, e, k in order:
            i, b, mode = owners[e]
            block = {"round": r, "batch": batch, "key": b.key, "mode": mode, "iterations": k}
            runs[i].schedule.append(block)
            schedule.append({**block, "model": names[i]})
        for i, run in enumerate(runs):
            mine = {e: (b, mode) for e, (j, b, mode) in owners.items() if j == i}
            run_mod._add_rows(run, batch, lat, blocks, iters, mine)
        for run in runs[1:]:
            run.gemm_in_rounds = first.gemm_in_rounds
        best = max(((names[i], row) for i, run in enumerate(runs) for row in run.results if row["batch"] == batch),
                   key=lambda nr: nr[1]["throughput_ips"]["median"], default=None)
        if best:
            first.progress.line(f"batch {batch} done; fastest {best[0]} {best[1]['key']} {best[1]['mode']} "
                                f"{best[1]['throughput_ips']['median']:.1f} img/s")
    return schedule


def _compare_rows(records: list, names: list, batch: int) -> list:
    """One row per model x backend x batch size (mode model), Pareto-marked within each batch size."""
    rows = []
    for name, rec in zip(names, records):
        for r in rec["results"]:
            if r["mode"] != PARETO_MODE:
                continue
            t = r["throughput_ips"]
            rows.append({"model": name, "key": r["key"], "engine": r["engine"], "device": r["device"],
                         "precision": r["precision"], "batch": r["batch"], "ips": t["median"], "ips_min": t["min"],
                         "ips_max": t["max"], "latency_p50_ms": r["latency_ms"]["p50"],
                         "file_bytes": r["file_bytes"], "flops_per_image": rec["model"]["flops_per_image"],
                         "top1": r["top1"], "pareto": None})
    for b in sorted({r["batch"] for r in rows}):
        group = [r for r in rows if r["batch"] == b]
        for r, flag in zip(group, pareto_flags([(r["ips"], r["top1"]) for r in group])):
            r["pareto"] = flag
    return rows


def build_compare_record(runs: list, records: list, opts: BenchmarkOptions, batch: int, schedule: list,
                         out_dir: str) -> dict:
    """The comparison record (schema.COMPARE_SCHEMA) of a finished compare_models run."""
    names = [os.path.basename(run.out_dir) for run in runs]
    s = runs[0].s
    notes = ["all models' timed blocks ran interleaved in the same rounds (schedule)",
             f"images/s and the Pareto marks are mode {PARETO_MODE} (inference only); each model's own record "
             "has every mode"]
    if not opts.data:
        notes.append("no --data: no accuracy, so no Pareto marks and no pareto.png")
    notes += sorted({n for rec in records for n in rec["notes"]})
    cmd = records[0]["command"].replace(runs[0].base, " ".join(run.base for run in runs), 1)
    return {
        "schema_version": SCHEMA_VERSION, "kind": "compare", "created": _now_iso(),
        "command": cmd + f" --pareto-batch {batch}",
        "machine": machine_info(gpu=any(d != "cpu" for d in s.devices)), "versions": versions(),
        "settings": {"batch_sizes": list(s.sizes), "precisions": list(s.precisions), "engines": list(s.engines),
                     "devices": list(s.devices), "threads": s.threads, "rounds": s.rounds,
                     "iterations": int(opts.iterations) if opts.iterations is not None else None,
                     "duration_s": float(s.duration) if opts.iterations is None else None,
                     "data": opts.data, "split": opts.split if opts.data else None, "pareto_batch": batch,
                     "pareto_mode": PARETO_MODE, "interleaved": True},
        "models": [{"name": name, "path": run.base, "arch": run.meta.get("arch"),
                    "classes": len(_labels_of(run)) or None,
                    "preprocess": run.meta.get("preprocess") if isinstance(run.meta.get("preprocess"), dict)
                    else None, "flops_per_image": rec["model"]["flops_per_image"], "record": rec["files"]["json"]}
                   for name, run, rec in zip(names, runs, records)],
        "rows": _compare_rows(records, names, batch), "schedule": schedule, "notes": notes,
        "files": {"json": os.path.join(out_dir, "compare.json"), "markdown": os.path.join(out_dir, "compare.md"),
                  "png": os.path.join(out_dir, "pareto.png") if opts.plot and opts.data else None},
    }
