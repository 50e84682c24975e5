"""Benchmark reports: the terminal table, the Markdown file and the PNG plot of each record kind
(inference, train, compare), and write_outputs. Standard library only (matplotlib for the plots alone)."""
from __future__ import annotations

import datetime as _dt
import json
import os
import sys
from typing import Any, Callable, Optional

from toolkit.artifacts import atomic_path, atomic_write
from toolkit.errors import first_line
from toolkit.runtime.engines import DEFAULT_ENGINE

_COLUMNS = ("backend", "precision", "device", "mode", "batch", "img/s (min-max)", "p50 ms", "p90 ms", "p95 ms",
            "p99 ms", "ms/img", "% decode", "GFLOP/s", "% peak", "% own", "% gemm", "x base", "cold s", "RSS MB",
            "file MB", "top-1")
_MODE_LABEL = {"model": "model", "end_to_end": "e2e", "end_to_end_12mp": "e2e 12MP"}
_LEGEND = ("model = inference only; e2e = JPEG decode + preprocess + inference + top-5 (500x375; 12MP: 4032x3024). "
           "img/s: median over rounds (min-max). % decode: of an e2e call's time, decoding on every core "
           "(the rest: the model). % peak: of the measured FP32 GEMM peak; % own: of the row's own "
           "precision's GEMM peak; % gemm: of the same FP32 GEMM timed in the rounds. x base: vs PyTorch eager FP32 "
           "(else ORT FP32) at the same batch and mode.")


def _fmt(v: Any, spec: str = ".1f", scale: float = 1.0) -> str:
    return "-" if v is None else format(v * scale, spec)


def _ms(v: Optional[float]) -> str:
    return "-" if v is None else format(v, ".3f" if v < 1 else ".2f" if v < 10 else ".1f")


def _ips(v: float) -> str:
    return format(v, ".2f" if v < 10 else ".1f" if v < 1000 else ".0f")


def _text_table(rows: list, left: int) -> list:
    """Aligned columns, the first `left` of them to the left, a rule under the header."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) if i < left else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    return lines[:1] + ["  ".join("-" * w for w in widths)] + lines[1:]


def _md_table(rows: list, left: int) -> list:
    return (["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" if i < left else "---:" for i in range(len(rows[0])))
             + "|"] + ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows[1:]])


def _row_cells(r: dict) -> list:
    t, lat, provider = r["throughput_ips"], r["latency_ms"], r["provider"] or "-"
    provider = provider.replace("ExecutionProvider", "").replace("PyTorch ", "").replace(" (inductor)", "")
    return [r["backend"], r["precision"], f"{r['device']} ({provider})", _MODE_LABEL[r["mode"]], str(r["batch"]),
            f"{_ips(t['median'])} ({_ips(t['min'])}-{_ips(t['max'])})", *(_ms(lat[p]) for p in ("p50", "p90", "p95",
                                                                                                 "p99")),
            _ms(r["latency_per_image_ms"]["p50"]), _fmt(r["decode_share"], ".0f", 100), _fmt(r["gflops"]),
            _fmt(r["fraction_of_peak"], ".0f", 100),
            _fmt(r["fraction_of_precision_peak"], ".0f", 100), _fmt(r["fraction_of_gemm_in_rounds"], ".0f", 100),
            _fmt(r["speedup"], ".2f"), _fmt(r["cold_start_s"], ".2f"), _fmt(r["peak_rss_mb"], ".0f"),
            _fmt(r["file_bytes"], ".1f", 1e-6), _fmt(r["top1"], ".2f")]


def _header(record: dict) -> list:
    m, s, v, model = record["machine"], record["settings"], record["versions"], record["model"]
    lines = [f"model {model['path']} ({model['arch'] or '?'}, {_fmt(model['flops_per_image'], '.2f', 1e-9)} GFLOP/image)",
             f"machine {m['cpu']} ({m['physical_cores']} cores" + (f"; GPU {m['gpu']}" if m["gpu"] else "")
             + f"); ISA {m['isa']['summary']}",
             f"threads {s['threads']} ({s['threads_source']}), "  # the default engine always runs (peak, accuracy)
             + ", ".join(f"{e} {v[e]}" for e in dict.fromkeys((DEFAULT_ENGINE, *s["engines"])))
             + (f", torch {v['torch']}" if s["torch"] or s["compile"] else ""),
             f"rounds {s['rounds']}, " + (f"{s['iterations']} iterations" if s["iterations"] else f"{s['duration_s']} s")
             + " per backend x mode x batch size, interleaved"]
    for pk in (pk for pk in record["peaks"] if pk["gflops"]):
        rounds = ", ".join(f"batch {x['batch']}: {x['median_gflops']:.0f}" for x in pk["in_rounds"])
        lines.append(f"peak {pk['precision']} GEMM on {pk['device']}: {pk['gflops']:.0f} GFLOP/s ({pk['engine']}, "
                     f"{pk['matrix']}x{pk['matrix']}, measured before the timing)"
                     + (f"; in the rounds (ORT MatMul, median) {rounds}" if rounds else ""))
    for b in record["backends"]:  # OpenVINO's cold start (compile + first inference, smallest batch) by model cache
        cache = (b["cold_start"] or {}).get("model_cache")
        if cache:
            cells = [f"{label} {_fmt(c.get('session_s'), '.2f')} s + "
                     f"{_fmt(next(iter((c.get('first_inference_s') or {}).values()), None), '.3f')} s"
                     for label, c in zip(("no cache", "empty cache", "warm cache"), cache.values())]
            lines.append(f"cold start {b['key']} (compile + first inference): " + ", ".join(cells))
    return lines


def format_table(record: dict) -> str:
    """The results as a plain-text table for a terminal."""
    table = _text_table([list(_COLUMNS)] + [_row_cells(r) for r in record["results"]], left=4)
    return "\n".join(_header(record) + [""] + table + [_LEGEND] + [f"note: {n}" for n in record["notes"]])


def format_markdown(record: dict) -> str:
    out = ["# Benchmark: " + record["model"]["name"], "", f"`{record['command']}`", ""]
    out += [f"- {line}" for line in _header(record)] + [""]
    out += _md_table([list(_COLUMNS)] + [_row_cells(r) for r in record["results"]], left=4)
    out += ["", "## What was timed", ""] + [f"- **{k}**: {v}" for k, v in record["timed"].items()]
    out += ["", "## Notes", ""] + [f"- {n}" for n in record["notes"]] if record["notes"] else []
    failed = [b for b in record["backends"] if b["status"] != "ok"]
    out += ["", "## Backends that failed", ""] + [f"- {b['key']}: {b['error']}" for b in failed] if failed else []
    return "\n".join(out) + "\n"


def _plot(record: dict, plt):
    """Throughput vs batch size per backend and mode."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    series: dict[tuple, list] = {}
    for r in sorted(record["results"], key=lambda r: r["batch"]):
        series.setdefault((r["key"], r["mode"]), []).append((r["batch"], r["throughput_ips"]))
    for (key, mode), points in series.items():
        ts = [t for _, t in points]
        ax.errorbar([b for b, _ in points], [t["median"] for t in ts], capsize=3, marker="o",
                    yerr=[[t["median"] - t["min"] for t in ts], [t["max"] - t["median"] for t in ts]],
                    linestyle="-" if mode == "model" else "--",
                    label=f"{key} ({'model' if mode == 'model' else 'end to end'})")
    ax.set_xscale("log", base=2)
    ax.set_xticks(record["settings"]["batch_sizes"], [str(b) for b in record["settings"]["batch_sizes"]])
    ax.set(xlabel="batch size", ylabel="images / s (median over rounds, min-max bars)")
    ax.set_title(f"{record['model']['name']} on {record['machine']['gpu'] or record['machine']['cpu']}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return fig


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
            fig = (_plot_pareto if kind == "compare" else _plot)(record, plt)
            fig.tight_layout()
            try:
                with atomic_path(files["png"]) as tmp:
                    fig.savefig(tmp, dpi=120, format="png")
            finally:
                plt.close(fig)
    markdown = {"inference": format_markdown, "train": format_train_markdown, "compare": format_compare_markdown}
    atomic_write(files["markdown"], markdown[kind](record))
    atomic_write(files["json"], json.dumps(record, indent=2, default=str) + "\n")


def default_out_dir(name: str) -> str:
    """benchmarks/<name>-<YYYYmmdd-HHMMSS>: where a run writes when no out_dir is given."""
    return os.path.join("benchmarks", f"{name}-{_dt.datetime.now():%Y%m%d-%H%M%S}")


def publish(record: dict, plot: bool, quiet: bool, say: Optional[Callable] = None, also: str = "") -> None:
    """write_outputs, then (unless quiet) the record's table on stdout and what was written on stderr."""
    say = say or (lambda *a: None if quiet else print(*a, file=sys.stderr))
    write_outputs(record, plot, say)
    if not quiet:
        table = {"inference": format_table, "train": format_train_table, "compare": format_compare_table}
        print(table[record["kind"]](record))
        say(f"benchmark: wrote {', '.join(v for v in record['files'].values() if v)}{also}")


def format_train_table(record: dict) -> str:
    r, s, lo, lim = record["recipe"], record["settings"], record["loader"], record["limiter"]
    lines = [f"training benchmark: {r['name']} ({r['arch']}, {r['head']} head, {r['crop']} px, batch {r['batch_size']},"
             f" {r['optimizer']}) on {s['device']}, {s['threads']} threads"]
    lines += [f"  training step [{ph['phase']}: {', '.join(ph['groups'])}] {ph['precision']}: "
              f"{ph['throughput_ips']['median']:.1f} img/s "
              f"({ph['throughput_ips']['min']:.1f}-{ph['throughput_ips']['max']:.1f}), "
              f"{ph['latency_ms']['p50']:.0f} ms/step p50" for ph in record["phases"]]
    lines += [f"  data loader ({lo['workers']} workers): {lo['throughput_ips']['overall']:.1f} img/s over "
              f"{lo['batches']} batches (startup {lo['startup_s']:.2f}s)",
              f"  limited by the {lim['bound_by']}: {lim['advice']}"] + [f"  note: {n}" for n in record["notes"]]
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
    out = [["model", "backend", "file MB", "GFLOP/img", "top-1"] + [f"img/s b{b}" for b in sizes] + ["Pareto"]]
    for (model, key), cells in sorted(by_line.items(), key=lambda kv: -(kv[1].get(pb) or {}).get("ips", 0.0)):
        one = next(iter(cells.values()))
        out.append([model, key, _fmt(one["file_bytes"], ".3g", 1e-6), _fmt(one["flops_per_image"], ".3g", 1e-9),
                    _fmt(one["top1"], ".2f")] + [_ips(cells[b]["ips"]) if b in cells else "-" for b in sizes]
                   + [{True: "*", False: "", None: "-"}[(cells.get(pb) or {}).get("pareto")]])
    return out


def _compare_legend(record: dict) -> str:
    s = record["settings"]
    acc = f"top-1 on the {s['split']} split of {s['data']}" if s["data"] else "top-1 needs --data"
    return (f"img/s: inference only, median over {s['rounds']} rounds, all models interleaved in the same rounds. "
            f"{acc}. Pareto (*): at batch {s['pareto_batch']}, no other row is at least as fast and as accurate "
            "and better in one.")


def format_compare_table(record: dict) -> str:
    """The comparison as a plain-text table for a terminal."""
    return "\n".join([f"comparing {len(record['models'])} models on {record['machine']['cpu']}, "
                      f"{record['settings']['threads']} threads", ""] + _text_table(_compare_lines(record), left=2)
                     + [_compare_legend(record)] + [f"note: {n}" for n in record["notes"]])


def format_compare_markdown(record: dict) -> str:
    out = ["# Which model for this box", "", f"`{record['command']}`", "",
           f"- machine {record['machine']['cpu']}, {record['settings']['threads']} threads", ""]
    out += _md_table(_compare_lines(record), left=2) + ["", _compare_legend(record), "", "## Models", ""]
    out += [f"- **{m['name']}**: `{m['path']}` ({m['arch'] or '?'}, {m['classes'] or '?'} classes); "
            f"its full record: `{m['record']}`" for m in record["models"]]
    out += ["", "## Notes", ""] + [f"- {n}" for n in record["notes"]] if record["notes"] else []
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
    ax.set(xlabel=f"images / s at batch {pb} (inference only; median, min-max bars)",
           ylabel=f"top-1 % ({record['settings']['split']} split)")
    ax.set_title(f"Which model for {record['machine']['cpu']}", fontsize=9)
    ax.grid(True, alpha=0.3)
    return fig
