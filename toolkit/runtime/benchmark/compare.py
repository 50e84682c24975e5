"""Which model for my box: several exports benchmarked in one run (run.measure), accuracy against images/s.
Each model keeps its own benchmark.json/.md in <out>/<model>/; compare.json and compare.md sit in <out>/.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

from toolkit.errors import UserError
import toolkit.runtime.benchmark.report as report
from toolkit.runtime.benchmark.backends import BackendLoader
from toolkit.runtime.benchmark.machine import default_out_dir, record_head
from toolkit.runtime.benchmark.options import BenchmarkOptions
from toolkit.runtime.benchmark.records import CompareModel, CompareRecord, CompareRow, CompareSettings
from toolkit.runtime.benchmark.run import measure, open_subject, start

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
                   pareto_batch: Optional[int] = None, torch_backends: Optional[BackendLoader] = None,
                   **fields) -> dict:
    """Benchmark several exports side by side and return the comparison record (kind "compare").

    options / fields / torch_backends: as run_benchmark's, applied to every model alike. pareto_batch: the
    batch size of the Pareto marks in the table (default: the largest of batch_sizes)."""
    bench = start(options, fields)
    if len(models) < 2:
        raise UserError(f"benchmark: comparing needs at least two models, got {len(models)}; expected "
                        "toolkit benchmark A.onnx B.onnx [...]")
    sizes = bench.plan.sizes
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
    record = _compare_record(subjects, records, bench, batch, out_dir)
    report.publish(record, bench.opts.quiet, bench.say, also=" and one folder per model")
    return record


def _check_labels(subjects: list) -> None:
    """Top-1 on one recipe split compares models only when they name the same classes."""
    ref, want = subjects[0], set(subjects[0].labels)
    for s in subjects[1:]:
        have = set(s.labels)
        extra, lacking = (", ".join(sorted(x)[:8]) + (" ..." if len(x) > 8 else "") for x in (have - want, want - have))
        parts = [f"has {extra} that {ref.base} has not"] * bool(extra) + [f"lacks {lacking}"] * bool(lacking)
        if parts:
            raise UserError(f"{s.base}: its labels differ from {ref.base}'s: it {'; it '.join(parts)}; expected the "
                            f"same class names in every model to compare top-1 on one recipe split (--data)")


def _compare_rows(records: list, names: list) -> list:
    """One row per model x backend x batch size (mode model), Pareto-marked within each batch size."""
    rows = [CompareRow(model=name, key=r["key"], engine=r["engine"], device=r["device"], precision=r["precision"],
                       batch=r["batch"], ips=r["throughput_ips"]["median"], ips_min=r["throughput_ips"]["min"],
                       ips_max=r["throughput_ips"]["max"], latency_p50_ms=r["latency_ms"]["p50"],
                       file_bytes=r["file_bytes"], flops_per_image=rec["model"]["flops_per_image"], top1=r["top1"],
                       pareto=None)
            for name, rec in zip(names, records) for r in rec["results"] if r["mode"] == PARETO_MODE]
    for b in sorted({r.batch for r in rows}):
        group = [r for r in rows if r.batch == b]
        for r, flag in zip(group, pareto_flags([(r.ips, r.top1) for r in group])):
            r.pareto = flag
    return rows


def _compare_record(subjects: list, records: list, bench, batch: int, out_dir: str) -> dict:
    """The comparison record (records.CompareRecord) of a finished run."""
    opts, plan, names = bench.opts, bench.plan, [s.name for s in subjects]
    notes = ["all models' timed blocks ran interleaved in the same rounds (schedule)",
             f"images/s and the Pareto marks are mode {PARETO_MODE} (inference only); each model's own record "
             "has every mode"]
    if not opts.data:
        notes.append("no --data: no accuracy, so no Pareto marks")
    notes += sorted({n for rec in records for n in rec["notes"]})
    command = records[0]["command"].replace(subjects[0].base, " ".join(s.base for s in subjects), 1)
    record = CompareRecord(
        **record_head("compare", f"{command} --pareto-batch {batch}", notes, out_dir,
                      ("compare.json", "compare.md"), any(d != "cpu" for d in plan.devices)),
        settings=CompareSettings(**report.common_settings(bench, plan.precisions), pareto_batch=batch,
                                 pareto_mode=PARETO_MODE, interleaved=True),
        models=[CompareModel(name=name, path=s.base, arch=s.meta.get("arch"), classes=len(s.labels),
                             preprocess=rec["model"]["preprocess"], flops_per_image=rec["model"]["flops_per_image"],
                             record=rec["files"]["json"]) for name, s, rec in zip(names, subjects, records)],
        rows=_compare_rows(records, names), schedule=bench.schedule)
    return dataclasses.asdict(record)
