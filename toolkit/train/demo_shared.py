"""What the two transfer demos share (`toolkit demo` on digits, `toolkit demo --imagenet` on
Fashion-MNIST): finding a recipe, one quiet training run, scoring its final weights, and the report:
the table (labels per class | transfer | scratch | gain, each mean ± std over seeds; optionally the
steps each arm used), the machine line printed under every table, the check that scratch does not get
worse as labels grow, demo.json, demo.md and demo.png (test top-1 against labels per class)."""
from __future__ import annotations

import json
import os
import shlex
import statistics
import time

import torch

from toolkit.artifacts import atomic_path, atomic_write
from toolkit.datasets import write_samples
from toolkit.errors import UserError
from toolkit.runtime.benchmark.machine import machine_info
from toolkit.train.evaluate import evaluate_checkpoint
from toolkit.train.loop import train

ARMS = ("transfer", "scratch")
TABLE_HEADER = ["| labels per class | transfer | scratch | transfer gain |", "|---|---|---|---|"]


def recipe_path(name: str) -> str:
    """recipes/<name> in the working directory, else beside the installed package (a source checkout)."""
    for root in (os.getcwd(), os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))):
        path = os.path.join(root, "recipes", name)
        if os.path.isfile(path):
            return path
    raise UserError(f"recipes/{name}: not found; run the demo from the toolkit source folder")


def train_quietly(recipe, evaluate_test: bool = True, scan: bool = True, resumable: bool = True) -> float:
    """Train `recipe` (replacing an earlier run of the same name) without log lines; -> seconds. `scan=False`:
    no pre-flight scan and no data_health.json; `resumable=False`: last.pt only at the end
    (toolkit.train.loop.train)."""
    started = time.time()
    train(recipe, overwrite=True, quiet=True, evaluate_test=evaluate_test, report=False, scan=scan,
          resumable=resumable)
    return time.time() - started


def final_test_top1(run_dir: str, batch_size: int = 32) -> float:
    """Test top-1 of the run's final weights (last.pt), not of the epoch validation liked best. The data is not
    scanned again here (scan=False): the run scanned it when it trained."""
    last = os.path.join(run_dir, "checkpoints", "last.pt")
    return evaluate_checkpoint(last, split="test", batch_size=batch_size, quiet=True, scan=False)["top1"]


def best_test_top1(run_dir: str, batch_size: int = 32) -> float:
    """Test top-1 of the weights validation liked best (best.pt): the demos that stop early score these."""
    best = os.path.join(run_dir, "checkpoints", "best.pt")
    return evaluate_checkpoint(best, split="test", batch_size=batch_size, quiet=True, scan=False)["top1"]


def summarise(results: list, labels_per_class: list) -> list:
    """Per labels-per-class value: each arm's mean, std (population), min, max and runs, and the gain."""
    rows = []
    for k in labels_per_class:
        row = {"labels_per_class": k}
        for arm in ARMS:
            accs = [r["test_top1"] for r in results if r["arm"] == arm and r["labels_per_class"] == k]
            row[arm] = {"mean": statistics.mean(accs), "std": statistics.pstdev(accs), "min": min(accs),
                        "max": max(accs), "runs": accs}
        row["gain"] = row["transfer"]["mean"] - row["scratch"]["mean"]
        rows.append(row)
    return rows


def add_steps(rows: list, results: list) -> list:
    """Each arm's optimizer steps per run (mean over seeds, rounded) into `rows` (from summarise), for
    the table's steps columns; results carry "steps"."""
    for row in rows:
        for arm in ARMS:
            k = row["labels_per_class"]
            steps = [r["steps"] for r in results if r["arm"] == arm and r["labels_per_class"] == k]
            row[arm]["steps"] = round(statistics.mean(steps))
    return rows


def table_lines(rows: list, steps: bool = False) -> list:
    """The markdown table both demos print; `steps`: two more columns, each arm's steps per run (add_steps)."""
    lines = list(TABLE_HEADER)
    if steps:
        lines = [lines[0] + " transfer steps | scratch steps |", lines[1] + "---|---|"]
    for row in rows:
        t, s = row["transfer"], row["scratch"]
        line = (f"| {row['labels_per_class']} | {t['mean']:.1f} ± {t['std']:.1f}% | "
                f"{s['mean']:.1f} ± {s['std']:.1f}% | {row['gain']:+.1f} points |")
        lines.append(line + (f" {t['steps']} | {s['steps']} |" if steps else ""))
    return lines


def scratch_drops(rows: list) -> list:
    """Where scratch gets worse as labels grow by more than its seeds' spread (the two stds summed): a
    sign of a starved budget, not of noise. -> [(fewer labels, more labels, points lost)]."""
    ordered = sorted(rows, key=lambda row: row["labels_per_class"])
    drops = []
    for a, b in zip(ordered, ordered[1:]):
        lost = a["scratch"]["mean"] - b["scratch"]["mean"]
        if lost > a["scratch"]["std"] + b["scratch"]["std"]:
            drops.append((a["labels_per_class"], b["labels_per_class"], round(lost, 1)))
    return drops


def scratch_check_line(rows: list) -> str:
    """One line under the table: whether scratch kept up with the labels (scratch_drops)."""
    drops = scratch_drops(rows)
    if not drops:
        return "check: scratch does not get worse as labels grow (beyond its seeds' spread)"
    said = "; ".join(f"{a} -> {b} labels: -{lost} points" for a, b, lost in drops)
    return f"warning: scratch gets worse as labels grow, beyond its seeds' spread ({said}): raise the step cap"


def _cpu_family_model() -> str:
    """x86 "family F model M" from /proc/cpuinfo (a generic model name says little); '' elsewhere."""
    fields = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = (x.strip() for x in line.partition(":"))
                if key in ("cpu family", "model") and key not in fields:
                    fields[key] = value
                if not line.strip() and fields:
                    break
    except OSError:
        return ""
    return f"family {fields['cpu family']} model {fields['model']}" if len(fields) == 2 else ""


def machine_line(threads: str = "") -> str:
    """What the table ran on, printed under it: CPU, its ISA, cores and torch's threads (`threads`: how the
    runs used them, when not this process's thread count). The numbers move across machines (docs/demo.md
    says how far and why), so every table names its machine."""
    m = machine_info()
    family = _cpu_family_model()
    return (f"machine: {m.cpu}" + (f" ({family})" if family else "") + f", {m.isa['summary']}, "
            f"{m.usable_cpus} usable cores, torch {torch.__version__}, "
            + (threads or f"{torch.get_num_threads()} threads"))


def plot_rows(path: str, rows: list, title: str) -> None:
    """demo.png: test top-1 (mean, with ± std bars) of both arms against labels per class (log axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [row["labels_per_class"] for row in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, style in zip(ARMS, ("o-", "s--")):
        ax.errorbar(ks, [row[arm]["mean"] for row in rows], yerr=[row[arm]["std"] for row in rows],
                    fmt=style, capsize=4, label=arm)
    if len(set(ks)) > 1 and min(ks) > 0:
        ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set(xlabel="labels per class", ylabel="test top-1 (%)", title=title, ylim=(0, 100))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def write_report(out_dir: str, report: str, record: dict, plot_title: str) -> list:
    """demo.json, demo.md and demo.png in `out_dir`; -> their paths."""
    paths = [os.path.join(out_dir, name) for name in ("demo.json", "demo.md", "demo.png")]
    atomic_write(paths[0], json.dumps(record, indent=2) + "\n")
    atomic_write(paths[1], report + "\n")
    plot_rows(paths[2], record["rows"], plot_title)
    return paths


def print_next_steps(recipe, showcase_run: str, out_dir: str) -> None:
    """Write the samples of `recipe`'s target data and print the commands to try next."""
    samples = write_samples(recipe, os.path.join(out_dir, "samples"))
    print(next_steps(showcase_run, samples[0] if samples else None))


def next_steps(showcase_run: str, sample_image) -> str:
    """What to try after the demo. With no path, export picks the newest run at any depth under runs/; the
    demo trains `showcase_run` (a transfer run) last, so that is the one."""
    image = sample_image or "PHOTO.jpg"
    return "\n".join([
        "", f"next, with the newest run (a transfer run; or name one, e.g. toolkit export {shlex.quote(showcase_run)}):",
        "  toolkit export                 # a verified ONNX file in exports/, labels and preprocessing inside",
        "  toolkit export --int8          # ... plus an INT8 twin, checked against an accuracy budget",
        f"  toolkit predict {shlex.quote(str(image))}",
        "  toolkit serve-local            # the newest export over HTTP, with a page at http://127.0.0.1:8000",
        "  toolkit benchmark              # its throughput and latency on this machine",
    ])
