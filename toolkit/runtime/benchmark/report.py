"""A run's record and its reports: inference_record (records.InferenceRecord from what run.py measured), each
record kind as a terminal table and as Markdown from one layout, and publish (the files, then the table)."""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Optional, Sequence

from toolkit.artifacts import atomic_write
from toolkit.runtime.benchmark.machine import record_head
from toolkit.runtime.benchmark.records import (TIMED, CompareModel, CompareRecord, CompareRow, CompareSettings,
                                               InferenceRecord, InferenceSettings, ModelInfo)
from toolkit.runtime.engines import DEFAULT_ENGINE

PARETO_MODE = "model"  # the comparison reads inference-only throughput (the same for every model's input size)
_COLUMNS = ("backend", "precision", "device", "mode", "batch", "img/s (min-max)", "p50 ms", "p90 ms", "p95 ms",
            "p99 ms", "ms/img", "% decode", "GFLOP/s", "% peak", "% own", "x base", "cold s", "RSS MB", "file MB",
            "top-1")
_MODE_LABEL = {"model": "model", "end_to_end": "e2e", "end_to_end_12mp": "e2e 12MP"}
_LEGEND = ("model = inference only; e2e = JPEG decode + preprocess + inference + top-5 (500x375; 12MP: 4032x3024). "
           "img/s: median over rounds (min-max). % decode: of an e2e call's time, decoding on every core "
           "(the rest: the model). % peak: of the measured FP32 GEMM peak; % own: of the row's own "
           "precision's GEMM peak. x base: vs PyTorch eager FP32 (else ORT FP32) at the same batch and mode.")


def inference_record(s, bench) -> dict:
    """The record of subject `s` (run.Subject) of a finished run `bench` (run.Bench), as a JSON-ready dict."""
    plan, meta = bench.plan, s.meta
    record = InferenceRecord(
        **record_head("inference", _command(s, bench), _notes(s, bench), s.out_dir, ("benchmark.json", "benchmark.md"),
                      any(d != "cpu" for d in plan.devices)),
        model=ModelInfo(path=s.base, name=os.path.basename(s.base)[:-len(".onnx")], arch=meta.get("arch"),
                        head=meta.get("head"), classes=len(s.labels), preprocess=meta["preprocess"],
                        input=s.info["contract"].input or {"shape": s.info["input_dims"]},
                        flops_per_image=s.info["flops"]["flops"], source_run=meta.get("source_run"),
                        checkpoint=s.extra.checkpoint or meta.get("checkpoint")),
        settings=InferenceSettings(**{**vars(plan), "precisions": list(s.precisions)}, skipped=s.skipped),
        timed=dict(TIMED), peaks=bench.peaks, backends=[b.record for b in s.backends], results=s.rows,
        schedule=[b for b in bench.schedule if b.model == s.name])
    return dataclasses.asdict(record)


def _notes(s, bench) -> list:
    uncounted = s.info["flops"]["uncounted"]
    notes = [f"FLOPs: {len(uncounted)} Conv/Gemm/MatMul nodes had unknown shapes and are not counted"] * bool(uncounted)
    notes += [f"{b.record.key} failed: {b.record.error}" for b in s.backends if b.record.status == "failed"]
    notes += [f"skipped {x.engine}/{x.device}/{x.precision}: {x.reason}" for x in s.skipped]
    if any(len(pk.candidates) > 1 for pk in bench.peaks):
        notes.append("peaks: the best of every engine's GEMM at the same thread count (peaks[].candidates)")
    notes += s.extra.notes
    if "fp16" in s.precisions and "cpu" in bench.plan.devices:
        notes.append("FP16 on CPU runs through ORT's CPU kernels (often slower than FP32); FP16 is for GPUs")
    return notes


def _command(s, bench) -> str:
    """The command line that repeats this run."""
    plan = bench.plan
    cmd = ["toolkit benchmark", s.base, "--batch-sizes", ",".join(map(str, plan.batch_sizes)), "--precision",
           ",".join(s.precisions), "--device", ",".join(plan.devices)]
    cmd += ["--engine", ",".join(plan.engines)] if tuple(plan.engines) != (DEFAULT_ENGINE,) else []
    cmd += ["--torch"] * plan.torch + ["--compile"] * plan.compile + ["--data", str(plan.data)] * bool(plan.data)
    cmd += ["--iterations", str(plan.iterations)] if plan.iterations is not None else ["--duration", str(plan.duration_s)]
    return " ".join(cmd + ["--threads", str(plan.threads)] * (plan.threads_source == "given"))


def _fmt(v: Any, spec: str = ".1f", scale: float = 1.0) -> str:
    return "-" if v is None else format(v * scale, spec)


def _num(v: Optional[float]) -> str:  # ms and img/s: 3 significant digits or more
    return "-" if v is None else format(v, ".3f" if v < 1 else ".2f" if v < 10 else ".1f" if v < 1000 else ".0f")


def _table(rows: list, left: int, markdown: bool) -> list:
    """Columns, the first `left` of them to the left: a Markdown table, or aligned text with a rule under the header."""
    if markdown:
        rule = ["---" if i < left else "---:" for i in range(len(rows[0]))]
        return ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in [rows[0], rule, *rows[1:]]]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) if i < left else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    return lines[:1] + ["  ".join("-" * w for w in widths)] + lines[1:]


def _document(record: dict, title: str, header: list, table: Optional[tuple], legend: str, markdown: bool) -> str:
    """One layout for every record kind: the header lines, the table (rows, left-aligned columns), the legend
    and the notes; as Markdown also the title, the command and what was timed."""
    body = _table(*table, markdown) if table else []
    if not markdown:
        return "\n".join(header + [""] * bool(body) + body + [legend] * bool(legend) + [f"note: {n}" for n in
                                                                                         record["notes"]])
    out = [f"# {title}", "", f"`{record['command']}`", ""] + [f"- {line}" for line in header] + [""] + body
    out += ["", legend] if legend else []
    out += ["", "## What was timed", ""] + [f"- **{k}**: {v}" for k, v in record["timed"].items()] \
        if "timed" in record else []
    out += ["", "## Notes", ""] + [f"- {n}" for n in record["notes"]] if record["notes"] else []
    return "\n".join(out) + "\n"


def _row_cells(r: dict) -> list:
    t, lat, provider = r["throughput_ips"], r["latency_ms"], r["provider"] or "-"
    provider = provider.replace("ExecutionProvider", "").replace("PyTorch ", "").replace(" (inductor)", "")
    return [r["backend"], r["precision"], f"{r['device']} ({provider})", _MODE_LABEL[r["mode"]], str(r["batch"]),
            f"{_num(t['median'])} ({_num(t['min'])}-{_num(t['max'])})", *map(_num, (lat["p50"], lat["p90"], lat["p95"],
                                                                                    lat["p99"])),
            _num(r["latency_per_image_ms"]["p50"]), _fmt(r["decode_share"], ".0f", 100), _fmt(r["gflops"]),
            _fmt(r["fraction_of_peak"], ".0f", 100), _fmt(r["fraction_of_precision_peak"], ".0f", 100),
            _fmt(r["speedup"], ".2f"), _fmt(r["cold_start_s"], ".2f"), _fmt(r["peak_rss_mb"], ".0f"),
            _fmt(r["file_bytes"], ".1f", 1e-6), _fmt(r["top1"], ".2f")]


def _header(record: dict) -> list:
    m, s, v, model = record["machine"], record["settings"], record["versions"], record["model"]
    lines = [f"model {model['path']} ({model['arch'] or '?'}, {model['flops_per_image'] / 1e9:.2f} GFLOP/image)",
             f"machine {m['cpu']} ({m['physical_cores']} cores" + (f"; GPU {m['gpu']}" if m["gpu"] else "")
             + f"); ISA {m['isa']['summary']}",
             f"threads {s['threads']} ({s['threads_source']}), "  # the default engine always runs (peak, accuracy)
             + ", ".join(f"{e} {v[e]}" for e in dict.fromkeys((DEFAULT_ENGINE, *s["engines"])))
             + (f", torch {v['torch']}" if s["torch"] or s["compile"] else ""),
             f"rounds {s['rounds']}, " + (f"{s['iterations']} iterations" if s["iterations"] else f"{s['duration_s']} s")
             + " per backend x mode x batch size, interleaved"]
    lines += [f"peak {pk['precision']} GEMM on {pk['device']}: {pk['gflops']:.0f} GFLOP/s ({pk['engine']}, "
              f"{pk['matrix']}x{pk['matrix']}, measured before the timing)" for pk in record["peaks"] if pk["gflops"]]
    return lines


def format_table(record: dict, markdown: bool = False) -> str:
    """An inference record's results as a table for a terminal (or Markdown: benchmark.md)."""
    rows = [list(_COLUMNS)] + [_row_cells(r) for r in record["results"]]
    return _document(record, "Benchmark: " + record["model"]["name"], _header(record), (rows, 4), _LEGEND, markdown)


def format_train_table(record: dict, markdown: bool = False) -> str:
    """A --train record for a terminal (or Markdown)."""
    r, s, lo, lim = record["recipe"], record["settings"], record["loader"], record["limiter"]
    lines = [f"training benchmark: {r['name']} ({r['arch']}, {r['head']} head, {r['crop']} px, batch {r['batch_size']},"
             f" {r['optimizer']}) on {s['device']}, {s['threads']} threads"]
    lines += [f"training step [{ph['phase']}: {', '.join(ph['groups'])}] {ph['precision']}: "
              f"{ph['throughput_ips']['median']:.1f} img/s "
              f"({ph['throughput_ips']['min']:.1f}-{ph['throughput_ips']['max']:.1f}), "
              f"{ph['latency_ms']['p50']:.0f} ms/step p50" for ph in record["phases"]]
    lines += [f"data loader ({lo['workers']} workers): {lo['throughput_ips']['overall']:.1f} img/s over "
              f"{lo['batches']} batches (startup {lo['startup_s']:.2f}s)", f"limited by the {lim['bound_by']}: "
              f"{lim['advice']}"]
    return _document(record, "Training benchmark", lines, None, "", markdown)


def pareto_flags(points: Sequence[tuple]) -> list:
    """For (images/s, top-1) pairs: True where no other pair is at least as fast and at least as accurate
    and better in one of them; False where one is; None where either value is unknown."""
    known = [(i, float(x), float(y)) for i, (x, y) in enumerate(points) if x is not None and y is not None]
    flags: list = [None] * len(points)
    for i, x, y in known:
        flags[i] = not any(x2 >= x and y2 >= y and (x2 > x or y2 > y) for j, x2, y2 in known if j != i)
    return flags


def _compare_lines(record: dict) -> list:
    """One line per model x backend: its img/s at every batch size, sorted by img/s at the Pareto batch."""
    sizes, pb = record["settings"]["batch_sizes"], record["settings"]["pareto_batch"]
    by_line: dict = {}
    for r in record["rows"]:
        by_line.setdefault((r["model"], r["key"]), {})[r["batch"]] = r
    out = [["model", "backend", "file MB", "GFLOP/img", "top-1"] + [f"img/s b{b}" for b in sizes] + ["Pareto"]]
    for (model, key), cells in sorted(by_line.items(), key=lambda kv: -(kv[1].get(pb) or {}).get("ips", 0.0)):
        one = next(iter(cells.values()))
        out.append([model, key, _fmt(one["file_bytes"], ".3g", 1e-6), _fmt(one["flops_per_image"], ".3g", 1e-9),
                    _fmt(one["top1"], ".2f")] + [_num(cells[b]["ips"]) if b in cells else "-" for b in sizes]
                   + [{True: "*", False: "", None: "-"}[(cells.get(pb) or {}).get("pareto")]])
    return out


def format_compare_table(record: dict, markdown: bool = False) -> str:
    """A comparison as a table for a terminal (or Markdown: compare.md)."""
    s = record["settings"]
    acc = f"top-1 on the {s['split']} split of {s['data']}" if s["data"] else "top-1 needs --data"
    legend = (f"img/s: inference only, median over {s['rounds']} rounds, all models interleaved in the same rounds. "
              f"{acc}. Pareto (*): at batch {s['pareto_batch']}, no other row is at least as fast and as accurate "
              "and better in one.")
    header = [f"comparing {len(record['models'])} models on {record['machine']['cpu']}, {s['threads']} threads"]
    header += [f"{m['name']}: {m['path']} ({m['arch'] or '?'}, {m['classes'] or '?'} classes); its full record: "
               f"{m['record']}" for m in record["models"]] if markdown else []
    return _document(record, "Which model for this box", header, (_compare_lines(record), 2), legend, markdown)


def _compare_rows(records: list, names: list) -> list:
    """One row per model x backend x batch size (mode model), Pareto-marked within each batch size."""
    same = ("key", "engine", "device", "precision", "batch", "file_bytes", "top1")  # as in the model's own rows
    rows = [CompareRow(model=name, **{k: r[k] for k in same}, ips=r["throughput_ips"]["median"],
                       ips_min=r["throughput_ips"]["min"], ips_max=r["throughput_ips"]["max"],
                       latency_p50_ms=r["latency_ms"]["p50"], flops_per_image=rec["model"]["flops_per_image"])
            for name, rec in zip(names, records) for r in rec["results"] if r["mode"] == PARETO_MODE]
    for b in sorted({r.batch for r in rows}):
        group = [r for r in rows if r.batch == b]
        for r, flag in zip(group, pareto_flags([(r.ips, r.top1) for r in group])):
            r.pareto = flag
    return rows


def compare_record(subjects: list, records: list, bench, batch: int, out_dir: str) -> dict:
    """The comparison record (records.CompareRecord) of a finished run."""
    plan, names = bench.plan, [s.name for s in subjects]
    notes = ["all models' timed blocks ran interleaved in the same rounds (schedule)",
             f"images/s and the Pareto marks are mode {PARETO_MODE} (inference only); each model's own record "
             "has every mode"] + ["no --data: no accuracy, so no Pareto marks"] * (not plan.data)
    notes += sorted({n for rec in records for n in rec["notes"]})
    command = records[0]["command"].replace(subjects[0].base, " ".join(s.base for s in subjects), 1)
    record = CompareRecord(
        **record_head("compare", f"{command} --pareto-batch {batch}", notes, out_dir,
                      ("compare.json", "compare.md"), any(d != "cpu" for d in plan.devices)),
        settings=CompareSettings(**vars(plan), pareto_batch=batch, pareto_mode=PARETO_MODE, interleaved=True),
        models=[CompareModel(name=name, path=s.base, arch=s.meta.get("arch"), classes=len(s.labels),
                             preprocess=rec["model"]["preprocess"], flops_per_image=rec["model"]["flops_per_image"],
                             record=rec["files"]["json"]) for name, s, rec in zip(names, subjects, records)],
        rows=_compare_rows(records, names), schedule=bench.schedule)
    return dataclasses.asdict(record)


_FORMATS = {"inference": format_table, "train": format_train_table, "compare": format_compare_table}


def publish(record: dict, quiet: bool, also: str = "") -> None:
    """The record's Markdown and JSON, each written atomically; then (unless quiet) its table on stdout and
    what was written on stderr."""
    files = record["files"]
    os.makedirs(os.path.dirname(files["json"]) or ".", exist_ok=True)
    atomic_write(files["markdown"], _FORMATS[record["kind"]](record, markdown=True))
    atomic_write(files["json"], json.dumps(record, indent=2, default=str) + "\n")
    if not quiet:
        print(_FORMATS[record["kind"]](record))
        print(f"benchmark: wrote {files['json']}, {files['markdown']}{also}", file=sys.stderr)
