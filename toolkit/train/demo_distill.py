"""`toolkit demo --distill`: distillation, offline, on Fashion-MNIST.

1. Teacher: EfficientNet-Lite0 with ImageNet weights fine-tuned on `labels_per_class` labels per class at
   64 px (recipes/fashion-distill-teacher.yaml), once (seed 0), for `teacher_steps` steps.
2. Data: read once, written as PNG folders (write_data): the labelled photos, validation and test
   splits, and the unlabelled pool of `unlabeled` training photos outside the labelled subset and the
   validation split (what data.unlabeled reads).
3. Students, each in three arms with the same labelled photos and the same budget of `steps` optimizer
   steps: plain (labels only), distilled (train.teacher), distilled + pool (train.teacher and
   data.unlabeled). MobileNetV3-Small from random weights at 32 px (fashion-distill-mbv3.yaml, other
   normalisation) and Lite0 with ImageNet weights at 32 px (fashion-distill-lite0.yaml). Every arm and
   seed. T 2 and alpha 0.5 (the recipes). Distilled: the teacher's logits cached once, of each photo's
   eval view (train.distill_cache always; each photo is seen ~86 times). Distilled + pool: the teacher
   labels every batch (never), on the student's augmented view drawn again at its own 64 px ("consistent
   teaching", Beyer et al. 2022): with 4,200 photos in 5 epochs, an eval-view cache misses most views
   (1.2 validation points lower on MobileNetV3, seed 0; 5 at 300 steps).
4. Score: test top-1 of the final weights on the fixed 2,000-image subset of t10k; "gap closed" is
   (distilled - plain) / (teacher - plain). Validation top-1 (600 photos of the training file) is kept
   beside it: the demo's settings were chosen on it, never on test. Size: parameters and fp32 MB; img/s:
   PyTorch inference on this CPU at the model's input size, batch 32.
5. Teacher logits per batch against cached: the first student's pool arm runs again with the teacher's
   logits cached once (train.distill_cache always), timed per epoch.
Runs train `workers` at a time (toolkit.train.demo_pool), each in its own process on one torch thread, so
the table does not depend on the core count; the plain students need no teacher and train beside it.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import time
from concurrent.futures import as_completed
from dataclasses import dataclass, field

import numpy as np
import torch

from toolkit import recipe as recipe_mod
from toolkit.artifacts import atomic_write
from toolkit.datasets import load_dataset
from toolkit.datasets.splits import keep_per_class
from toolkit.errors import UserError
from toolkit.train.demo_pool import RUNS_ON, RunPool, worker_count
from toolkit.train.demo_shared import final_test_top1, machine_line, recipe_path, train_quietly
from toolkit.train.model import model_from_checkpoint
from toolkit.train.run_dir import read_metrics

TEACHER = "fashion-distill-teacher.yaml"
STUDENTS = {"mobilenet_v3_small": "fashion-distill-mbv3.yaml", "efficientnet_lite0": "fashion-distill-lite0.yaml"}
ARMS = ("plain", "distilled", "distilled+pool")


@dataclass
class DistillDemoOptions:
    """What `toolkit demo --distill` runs."""
    seeds: list = field(default_factory=lambda: [0, 1, 2])  # every (student, arm) trains once per seed
    labels_per_class: int = 20  # labelled training photos per class, teacher and students
    unlabeled: int = 4000  # photos in the unlabelled pool (4,000 beat 1,000 by 2.7 val points, MobileNetV3)
    steps: int = 600  # optimizer steps per student run, every arm (epochs follow from the images; 300 left the
    # pool arm 1.3 validation points lower on MobileNetV3, seed 0, and the plain arm no higher: docs/demo.md)
    teacher_steps: int = 300  # the teacher's optimizer steps (80 left it 4 test points weaker; 600 no better on
    # validation)
    quick: bool = False  # a smoke run: one seed, 4 steps, a pool of 64
    out_dir: str = "runs/demo-distill"  # every run folder, the pool, demo.md and demo.json
    workers: int = 0  # runs trained at once, each in its own process on one torch thread; 0: one per core
    overrides: list = field(default_factory=list)  # KEY=VALUE for every recipe

    def check(self) -> None:
        if not self.seeds:
            raise UserError("demo --distill: expected at least one seed")
        if self.labels_per_class < 1 or self.unlabeled < 1 or self.steps < 1 or self.teacher_steps < 1:
            raise UserError("demo --distill: labels per class, the pool, steps and teacher steps must be positive")
        if self.workers < 0:
            raise UserError(f"demo --distill: workers {self.workers}; expected 0 (one per core) or more")

    @property
    def budget(self) -> tuple:
        """(student steps, teacher steps, pool size, seeds): --quick shrinks them all."""
        if self.quick:
            return 4, 4, 64, self.seeds[:1]
        return self.steps, self.teacher_steps, self.unlabeled, self.seeds


def _load(recipe_file: str, name: str, seed: int, steps: int, opts: DistillDemoOptions, extra=()):
    """A recipe with epochs from the step budget; validated and saved once, at the end (scored on last.pt).
    `extra` holds data.source=folder and data.root once the folders are written (write_data)."""
    base = [f"out_dir={opts.out_dir}", f"name={name}", f"seed={seed}",
            f"data.labels_per_class={opts.labels_per_class}", *extra, *opts.overrides]
    recipe = recipe_mod.load(recipe_path(recipe_file), base)
    images = opts.labels_per_class * 10 + (opts.budget[2] if recipe.data.unlabeled else 0)
    epochs = max(1, round(steps / math.ceil(images / recipe.train.batch_size)))
    return recipe_mod.load(recipe_path(recipe_file), base + [f"train.epochs={epochs}", f"train.eval_every={epochs}",
                                                             f"train.save_every={epochs}"])


def _final_val_top1(records: list) -> float:
    """Validation top-1 of the final weights (the last epoch validates them): what settings are chosen on."""
    return round(records[-1]["val_top1"], 2)


def _run(recipe_file: str, name: str, seed: int, steps: int, opts: DistillDemoOptions, extra=()) -> dict:
    recipe = _load(recipe_file, name, seed, steps, opts, extra)
    seconds = train_quietly(recipe, evaluate_test=False)
    distill_file = os.path.join(recipe.run_dir, "distill.json")
    distill = json.load(open(distill_file, encoding="utf-8")) if os.path.isfile(distill_file) else None
    records = read_metrics(recipe.run_dir)
    return {"run": recipe.run_dir, "arch": recipe.model.arch, "px": recipe.preprocess.crop, "seed": seed,
            "epochs": recipe.train.epochs, "test_top1": final_test_top1(recipe.run_dir, batch_size=100),
            "val_top1": _final_val_top1(records), "seconds": round(seconds, 1),
            "epoch_s": round(statistics.mean(r["epoch_time_s"] for r in records), 2), "distill": distill}


def _folder_name(k: int, label: str) -> str:
    """'0-T-shirt-top': the class index first (folders sort in label order), then a file-safe name."""
    return f"{k}-" + "".join(c if c.isalnum() else "-" for c in label)


def _write_images(folder: str, items: list, names: list) -> None:
    from PIL import Image

    shutil.rmtree(folder, ignore_errors=True)   # an earlier demo's photos (another k or pool) must not stay
    for n, (pixels, label) in enumerate(items):
        path = os.path.join(folder, names[label], f"{n:05d}.png") if names else os.path.join(folder, f"{n:05d}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(np.asarray(pixels)).save(path)


def write_data(recipe, pool_size: int, folder: str) -> dict:
    """Fashion-MNIST, read once through the fashion_mnist source, as the folders every run reads:
    <folder>/labelled/{train,val,test}/<class>/ (the recipe's labelled subset, its validation split and the
    fixed test subset) and <folder>/unlabeled/ (`pool_size` training photos outside train and val).
    Each run then scans a few thousand small files instead of all 62,000 images."""
    whole = recipe_mod.from_dict({**recipe_mod.to_dict(recipe), "data": {**recipe_mod.to_dict(recipe)["data"],
                                                                           "labels_per_class": None}})
    full = load_dataset(whole, scan=False)
    train = keep_per_class(full.train, full.labels, recipe.data.labels_per_class, recipe.data.split_seed)
    kept = {id(item) for item in train}
    pool = [item for item in full.train if id(item) not in kept]
    pool = [pool[i] for i in sorted(np.random.default_rng(0).permutation(len(pool))[:pool_size])]
    names = [_folder_name(k, label) for k, label in enumerate(full.labels)]
    for split, items in (("train", train), ("val", full.val), ("test", full.test)):
        _write_images(os.path.join(folder, "labelled", split), items, names)
    _write_images(os.path.join(folder, "unlabeled"), pool, [])
    return {"root": os.path.join(folder, "labelled"), "pool": os.path.join(folder, "unlabeled"),
            "train": len(train), "val": len(full.val), "test": len(full.test), "unlabeled": len(pool)}


def model_facts(run_dir: str, px: int, batches: int = 5) -> dict:
    """Parameters, fp32 MB and PyTorch img/s (batch 32, eval, median of `batches`) of a run's final model."""
    model, _ = model_from_checkpoint(os.path.join(run_dir, "checkpoints", "last.pt"))
    params = sum(p.numel() for p in model.parameters())
    x = torch.randn(32, 3, px, px)
    times = []
    with torch.inference_mode():
        model(x)
        for _ in range(batches):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return {"params": params, "mb": round(params * 4 / 1e6, 2), "images_per_s": round(32 / statistics.median(times))}


def _summary(runs: list, arch: str, arm: str) -> dict:
    chosen = [r for r in runs if r["arch"] == arch and r["arm"] == arm]
    accs = [r["test_top1"] for r in chosen]
    return {"mean": statistics.mean(accs), "std": statistics.pstdev(accs), "runs": accs,
            "val_mean": statistics.mean(r["val_top1"] for r in chosen)}


def summarise(runs: list, teacher_top1: float) -> list:
    """Per student: each arm's test top-1 (mean, std, runs) and the share of the plain-teacher gap closed."""
    rows = []
    for arch in STUDENTS:
        row = {"arch": arch, **{arm: _summary(runs, arch, arm) for arm in ARMS}}
        gap = teacher_top1 - row["plain"]["mean"]
        row["gap"] = gap
        row["closed"] = {arm: (100 * (row[arm]["mean"] - row["plain"]["mean"]) / gap if gap > 0 else None)
                         for arm in ARMS[1:]}
        rows.append(row)
    return rows


def val_line(teacher: dict, rows: list, val_images: int) -> str:
    """Validation top-1, means over the seeds: what the demo's settings were chosen on (never test)."""
    arms = "; ".join(f"{row['arch']} " + " / ".join(f"{row[arm]['val_mean']:.1f}%" for arm in ARMS) for row in rows)
    return (f"validation top-1 ({val_images} photos of the training file), plain / distilled / + pool: {arms}; "
            f"teacher {teacher['val_top1']:.1f}%")


def _cell(s: dict) -> str:
    return f"{s['mean']:.1f} ± {s['std']:.1f}%"


def _closed(value) -> str:
    return "n/a (no gap)" if value is None else f"{value:.0f}%"


def table_lines(teacher: dict, rows: list, facts: dict) -> list:
    lines = ["| model | input | params | fp32 MB | img/s | plain | distilled | distilled + pool | gap closed "
             "(distilled / + pool) |", "|---|---|---|---|---|---|---|---|---|"]
    f = facts["teacher"]
    lines.append(f"| teacher: efficientnet_lite0 (ImageNet) | {teacher['px']} px | {f['params'] / 1e6:.2f} M | "
                 f"{f['mb']:.1f} | {f['images_per_s']} | {teacher['test_top1']:.1f}% | | | |")
    for row in rows:
        f = facts[row["arch"]]
        lines.append(f"| student: {row['arch']} | {f['px']} px | {f['params'] / 1e6:.2f} M | {f['mb']:.1f} | "
                     f"{f['images_per_s']} | {_cell(row['plain'])} | {_cell(row['distilled'])} | "
                     f"{_cell(row['distilled+pool'])} | {_closed(row['closed']['distilled'])} / "
                     f"{_closed(row['closed']['distilled+pool'])} |")
    return lines


def _plan(opts: DistillDemoOptions, data: list, teacher_dir: str, pool_dir: str) -> list:
    """(arch, arm, seed, run name, recipe overrides) of every student run; `data` points the recipes at the
    folders of write_data."""
    teacher = [f"train.teacher={teacher_dir}"]
    arms = {"plain": data, "distilled": [*data, *teacher, "train.distill_cache=always"],  # once, the eval view
            "distilled+pool": [*data, *teacher, f"data.unlabeled={pool_dir}", "train.distill_cache=never"]}
    return [(arch, arm, seed, f"{arch}-{arm.replace('+', '-')}-s{seed}", arms[arm])
            for arch in STUDENTS for seed in opts.budget[3] for arm in ARMS]


def _timing_run(opts: DistillDemoOptions, data: list, teacher_dir: str, pool_dir: str) -> tuple:
    """The first student's pool arm (first seed) again, with the teacher's logits cached once (of each
    photo's eval view): its time per epoch against the arm's per-batch run."""
    arch, seed = next(iter(STUDENTS)), opts.budget[3][0]
    return (STUDENTS[arch], f"{arch}-distilled-pool-cached-s{seed}", seed, opts.budget[0], opts,
            [*data, f"train.teacher={teacher_dir}", f"data.unlabeled={pool_dir}", "train.distill_cache=always"])


def _submit(pool: RunPool, opts: DistillDemoOptions, plan: list, arm: str) -> dict:
    """{index in plan: future} of the plan's runs of one arm."""
    return {i: pool.submit(_run, STUDENTS[arch], name, seed, opts.budget[0], opts, extra)
            for i, (arch, run_arm, seed, name, extra) in enumerate(plan) if run_arm == arm}


def _train_all(pool: RunPool, opts: DistillDemoOptions, teacher_recipe, data: list, pool_dir: str) -> tuple:
    """The teacher, with the plain students beside it (they need no teacher); then the pool arms (the longest
    runs, queued first so short ones fill the workers at the end), the timing run and the distilled arms.
    -> (teacher, student runs in plan order, the timing run)."""
    teacher_run = pool.submit(train_quietly, teacher_recipe, False)
    plan = _plan(opts, data, teacher_recipe.run_dir, pool_dir)
    futures = _submit(pool, opts, plan, "plain")
    seconds = teacher_run.result()
    teacher = {"run": teacher_recipe.run_dir, "px": teacher_recipe.preprocess.crop,
               "test_top1": final_test_top1(teacher_recipe.run_dir, batch_size=100),
               "val_top1": _final_val_top1(read_metrics(teacher_recipe.run_dir)), "seconds": round(seconds, 1)}
    print(f"      teacher test top-1 {teacher['test_top1']:.1f}%  ({seconds:.0f}s)", flush=True)
    futures.update(_submit(pool, opts, plan, "distilled+pool"))
    timing = pool.submit(_run, *_timing_run(opts, data, teacher_recipe.run_dir, pool_dir))
    futures.update(_submit(pool, opts, plan, "distilled"))
    index = {future: i for i, future in futures.items()}
    for n, future in enumerate(as_completed(index), 1):  # as they finish: the table keeps the plan's order
        (arch, arm, seed, _, _), r = plan[index[future]], future.result()
        print(f"      {n:2d}/{len(plan)}  {arch:18s} {arm:15s} seed {seed}  test {r['test_top1']:5.1f}%  "
              f"({r['seconds']:.0f}s, {r['epochs']} epochs, {r['epoch_s']:.1f}s an epoch)", flush=True)
    return teacher, [{"arm": plan[i][1], **futures[i].result()} for i in range(len(plan))], timing.result()


def _timing(runs: list, cached: dict) -> dict:
    """The timing run against the per-batch pool run of the same student and seed."""
    per_batch = next(r for r in runs if r["arm"] == "distilled+pool" and (r["arch"], r["seed"]) ==
                     (cached["arch"], cached["seed"]))
    keys = ("epoch_s", "seconds", "test_top1", "val_top1", "epochs")
    return {"arch": per_batch["arch"], "seed": per_batch["seed"], "per_batch": {k: per_batch[k] for k in keys},
            "cached": {**{k: cached[k] for k in keys}, "cache_s": cached["distill"]["cache_seconds"],
                       "images": cached["distill"]["cached_images"]}}


def _timing_lines(t: dict) -> list:
    p, c = t["per_batch"], t["cached"]
    return [f"Teacher logits, {t['arch']} with the pool (seed {t['seed']}, {p['epochs']} epochs): per batch, on the "
            f"student's augmented view at the teacher's input (the table), {p['epoch_s']:.1f}s an epoch (run "
            f"{p['seconds']:.0f}s, test {p['test_top1']:.1f}%, val {p['val_top1']:.1f}%); cached once, of each "
            f"photo's eval view, {c['epoch_s']:.1f}s an epoch + {c['cache_s']:.1f}s for the cache of "
            f"{c['images']} images (run {c['seconds']:.0f}s, test {c['test_top1']:.1f}%, val {c['val_top1']:.1f}%)"]


def _machine() -> str:
    """demo_shared's machine line (CPU, ISA, cores, threads) and the load average: the img/s column moves with it."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{machine_line(RUNS_ON).removeprefix('machine: ')}, load average {load:.1f}"


def run_distill_demo(opts: DistillDemoOptions) -> dict:
    """Teacher, pool, students, timing; writes demo.md and demo.json into opts.out_dir."""
    started = time.time()
    opts.check()
    steps, teacher_steps, pool_size, seeds = opts.budget
    written = write_data(_load(TEACHER, "teacher", 0, teacher_steps, opts), pool_size,
                         os.path.join(opts.out_dir, "data"))
    data, pool_dir = ["data.source=folder", f"data.root={written['root']}"], written["pool"]
    print(f"[1/5] Fashion-MNIST as folders: {written['train']} labelled training photos, {written['val']} validation, "
          f"{written['test']} test, and a pool of {written['unlabeled']} unlabelled photos ({pool_dir}/)", flush=True)
    teacher_recipe = _load(TEACHER, "teacher", 0, teacher_steps, opts, data)
    workers = worker_count(opts.workers)
    print(f"[2/5] teacher: {teacher_recipe.model.arch} (ImageNet weights), {opts.labels_per_class} labels per class, "
          f"{teacher_recipe.preprocess.crop} px, ~{teacher_steps} steps; then {workers} runs at once, one torch "
          "thread each", flush=True)
    print(f"[3/5] students: {', '.join(STUDENTS)}; {' / '.join(ARMS)}; seeds {seeds}; ~{steps} steps a run, "
          "the plain ones beside the teacher; [4/5] with them, the teacher's logits cached against per batch",
          flush=True)
    with RunPool(workers) as pool:
        teacher, runs, cached = _train_all(pool, opts, teacher_recipe, data, pool_dir)
    timing = _timing(runs, cached)
    print("[5/5] the table", flush=True)
    rows = summarise(runs, teacher["test_top1"])
    facts = {"teacher": {**model_facts(teacher["run"], teacher["px"]), "px": teacher["px"]}}
    for arch in STUDENTS:
        run = next(r for r in runs if r["arch"] == arch)
        facts[arch] = {**model_facts(run["run"], run["px"]), "px": run["px"]}
    wall = time.time() - started
    machine = _machine()
    distilled = next(r["distill"] for r in runs if r["distill"])
    report = "\n".join([
        f"Fashion-MNIST test top-1 (a fixed 2,000 of t10k), mean ± std over seeds {', '.join(map(str, seeds))}; "
        f"{opts.labels_per_class} labels per class, a pool of {written['unlabeled']} unlabelled photos, "
        f"~{steps} steps a student run", "", *table_lines(teacher, rows, facts), "",
        f"teacher: one run (seed 0), ~{teacher_steps} steps; gap closed = (distilled - plain) / (teacher - plain); "
        f"alpha {distilled['alpha']:g}, T {distilled['temperature']:g}; the teacher's logits: distilled, cached once "
        "(each photo's eval view); + pool, per batch (the student's augmented view at the teacher's 64 px); "
        "img/s: PyTorch, batch 32, eval", "",
        val_line(teacher, rows, written["val"]), "", *_timing_lines(timing), "",
        f"machine: {machine}; demo wall time {wall / 60:.1f} min"])
    print(report)
    record = {"teacher": teacher, "rows": rows, "runs": runs, "timing": timing, "facts": facts,
              "labels_per_class": opts.labels_per_class, "data": written, "steps": steps,
              "teacher_steps": teacher_steps, "seeds": seeds, "machine": machine, "wall_time_s": round(wall, 1),
              "quick": opts.quick}
    paths = [os.path.join(opts.out_dir, name) for name in ("demo.json", "demo.md")]
    atomic_write(paths[0], json.dumps(record, indent=2) + "\n")
    atomic_write(paths[1], report + "\n")
    print(f"written: {', '.join(paths)}; every run's metrics.jsonl and checkpoints are in {opts.out_dir}/")
    return record
