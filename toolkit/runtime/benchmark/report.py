"""Benchmark reports: the terminal table, the Markdown file and the PNG plot of each record kind
(inference, train, compare), and write_outputs. Standard library only (matplotlib for the plots alone)."""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Optional

from toolkit.artifacts import atomic_path, atomic_write
from toolkit.errors import first_line


def _fmt(v: Any, spec: str = ".1f", none: str = "-") -> str:
    if v is None:
        return none
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)


_COLUMNS = ("backend", "precision", "device", "mode", "batch", "img/s (min-max)", "p50 ms", "p90 ms", "p95 ms",
            "p99 ms", "ms/img", "GFLOP/s", "% peak", "% own", "% gemm", "x base", "cold s", "RSS MB", "file MB", "top-1")


def _ms(v: Optional[float]) -> str:
    if v is None:
        return "-"
    return format(v, ".3f" if v < 1 else ".2f" if v < 10 else ".1f")


def _ips(v: float) -> str:
    return format(v, ".2f" if v < 10 else ".1f" if v < 1000 else ".0f")


def _row_cells(r: dict) -> list:
    t, lat = r["throughput_ips"], r["latency_ms"]
    return [r["backend"], r["precision"], f"{r['device']} ({_short_provider(r['provider'])})",
            _MODE_LABEL.get(r["mode"], r["mode"]), str(r["batch"]),
            f"{_ips(t['median'])} ({_ips(t['min'])}-{_ips(t['max'])})", _ms(lat["p50"]), _ms(lat["p90"]),
            _ms(lat["p95"]), _ms(lat["p99"]), _ms(r["latency_per_image_ms"]["p50"]), _fmt(r["gflops"], ".1f"),
            _fmt(r["fraction_of_peak"] * 100 if r["fraction_of_peak"] is not None else None, ".0f"),
            _fmt(r["fraction_of_precision_peak"] * 100 if r.get("fraction_of_precision_peak") is not None else None,
                 ".0f"),
            _fmt(r["fraction_of_gemm_in_rounds"] * 100 if r.get("fraction_of_gemm_in_rounds") is not None else None,
                 ".0f"),
            _fmt(r["speedup"], ".2f"), _fmt(r["cold_start_s"], ".2f"), _fmt(r["peak_rss_mb"], ".0f"),
            _fmt(r["file_bytes"] / 1e6 if r["file_bytes"] else None, ".1f"),
            _fmt(r["top1"], ".2f")]


_MODE_LABEL = {"model": "model", "end_to_end": "e2e", "end_to_end_12mp": "e2e 12MP"}


def _short_provider(p: Optional[str]) -> str:
    return (p or "-").replace("ExecutionProvider", "").replace("PyTorch ", "").replace(" (inductor)", "")


def _header(record: dict) -> list:
    m, s, v = record["machine"], record["settings"], record["versions"]
    lines = [f"model {record['model']['path']} ({record['model'].get('arch') or '?'}, "
             f"{_fmt(record['model']['flops_per_image'] / 1e9 if record['model']['flops_per_image'] else None, '.2f')}"
             f" GFLOP/image)",
             f"machine {m['cpu']} ({m['physical_cores']} cores" + (f"; GPU {m['gpu']}" if m.get("gpu") else "") + ")"
             + (f"; ISA {m['isa']['summary']}" if m.get("isa") else ""),
             f"threads {s['threads']} ({s['threads_source']}), onnxruntime {v['onnxruntime']}"
             + (f", openvino {v.get('openvino')}" if "openvino" in s.get("engines", ()) else "")
             + (f", torch {v['torch']}" if s["torch"] or s["compile"] else ""),
             f"rounds {s['rounds']}, " + (f"{s['iterations']} iterations" if s["iterations"] else
                                          f"{s['duration_s']} s") + " per backend x mode x batch size, interleaved"]
    for pk in record["peaks"]:
        if pk["gflops"]:
            rounds = ", ".join(f"batch {x['batch']}: {x['median_gflops']:.0f}" for x in pk.get("in_rounds") or [])
            lines.append(f"peak {pk['precision']} GEMM on {pk['device']}: {pk['gflops']:.0f} GFLOP/s ({pk['engine']}, "
                         f"{pk['matrix']}x{pk['matrix']}, measured before the timing)"
                         + (f"; in the rounds (ORT MatMul, median) {rounds}" if rounds else ""))
    lines += _cache_lines(record)
    return lines


def _cache_lines(record: dict) -> list:
    """OpenVINO's cold start (compile + first inference at the smallest batch) without and with its model cache."""
    lines = []
    for b in record["backends"]:
        cache = (b.get("cold_start") or {}).get("model_cache")
        if not cache:
            continue
        cells = []
        for name, label in (("none", "no cache"), ("cold", "empty cache"), ("warm", "warm cache")):
            c = cache.get(name) or {}
            firsts = c.get("first_inference_s") or {}
            first = firsts[min(firsts, key=int)] if firsts else None
            cells.append(f"{label} {_fmt(c.get('session_s'), '.2f')} s + {_fmt(first, '.3f')} s")
        lines.append(f"cold start {b['key']} (compile + first inference): " + ", ".join(cells))
    return lines


def format_table(record: dict) -> str:
    """The results as a plain-text table for a terminal."""
    rows = [list(_COLUMNS)] + [_row_cells(r) for r in record["results"]]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(_COLUMNS))]
    lines = _header(record) + [""]
    for j, row in enumerate(rows):
        lines.append("  ".join(str(c).ljust(w) if i < 4 else str(c).rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths))))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("model = inference only; e2e = JPEG decode + preprocess + inference + top-5 (500x375; 12MP: "
                 "4032x3024). img/s: median over rounds (min-max). % peak: of the measured FP32 GEMM peak; % own: "
                 "of the row's own precision's GEMM peak; % gemm: of the same FP32 GEMM timed in the rounds. "
                 "x base: vs "
                 "PyTorch eager FP32 (else ORT FP32) at the same batch and mode.")
    for note in record["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def format_markdown(record: dict) -> str:
    head = ["# Benchmark: " + record["model"]["name"], "", f"`{record['command']}`", ""]
    head += [f"- {line}" for line in _header(record)]
    head += ["", "| " + " | ".join(_COLUMNS) + " |", "|" + "|".join("---" if i < 4 else "---:"
                                                                 for i in range(len(_COLUMNS))) + "|"]
    body = ["| " + " | ".join(c.replace("|", "/") for c in _row_cells(r)) + " |" for r in record["results"]]
    tail = ["", "## What was timed", ""] + [f"- **{k}**: {v}" for k, v in record["timed"].items()]
    if record["notes"]:
        tail += ["", "## Notes", ""] + [f"- {n}" for n in record["notes"]]
    failed = [b for b in record["backends"] if b["status"] != "ok"]
    if failed:
        tail += ["", "## Backends that failed", ""] + [f"- {b['key']}: {b['error']}" for b in failed]
    return "\n".join(head + body + tail) + "\n"


def _plot(record: dict, plt):
    """Throughput vs batch size per backend and mode."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    series: dict[tuple, list] = {}
    for r in record["results"]:
        series.setdefault((r["key"], r["mode"]), []).append(r)
    for (key, mode), rows in series.items():
        rows = sorted(rows, key=lambda r: r["batch"])
        xs = [r["batch"] for r in rows]
        ys = [r["throughput_ips"]["median"] for r in rows]
        lo = [r["throughput_ips"]["median"] - r["throughput_ips"]["min"] for r in rows]
        hi = [r["throughput_ips"]["max"] - r["throughput_ips"]["median"] for r in rows]
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, linestyle="-" if mode == "model" else "--",
                    label=f"{key} ({'model' if mode == 'model' else 'end to end'})")
    ax.set_xscale("log", base=2)
    ax.set_xticks(record["settings"]["batch_sizes"])
    ax.set_xticklabels([str(b) for b in record["settings"]["batch_sizes"]])
    ax.set_xlabel("batch size")
    ax.set_ylabel("images / s (median over rounds, min-max bars)")
    ax.set_title(f"{record['model']['name']} on {record['machine']['gpu'] or record['machine']['cpu']}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def _save_figure(fig, plt, path: str) -> None:
    """Write a matplotlib figure as PNG atomically, and close it whatever happens."""
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(fig)


def write_outputs(record: dict, plot: bool, say: Callable) -> None:
    """The record's Markdown, its plot (when asked for and matplotlib is there) and its JSON, each atomically."""
    files, kind = record["files"], record["kind"]
    os.makedirs(os.path.dirname(files["json"]) or ".", exist_ok=True)
    if plot and files["png"]:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except Exception as exc:  # noqa: BLE001 - matplotlib is an optional (train) extra
            files["png"] = None
            record["notes"].append(f"plot skipped: matplotlib is not installed ({first_line(exc, 300)}); "
                                   "pip install 'toolkit[train]'")
            say(f"benchmark: {record['notes'][-1]}")
        else:
            _save_figure((_plot_pareto if kind == "compare" else _plot)(record, plt), plt, files["png"])
    markdown = {"inference": format_markdown, "train": format_train_markdown, "compare": format_compare_markdown}
    atomic_write(files["markdown"], markdown[kind](record))
    atomic_write(files["json"], json.dumps(record, indent=2, default=str) + "\n")


def format_train_table(record: dict) -> str:
    r = record["recipe"]
    lines = [f"training benchmark: {r['name']} ({r['arch']}, {r['head']} head, {r['crop']} px, batch {r['batch_size']},"
             f" {r['optimizer']}) on {record['settings']['device']}, {record['settings']['threads']} threads"]
    for ph in record["phases"]:
        t = ph["throughput_ips"]
        lines.append(f"  training step [{ph['phase']}: {', '.join(ph['groups'])}]: {t['median']:.1f} img/s "
                     f"({t['min']:.1f}-{t['max']:.1f}), {ph['latency_ms']['p50']:.0f} ms/step p50")
    lo = record["loader"]
    lines.append(f"  data loader ({lo['workers']} workers): {lo['throughput_ips']['overall']:.1f} img/s over "
                 f"{lo['batches']} batches (startup {lo['startup_s']:.2f}s)")
    lim = record["limiter"]
    lines.append(f"  limited by the {lim['bound_by']}: {lim['advice']}")
    lines += [f"  note: {n}" for n in record["notes"]]
    return "\n".join(lines)


def format_train_markdown(record: dict) -> str:
    return "# Training benchmark\n\n`" + record["command"] + "`\n\n```\n" + format_train_table(record) + "\n```\n\n" \
        + "\n".join(f"- **{k}**: {v}" for k, v in record["timed"].items()) + "\n"


def _compare_lines(record: dict) -> list:
    """One line per model x backend: its img/s at every batch size, sorted by img/s at the Pareto batch."""
    sizes, pb = record["settings"]["batch_sizes"], record["settings"]["pareto_batch"]
    by_line: dict = {}
    for r in record["rows"]:
        by_line.setdefault((r["model"], r["key"]), {})[r["batch"]] = r
    ordered = sorted(by_line.items(), key=lambda kv: -(kv[1].get(pb) or {}).get("ips", 0.0))
    header = ["model", "backend", "file MB", "GFLOP/img", "top-1"] + [f"img/s b{b}" for b in sizes] + ["Pareto"]
    out = [header]
    for (model, key), cells in ordered:
        any_row = next(iter(cells.values()))
        at_pb = cells.get(pb) or {}
        mark = {True: "*", False: "", None: "-"}[at_pb.get("pareto")]
        out.append([model, key, _fmt(any_row["file_bytes"] / 1e6 if any_row["file_bytes"] else None, ".3g"),
                    _fmt(any_row["flops_per_image"] / 1e9 if any_row["flops_per_image"] else None, ".3g"),
                    _fmt(any_row["top1"], ".2f")]
                   + [_ips(cells[b]["ips"]) if b in cells else "-" for b in sizes] + [mark])
    return out


def _compare_legend(record: dict) -> str:
    s = record["settings"]
    acc = f"top-1 on the {s['split']} split of {s['data']}" if s["data"] else "top-1 needs --data"
    return (f"img/s: inference only, median over {s['rounds']} rounds, all models interleaved in the same rounds. "
            f"{acc}. Pareto (*): at batch {s['pareto_batch']}, no other row is at least as fast and as accurate "
            "and better in one.")


def format_compare_table(record: dict) -> str:
    """The comparison as a plain-text table for a terminal."""
    rows = _compare_lines(record)
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = [f"comparing {len(record['models'])} models on {record['machine']['cpu']}, "
             f"{record['settings']['threads']} threads", ""]
    for j, row in enumerate(rows):
        lines.append("  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths))))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(_compare_legend(record))
    lines += [f"note: {n}" for n in record["notes"]]
    return "\n".join(lines)


def format_compare_markdown(record: dict) -> str:
    rows = _compare_lines(record)
    out = ["# Which model for this box", "", f"`{record['command']}`", "",
           f"- machine {record['machine']['cpu']}, {record['settings']['threads']} threads", ""]
    out += ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" if i < 2 else "---:"
                                                            for i in range(len(rows[0]))) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows[1:]]
    out += ["", _compare_legend(record), "", "## Models", ""]
    out += [f"- **{m['name']}**: `{m['path']}` ({m['arch'] or '?'}, {m['classes'] or '?'} classes); "
            f"its full record: `{m['record']}`" for m in record["models"]]
    if record["notes"]:
        out += ["", "## Notes", ""] + [f"- {n}" for n in record["notes"]]
    return "\n".join(out) + "\n"


def _plot_pareto(record: dict, plt):
    """Top-1 against img/s at the Pareto batch, the Pareto front joined."""
    pb = record["settings"]["pareto_batch"]
    rows = [r for r in record["rows"] if r["batch"] == pb and r["top1"] is not None]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for r in rows:
        ax.errorbar([r["ips"]], [r["top1"]], xerr=[[r["ips"] - r["ips_min"]], [r["ips_max"] - r["ips"]]],
                    marker="*" if r["pareto"] else "o", markersize=11 if r["pareto"] else 6, capsize=3,
                    linestyle="none", color="tab:red" if r["pareto"] else "tab:blue")
        ax.annotate(f"{r['model']} {r['precision']} ({r['engine']})", (r["ips"], r["top1"]), fontsize=7,
                    textcoords="offset points", xytext=(5, 4))
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["ips"])
    if len(front) > 1:
        ax.step([r["ips"] for r in front], [r["top1"] for r in front], where="post", color="tab:red", alpha=0.5,
                label="Pareto front")
        ax.legend(fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel(f"images / s at batch {pb} (inference only; median, min-max bars)")
    ax.set_ylabel(f"top-1 % ({record['settings']['split']} split)")
    ax.set_title(f"Which model for {record['machine']['cpu']}", fontsize=9)
    ax.grid(True, alpha=0.3)
    return fig
