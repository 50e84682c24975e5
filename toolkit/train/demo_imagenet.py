"""`toolkit demo --imagenet`: real ImageNet transfer, offline, on Fashion-MNIST.

The transfer arm is EfficientNet-Lite0 with real ImageNet weights (recipes/fashion-transfer.yaml); the
scratch arm is the same net from random weights (recipes/fashion-scratch.yaml). Both see the same data,
augmentation, input size, AdamW and the same budget rule: train until validation top-1 stops improving
(`patience` validations, about every `eval_steps` steps), at most `steps` optimizer steps: a cap both
arms share. The transfer arm starts with `probe_steps` of a linear probe (the head alone) inside that cap.

Protocol, the same for both arms:
1. Learning rate, per arm and per labels per class (K): with the first seed, each arm trains once per
   rate of its grid; the best validation top-1 (of best.pt) wins, and rates within `tie_points` of it
   count as a tie, broken by the lower validation loss (then the lower rate): a near-tie must not flip
   with a kernel's rounding. When the pick is at an end of the grid, beating its neighbour by more than
   `tie_points`, the grid grows one step that way (at most MAX_EXTEND times) for that arm.
2. Runs: the other seeds at each (arm, K)'s chosen rate (the sweep's run stands in for the first seed).
3. Score: test top-1 of best.pt (the epoch validation liked best) on the fixed 2,000-image subset of t10k.
Runs train several at once (toolkit.train.demo_pool), each on one torch thread; the sweeps and seeds of
different (arm, K) pairs interleave, and the table keeps a fixed order.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from toolkit import recipe as recipe_mod
from toolkit.artifacts import mark_newest
from toolkit.datasets import load_dataset
from toolkit.datasets.fashion import CLASSES
from toolkit.errors import UserError
from toolkit.train.demo_shared import (add_steps, best_test_top1, machine_line, print_next_steps, recipe_path,
                                       scratch_check_line, scratch_drops, summarise, table_lines, train_quietly,
                                       write_report)
from toolkit.train.demo_pool import RUNS_ON, RunPool, worker_count
from toolkit.train.demo_trust import trust_table
from toolkit.train.run_dir import read_metrics

RECIPES = {"transfer": "fashion-transfer.yaml", "scratch": "fashion-scratch.yaml"}
ORDER = ("scratch", "transfer")  # transfer last: the newest run (what `toolkit export` picks) is a transfer run
MAX_EXTEND = 2  # grid steps a sweep may add beyond either end (see _next_rate)


@dataclass
class ImagenetDemoOptions:
    """What `toolkit demo --imagenet` runs."""
    seeds: list = field(default_factory=lambda: [0, 1, 2])  # every (K, arm) trains once per seed
    labels_per_class: list = field(default_factory=lambda: [1, 5, 20])  # K: training labels kept per class
    steps: int = 150  # the step cap both arms share; a run stops earlier when validation top-1 stops improving
    eval_steps: int = 15  # validate about every this many steps (whole epochs: at least one)
    patience: int = 3  # stop after this many validations without a better top-1
    probe_steps: int = 15  # transfer: the head alone first (a linear probe), then everything; within the cap
    transfer_lrs: list = field(default_factory=lambda: [1e-3, 3e-3, 1e-2])  # the transfer arm's head-rate grid
    scratch_lrs: list = field(default_factory=lambda: [1e-3, 3e-3, 1e-2])  # the scratch arm's (same breadth)
    tie_points: float = 1.0  # validation top-1 this close to the best is a tie: the lower validation loss wins
    quick: bool = False  # a smoke run: a 4-step cap, no sweep (each grid's middle rate)
    workers: int = 0  # runs trained at once, each in its own process on one torch thread; 0: one per core
    out_dir: str = "runs/demo-imagenet"  # every run folder, demo.md, demo.json and demo.png
    overrides: list = field(default_factory=list)  # KEY=VALUE for both recipes (e.g. model.arch=...)

    def check(self) -> None:
        if not self.seeds or not self.labels_per_class:
            raise UserError("demo --imagenet: expected at least one seed and one labels-per-class value")
        if len(set(self.labels_per_class)) != len(self.labels_per_class):
            raise UserError(f"demo --imagenet: labels per class {self.labels_per_class}; expected each value once")
        if min(self.labels_per_class) < 1:
            raise UserError(f"demo --imagenet: labels per class {self.labels_per_class}; expected positive integers")
        if self.steps < 1:
            raise UserError(f"demo --imagenet: steps {self.steps}; expected at least 1")
        if self.eval_steps < 1 or self.patience < 1 or self.probe_steps < 0 or self.tie_points < 0:
            raise UserError(f"demo --imagenet: eval_steps {self.eval_steps}, patience {self.patience}, probe_steps "
                            f"{self.probe_steps}, tie_points {self.tie_points}; expected eval_steps and patience "
                            "at least 1, probe_steps and tie_points at least 0")
        if self.workers < 0:
            raise UserError(f"demo --imagenet: workers {self.workers}; expected 0 (one per core) or more")
        if not self.transfer_lrs or not self.scratch_lrs or min(self.transfer_lrs + self.scratch_lrs) <= 0:
            raise UserError("demo --imagenet: expected a non-empty grid of positive learning rates for each arm")


def _grid(opts: ImagenetDemoOptions, arm: str) -> list:
    lrs = list(opts.transfer_lrs if arm == "transfer" else opts.scratch_lrs)
    return [lrs[len(lrs) // 2]] if opts.quick else lrs


def _steps(opts: ImagenetDemoOptions) -> int:
    return 4 if opts.quick else opts.steps


def budget(cap: int, per_epoch: int, eval_steps: int, probe_steps: int) -> dict:
    """Epochs within a cap of `cap` steps at `per_epoch` steps an epoch: the epochs (never past the cap,
    but at least one, even where one epoch is longer than the cap), validation every `eval_every` epochs,
    and the linear probe's epochs (0: none; it leaves at least one epoch to fine-tune)."""
    epochs = max(1, cap // per_epoch)
    eval_every = max(1, min(epochs, round(eval_steps / per_epoch)))
    probe = min(max(1, round(probe_steps / per_epoch)), epochs - 1) if probe_steps else 0
    return {"epochs": epochs, "eval_every": eval_every, "probe_epochs": probe}


def _load(arm: str, k: int, seed: int, lr: float, name: str, opts: ImagenetDemoOptions, epochs=None):
    """The arm's recipe for one run; `epochs` None: the budget's (early stopping within the step cap)."""
    base = [f"out_dir={opts.out_dir}", f"name={name}", f"seed={seed}", f"data.labels_per_class={k}",
            f"train.lr={lr}", "train.tensorboard=false", *opts.overrides]  # 30-odd short runs: no event files
    recipe = recipe_mod.load(recipe_path(RECIPES[arm]), base)
    if epochs is not None:
        return recipe_mod.load(recipe_path(RECIPES[arm]), base + [f"train.epochs={epochs}"])
    classes = len(recipe.data.classes or CLASSES)
    per_epoch = math.ceil(k * classes / recipe.train.batch_size)
    probe = opts.probe_steps if recipe.train.strategy == "finetune" and not opts.quick else 0
    b = budget(_steps(opts), per_epoch, opts.eval_steps, probe)
    # best.pt is written at each better validation; last.pt only at the end (it is not scored).
    return recipe_mod.load(recipe_path(RECIPES[arm]), base + [
        f"train.epochs={b['epochs']}", f"train.eval_every={b['eval_every']}", f"train.save_every={b['epochs']}",
        f"train.early_stopping={opts.patience}", f"train.freeze_epochs={b['probe_epochs']}"])


def best_scores(run_dir: str) -> dict:
    """From a finished run's metrics.jsonl: the best validation's top-1, loss and step, and the steps
    trained (early stopping may end a run before its cap)."""
    records = read_metrics(run_dir)
    evaluated = [r for r in records if r.get("val_top1") is not None]
    best = max(evaluated, key=lambda r: (r["val_top1"], -r["epoch"]))  # the first epoch to reach it: best.pt's
    return {"val_top1": best["val_top1"], "val_loss": best["val_loss"], "best_epoch": best["epoch"],
            "epochs_run": records[-1]["epoch"]}


def _run(arm: str, k: int, seed: int, lr: float, name: str, opts: ImagenetDemoOptions) -> dict:
    """One run, scored on validation; the runs that count get their test top-1 from _scored."""
    recipe = _load(arm, k, seed, lr, name, opts)
    # best.pt is scored on test once its rate is chosen. The data was scanned once, before the runs; a run
    # scans again only to drop duplicates (data.dedupe, an override), which needs the scan's fingerprints.
    # A demo run is trained again, never resumed: last.pt is written once, at its end.
    seconds = train_quietly(recipe, evaluate_test=False, scan=recipe.data.dedupe, resumable=False)
    scores = best_scores(recipe.run_dir)
    per_epoch = math.ceil(k * len(recipe.data.classes or CLASSES) / recipe.train.batch_size)
    return {"arm": arm, "labels_per_class": k, "seed": seed, "lr": lr, "run": recipe.run_dir,
            "epochs": scores["epochs_run"], "steps": scores["epochs_run"] * per_epoch,
            "best_step": scores["best_epoch"] * per_epoch, "cap": _steps(opts),
            "val_top1": scores["val_top1"], "val_loss": scores["val_loss"], "seconds": round(seconds, 1)}


def _scored(run: dict) -> dict:
    return {**run, "test_top1": best_test_top1(run["run"])}


def _line(r: dict, prefix: str) -> str:
    test = f"  test {r['test_top1']:5.1f}%" if "test_top1" in r else ""
    return (f"      {prefix}{r['arm']:8s} {r['labels_per_class']:3d} labels/class  seed {r['seed']}  lr {r['lr']:g}  "
            f"val {r['val_top1']:5.1f}% (loss {r['val_loss']:.3f}){test}  ({r['seconds']:.0f}s, "
            f"{r['steps']} of {r['cap']} steps, best at {r['best_step']})")


def pick_rate(runs: list, tie_points: float) -> float:
    """The rate whose best validation top-1 is highest; rates within `tie_points` of it tie, and the
    lower validation loss breaks the tie (then the lower rate): a one-image difference in top-1, which
    a different kernel's rounding can flip, does not decide the rate alone."""
    top = max(r["val_top1"] for r in runs)
    tied = [r for r in runs if r["val_top1"] >= top - tie_points]
    return min(tied, key=lambda r: (r["val_loss"], r["lr"]))["lr"]


def _next_rate(runs: list, extended: int, tie_points: float = 0.0) -> float | None:
    """When the picked rate sits at an end of the grid and beats its neighbour by more than `tie_points`, one
    grid step beyond it (up to MAX_EXTEND times): an optimum at the edge says the grid was too narrow for that
    arm, not that the arm is worse. An edge tied with its neighbour has its optimum between them, inside."""
    by_rate = {r["lr"]: r for r in runs}
    rates = sorted(by_rate)
    if len(rates) < 2 or extended >= MAX_EXTEND:
        return None
    best = pick_rate(runs, tie_points)
    if best not in (rates[0], rates[-1]):
        return None
    inner = rates[-2] if best == rates[-1] else rates[1]
    if by_rate[best]["val_top1"] <= by_rate[inner]["val_top1"] + tie_points:
        return None
    step = rates[1] / rates[0]
    return float(f"{best * step:.3g}") if best == rates[-1] else float(f"{best / step:.3g}")


def _run_and_score(arm: str, k: int, seed: int, lr: float, name: str, opts: ImagenetDemoOptions) -> dict:
    return _scored(_run(arm, k, seed, lr, name, opts))


def _sweep_arm(pool: RunPool, opts: ImagenetDemoOptions, arm: str, k: int, seed: int) -> tuple:
    """One arm's rate at K: its grid (grown at an edge), each rate once; -> (rate, the runs by rate)."""
    runs, extended, todo = [], 0, _grid(opts, arm)
    while todo:
        futures = [pool.submit(_run, arm, k, seed, lr, f"{arm}-k{k}-s{seed}-lr{lr:g}", opts) for lr in todo]
        for future in futures:
            runs.append(future.result())
            print(_line(runs[-1], "sweep "), flush=True)
        beyond = _next_rate(runs, extended, opts.tie_points)
        todo, extended = ([beyond], extended + 1) if beyond is not None else ([], extended)
    return pick_rate(runs, opts.tie_points), sorted(runs, key=lambda r: r["lr"])


def _arm_at_k(pool: RunPool, opts: ImagenetDemoOptions, arm: str, k: int, after_last=None) -> dict:
    """One arm at one K: the rate sweep with the first seed, then the other seeds at the chosen rate; the
    sweep's run at that rate stands in for the first seed. Only these runs are scored on test.
    `after_last(run)` is called as soon as the last seed's run is scored; what it returns is kept."""
    lr, sweep = _sweep_arm(pool, opts, arm, k, opts.seeds[0])
    first = next(r for r in sweep if r["lr"] == lr)
    futures = [pool.submit(_scored, first)] + [pool.submit(_run_and_score, arm, k, seed, lr, f"{arm}-k{k}-s{seed}",
                                                           opts) for seed in opts.seeds[1:]]
    extra = after_last(futures[-1].result()) if after_last is not None else None
    results = []
    for future in futures:
        results.append(future.result())
        print(_line(results[-1], "final "), flush=True)
    return {"lr": lr, "sweep": sweep, "results": results, "after_last": extra}


def run_all(pool: RunPool, opts: ImagenetDemoOptions) -> tuple:
    """Every arm at every K, sharing the pool's workers; -> ({"arm@K": lr}, the sweep's runs, the scored
    runs, the showcase run, its trust table), each in a fixed order (K, then arm; seeds in order), whatever
    order they finished in. The showcase is the last transfer run (the largest K, the last seed); its trust
    table is computed as soon as that run is scored, beside the runs still training. The largest K is
    queued first: its runs are the longest, so the short ones fill both workers at the end."""
    pairs = [(arm, k) for k in opts.labels_per_class for arm in ORDER]
    showcase_pair = ("transfer", opts.labels_per_class[-1])

    def one_pair(pair):
        trust = (lambda run: pool.submit(trust_table, run["run"])) if pair == showcase_pair else None
        return _arm_at_k(pool, opts, *pair, after_last=trust)

    queued = sorted(pairs, key=lambda pair: -pair[1])  # stable: the arms keep their order within a K
    by_pair = dict(zip(queued, pool.each(one_pair, queued)))
    done = [by_pair[pair] for pair in pairs]
    chosen = {f"{arm}@{k}": d["lr"] for (arm, k), d in zip(pairs, done)}
    sweep = [r for d in done for r in d["sweep"]]
    scored = {(r["arm"], r["labels_per_class"], r["seed"]): r for d in done for r in d["results"]}
    results = [scored[(arm, k, seed)] for k in opts.labels_per_class for seed in opts.seeds for arm in ORDER]
    showcase = by_pair[showcase_pair]
    return chosen, sweep, results, showcase["results"][-1]["run"], showcase["after_last"].result()


def _sweep_lines(sweep: list, chosen: dict, seed: int, tie_points: float) -> list:
    lines = [f"Learning rates, per arm and labels per class, seed {seed}: best validation top-1 and its loss "
             f"(the chosen rate in bold; within {tie_points:g} points of the best, the lower loss wins):", "",
             "| labels per class | arm | lr | val top-1 | val loss | steps (best at) |", "|---|---|---|---|---|---|"]
    for r in sweep:
        mark = "**" if r["lr"] == chosen[f"{r['arm']}@{r['labels_per_class']}"] else ""
        lines.append(f"| {r['labels_per_class']} | {r['arm']} | {mark}{r['lr']:g}{mark} | {r['val_top1']:.1f}% | "
                     f"{r['val_loss']:.3f} | {r['steps']} ({r['best_step']}) |")
    return lines


def _table_lines(opts: ImagenetDemoOptions, rows: list, chosen: dict, probe, test_images: int, wall: float,
                 machine: str) -> list:
    rates = ", ".join(f"{k}: {chosen[f'transfer@{k}']:g} / {chosen[f'scratch@{k}']:g}" for k in opts.labels_per_class)
    return [f"[2/2] Fashion-MNIST test top-1 (a fixed {test_images:,} of t10k) of best.pt, mean ± std over seeds "
            + ", ".join(map(str, opts.seeds)) + "; steps: each arm's steps a run (mean), of a shared cap of "
            f"{_steps(opts)}", "", *table_lines(rows, steps=True), "",
            f"transfer: {probe.model.arch} from ImageNet weights" + (
                f", {opts.probe_steps} steps of linear probe first" if opts.probe_steps and not opts.quick else "")
            + (", BatchNorm statistics kept (train.freeze_bn)" if probe.train.freeze_bn else "")
            + f"; scratch: the same net from random weights; both {probe.preprocess.crop} px, {probe.train.optimizer}, "
            f"until validation top-1 stops improving ({opts.patience} validations, about every {opts.eval_steps} "
            f"steps) or the cap; rates (transfer / scratch) picked on validation per labels per class: {rates}",
            scratch_check_line(rows), machine, f"demo wall time {wall / 60:.1f} min"]


def run_imagenet_demo(opts: ImagenetDemoOptions) -> dict:
    """Sweep, runs, table; writes demo.md, demo.json and demo.png into opts.out_dir."""
    started = time.time()
    opts.check()
    probe = _load("transfer", max(opts.labels_per_class), opts.seeds[0], _grid(opts, "transfer")[0], "probe", opts,
                  epochs=1)
    arch, px = probe.model.arch, probe.preprocess.crop
    # One scan for every run (the largest K's training images hold the others'): it stops here on missing or
    # unusable files, and the runs skip it.
    test_images = len(load_dataset(probe, quiet=True).test)
    workers = worker_count(opts.workers)
    print(f"[1/2] {len(opts.labels_per_class) * len(ORDER)} (arm, labels per class) pairs: each sweeps its rate grid "
          f"with seed {opts.seeds[0]} (picked on validation), then trains seeds {opts.seeds[1:]} at that rate ({arch}, "
          f"{px} px, {probe.train.optimizer}, a cap of {_steps(opts)} steps a run; {workers} runs at once, one torch "
          "thread each)", flush=True)
    with RunPool(workers) as pool:
        chosen, sweep, results, showcase, (trust, trusted) = run_all(pool, opts)  # trust: calibration, "unknown"
    mark_newest(showcase)  # runs finish in any order: `toolkit export` with no path must pick the showcase
    rows = add_steps(summarise(results, opts.labels_per_class), results)
    machine = machine_line(RUNS_ON)
    lines = _table_lines(opts, rows, chosen, probe, test_images, time.time() - started, machine)
    report = "\n".join([*lines, "", *trust])
    print(report)
    record = {"arch": arch, "input_px": px, "steps": _steps(opts), "test_images": test_images,
              "budget": {"cap": _steps(opts), "eval_steps": opts.eval_steps, "patience": opts.patience,
                         "probe_steps": 0 if opts.quick else opts.probe_steps},
              "select": {"seed": opts.seeds[0], "chosen": chosen, "tie_points": opts.tie_points,
                         "grids": {arm: _grid(opts, arm) for arm in ORDER}, "runs": sweep},
              "rows": rows, "runs": results, "scratch_drops": scratch_drops(rows), "machine": machine,
              "wall_time_s": round(time.time() - started, 1), "quick": opts.quick, "trust": trusted}
    markdown = "\n".join([report, "", *_sweep_lines(sweep, chosen, opts.seeds[0], opts.tie_points)])
    paths = write_report(opts.out_dir, markdown, record, f"Fashion-MNIST: {arch} ImageNet transfer vs scratch")
    print(f"written: {', '.join(paths)}; every run's metrics.jsonl and checkpoints are in {opts.out_dir}/")
    print_next_steps(probe, showcase, opts.out_dir)
    return record
