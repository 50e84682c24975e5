"""`toolkit demo --imagenet`: real ImageNet transfer, offline, on Fashion-MNIST.

The transfer arm is EfficientNet-Lite0 with real ImageNet weights (recipes/fashion-transfer.yaml); the
scratch arm is the same net from random weights (recipes/fashion-scratch.yaml). Both see the same data,
augmentation, 64 px input, AdamW and the same budget: about `steps` optimizer steps per run, so the
epochs follow from labels per class (K): 10K images make ceil(10K / batch) steps an epoch.

Protocol, the same for both arms:
1. Learning rate: each arm trains once per rate of its grid (the same three rates, a factor ~3 apart) at
   `select_labels` per class with the first seed; the rate with the best validation top-1 (the final
   weights, on 600 images held out of train) is that arm's rate for every run. When the best is at an
   end of the grid, the grid grows one step that way (at most MAX_EXTEND times) for that arm.
2. Runs: every K and seed, both arms, at the chosen rates (the selection run at the chosen rate is reused).
3. Score: test top-1 of the final weights (last.pt) on the fixed 2,000-image subset of t10k.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field

from toolkit import recipe as recipe_mod
from toolkit.datasets import load_dataset
from toolkit.datasets.fashion import CLASSES
from toolkit.errors import UserError
from toolkit.train.demo_shared import (final_test_top1, print_next_steps, recipe_path, summarise, table_lines,
                                       train_quietly, write_report)
from toolkit.train.demo_trust import trust_table

RECIPES = {"transfer": "fashion-transfer.yaml", "scratch": "fashion-scratch.yaml"}
ORDER = ("scratch", "transfer")  # transfer last: the newest run (what `toolkit export` picks) is a transfer run
MAX_EXTEND = 2  # grid steps a sweep may add beyond either end (see _next_rate)


@dataclass
class ImagenetDemoOptions:
    """What `toolkit demo --imagenet` runs."""
    seeds: list = field(default_factory=lambda: [0, 1, 2])  # every (K, arm) trains once per seed
    labels_per_class: list = field(default_factory=lambda: [1, 5, 20])  # K: training labels kept per class
    steps: int = 40  # optimizer steps per run, both arms (epochs = steps / steps per epoch, at least 1)
    transfer_lrs: list = field(default_factory=lambda: [1e-3, 3e-3, 1e-2])  # the transfer arm's head-rate grid
    scratch_lrs: list = field(default_factory=lambda: [1e-3, 3e-3, 1e-2])  # the scratch arm's (same breadth)
    select_labels: int = 5  # the K at which each arm's rate is picked, with seeds[0]
    quick: bool = False  # a smoke run: 4 steps, no sweep (each grid's middle rate)
    out_dir: str = "runs/demo-imagenet"  # every run folder, demo.md, demo.json and demo.png
    overrides: list = field(default_factory=list)  # KEY=VALUE for both recipes (e.g. model.arch=...)

    def check(self) -> None:
        if not self.seeds or not self.labels_per_class:
            raise UserError("demo --imagenet: expected at least one seed and one labels-per-class value")
        if min(self.labels_per_class) < 1 or self.select_labels < 1:
            raise UserError(f"demo --imagenet: labels per class {self.labels_per_class} (select at "
                            f"{self.select_labels}); expected positive integers")
        if self.steps < 1:
            raise UserError(f"demo --imagenet: steps {self.steps}; expected at least 1")
        if not self.transfer_lrs or not self.scratch_lrs or min(self.transfer_lrs + self.scratch_lrs) <= 0:
            raise UserError("demo --imagenet: expected a non-empty grid of positive learning rates for each arm")


def _grid(opts: ImagenetDemoOptions, arm: str) -> list:
    lrs = list(opts.transfer_lrs if arm == "transfer" else opts.scratch_lrs)
    return [lrs[len(lrs) // 2]] if opts.quick else lrs


def _steps(opts: ImagenetDemoOptions) -> int:
    return 4 if opts.quick else opts.steps


def _load(arm: str, k: int, seed: int, lr: float, name: str, opts: ImagenetDemoOptions, epochs=None):
    """The arm's recipe for one run; `epochs` None: derived from the step budget."""
    base = [f"out_dir={opts.out_dir}", f"name={name}", f"seed={seed}", f"data.labels_per_class={k}",
            f"train.lr={lr}", *opts.overrides]
    recipe = recipe_mod.load(recipe_path(RECIPES[arm]), base)
    if epochs is None:
        classes = len(recipe.data.classes or CLASSES)
        per_epoch = math.ceil(k * classes / recipe.train.batch_size)
        epochs = max(1, round(_steps(opts) / per_epoch))
    # Validate and checkpoint once, at the end: the runs are scored on their final weights.
    return recipe_mod.load(recipe_path(RECIPES[arm]), base + [f"train.epochs={epochs}", f"train.eval_every={epochs}",
                                                              f"train.save_every={epochs}"])


def _final_val_top1(run_dir: str) -> float:
    """Validation top-1 of the final weights: the last evaluated record of metrics.jsonl."""
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    return [r for r in records if r.get("val_top1") is not None][-1]["val_top1"]


def _run(arm: str, k: int, seed: int, lr: float, name: str, opts: ImagenetDemoOptions) -> dict:
    recipe = _load(arm, k, seed, lr, name, opts)
    seconds = train_quietly(recipe, evaluate_test=False)  # scored on last.pt below
    return {"arm": arm, "labels_per_class": k, "seed": seed, "lr": lr, "run": recipe.run_dir,
            "epochs": recipe.train.epochs, "val_top1": _final_val_top1(recipe.run_dir),
            "test_top1": final_test_top1(recipe.run_dir, batch_size=100), "seconds": round(seconds, 1)}


def _line(r: dict, prefix: str) -> str:
    return (f"      {prefix}{r['arm']:8s} {r['labels_per_class']:3d} labels/class  seed {r['seed']}  lr {r['lr']:g}  "
            f"val {r['val_top1']:5.1f}%  test {r['test_top1']:5.1f}%  ({r['seconds']:.0f}s, {r['epochs']} epochs)")


def _next_rate(runs: list, extended: int) -> float | None:
    """When the best rate sits at an end of the grid, one grid step beyond it (up to MAX_EXTEND times):
    an optimum at the edge says the grid was too narrow for that arm, not that the arm is worse."""
    rates = sorted(r["lr"] for r in runs)
    if len(rates) < 2 or extended >= MAX_EXTEND:
        return None
    best = max(runs, key=lambda r: (r["val_top1"], -r["lr"]))["lr"]  # a tie goes to the lower rate
    ratio = rates[1] / rates[0]
    if best == rates[-1]:
        return float(f"{best * ratio:.3g}")
    return float(f"{best / ratio:.3g}") if best == rates[0] else None


def select_lrs(opts: ImagenetDemoOptions) -> tuple:
    """Each arm's rate, by validation top-1 at select_labels and seeds[0]; -> ({arm: lr}, the sweep's runs)."""
    k, seed = opts.select_labels, opts.seeds[0]
    sweep, chosen = [], {}
    for arm in ORDER:
        runs, extended = [], 0
        todo = _grid(opts, arm)
        while todo:
            lr = todo.pop(0)
            runs.append(_run(arm, k, seed, lr, f"{arm}-k{k}-s{seed}-lr{lr:g}", opts))
            print(_line(runs[-1], ""), flush=True)
            if not todo:
                beyond = _next_rate(runs, extended)
                todo, extended = ([beyond], extended + 1) if beyond is not None else ([], extended)
        chosen[arm] = max(runs, key=lambda r: (r["val_top1"], -r["lr"]))["lr"]
        sweep += sorted(runs, key=lambda r: r["lr"])
    return chosen, sweep


def _target_runs(opts: ImagenetDemoOptions, chosen: dict, sweep: list) -> list:
    """Both arms at every K and seed; the sweep's run at the chosen rate stands in for its (K, seed)."""
    reused = {(r["arm"], r["labels_per_class"], r["seed"]): r for r in sweep if r["lr"] == chosen[r["arm"]]}
    plan = [(k, seed, arm) for k in opts.labels_per_class for seed in opts.seeds for arm in ORDER]
    todo = [p for p in plan if (p[2], p[0], p[1]) not in reused]
    print(f"[2/3] Fashion-MNIST, {opts.labels_per_class} labels per class, seeds {opts.seeds}: transfer vs scratch "
          f"({len(todo)} runs, {len(plan) - len(todo)} reused from the sweep)", flush=True)
    results, done = [], 0
    for k, seed, arm in plan:
        if (arm, k, seed) in reused:
            results.append(reused[(arm, k, seed)])
            continue
        results.append(_run(arm, k, seed, chosen[arm], f"{arm}-k{k}-s{seed}", opts))
        done += 1
        print(_line(results[-1], f"{done:2d}/{len(todo)}  "), flush=True)
    return results


def _sweep_lines(sweep: list, chosen: dict, k: int, seed: int) -> list:
    lines = [f"Learning rates: validation top-1 of the final weights at {k} labels per class, seed {seed} "
             "(the chosen rate in bold):", "", "| arm | " + " | ".join(["lr", "val top-1", "test top-1"]) + " |",
             "|---|---|---|---|"]
    for r in sweep:
        mark = "**" if r["lr"] == chosen[r["arm"]] else ""
        lines.append(f"| {r['arm']} | {mark}{r['lr']:g}{mark} | {r['val_top1']:.1f}% | {r['test_top1']:.1f}% |")
    return lines


def run_imagenet_demo(opts: ImagenetDemoOptions) -> dict:
    """Sweep, runs, table; writes demo.md, demo.json and demo.png into opts.out_dir."""
    started = time.time()
    opts.check()
    probe = _load("transfer", opts.select_labels, opts.seeds[0], _grid(opts, "transfer")[0], "probe", opts, epochs=1)
    arch, px = probe.model.arch, probe.preprocess.crop
    test_images = len(load_dataset(probe, scan=False).test)  # also stops here when the files are missing
    print(f"[1/3] learning rates: each arm's grid at {opts.select_labels} labels per class, seed {opts.seeds[0]}, "
          f"picked by validation top-1 ({arch}, {px} px, {probe.train.optimizer}, ~{_steps(opts)} steps a run)",
          flush=True)
    chosen, sweep = select_lrs(opts)
    print(f"      chosen: transfer lr {chosen['transfer']:g}, scratch lr {chosen['scratch']:g}", flush=True)
    results = _target_runs(opts, chosen, sweep)
    rows = summarise(results, opts.labels_per_class)
    wall = time.time() - started
    lines = [f"[3/3] Fashion-MNIST test top-1 (a fixed {test_images:,} of t10k), mean ± std over seeds "
             + ", ".join(map(str, opts.seeds)), "", *table_lines(rows), "",
             f"transfer: {arch} from ImageNet weights; scratch: the same net from random weights; both {px} px, "
             f"{probe.train.optimizer}, ~{_steps(opts)} steps a run, rate picked on validation (transfer "
             f"{chosen['transfer']:g}, scratch {chosen['scratch']:g}); demo wall time {wall / 60:.1f} min"]
    showcase = [r["run"] for r in results if r["arm"] == "transfer"][-1]  # the last one trained, unless reused
    trust, trusted = trust_table(showcase)  # calibration and the "unknown" answer vs scikit-learn's digits
    report = "\n".join([*lines, "", *trust])
    print(report)
    record = {"arch": arch, "input_px": px, "steps": _steps(opts), "test_images": test_images,
              "select": {"labels_per_class": opts.select_labels, "seed": opts.seeds[0], "chosen": chosen,
                         "grids": {arm: _grid(opts, arm) for arm in ORDER}, "runs": sweep},
              "rows": rows, "runs": results, "wall_time_s": round(wall, 1), "quick": opts.quick, "trust": trusted}
    markdown = "\n".join([report, "", *_sweep_lines(sweep, chosen, opts.select_labels, opts.seeds[0])])
    paths = write_report(opts.out_dir, markdown, record, f"Fashion-MNIST: {arch} ImageNet transfer vs scratch")
    print(f"written: {', '.join(paths)}; every run's curves and checkpoints are in {opts.out_dir}/")
    print_next_steps(probe, showcase, opts.out_dir)
    return record
