"""The comparison of several models (compare.py) as a terminal table, compare.md and pareto.png.

Light module: the standard library only (matplotlib is imported for the plot alone).
"""
from __future__ import annotations

import json
import os
from typing import Callable, Optional

from toolkit.artifacts import atomic_write
from toolkit.errors import first_line
from toolkit.runtime.benchmark.report import _fmt, _ips, save_figure


def _lines(record: dict) -> list:
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


def _legend(record: dict) -> str:
    s = record["settings"]
    acc = f"top-1 on the {s['split']} split of {s['data']}" if s["data"] else "top-1 needs --data"
    return (f"img/s: inference only, median over {s['rounds']} rounds, all models interleaved in the same rounds. "
            f"{acc}. Pareto (*): at batch {s['pareto_batch']}, no other row is at least as fast and as accurate "
            "and better in one.")


def format_compare_table(record: dict) -> str:
    """The comparison as a plain-text table for a terminal."""
    rows = _lines(record)
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = [f"comparing {len(record['models'])} models on {record['machine']['cpu']}, "
             f"{record['settings']['threads']} threads", ""]
    for j, row in enumerate(rows):
        lines.append("  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths))))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(_legend(record))
    lines += [f"note: {n}" for n in record["notes"]]
    return "\n".join(lines)


def format_compare_markdown(record: dict) -> str:
    rows = _lines(record)
    out = ["# Which model for this box", "", f"`{record['command']}`", "",
           f"- machine {record['machine']['cpu']}, {record['settings']['threads']} threads", ""]
    out += ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" if i < 2 else "---:"
                                                            for i in range(len(rows[0]))) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows[1:]]
    out += ["", _legend(record), "", "## Models", ""]
    out += [f"- **{m['name']}**: `{m['path']}` ({m['arch'] or '?'}, {m['classes'] or '?'} classes); "
            f"its full record: `{m['record']}`" for m in record["models"]]
    if record["notes"]:
        out += ["", "## Notes", ""] + [f"- {n}" for n in record["notes"]]
    return "\n".join(out) + "\n"


def _plot_pareto(record: dict, path: str) -> Optional[str]:
    """Top-1 against img/s at the Pareto batch, the Pareto front joined; None when done, else why not."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:  # noqa: BLE001 - matplotlib is an optional (train) extra
        return f"plot skipped: matplotlib is not installed ({first_line(exc, 300)}); pip install 'toolkit[train]'"
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
    save_figure(fig, path)
    return None


def write_compare_outputs(record: dict, out_dir: str, plot: bool, say: Callable) -> None:
    """compare.json, compare.md and (with --data and matplotlib) pareto.png, each written atomically."""
    os.makedirs(out_dir, exist_ok=True)
    if plot and record["files"]["png"]:
        skipped = _plot_pareto(record, record["files"]["png"])
        if skipped:
            record["files"]["png"] = None
            record["notes"].append(skipped)
            say(f"benchmark: {skipped}")
    atomic_write(record["files"]["markdown"], format_compare_markdown(record))
    atomic_write(record["files"]["json"], json.dumps(record, indent=2, default=str) + "\n")
