"""The offline demo of transfer learning, end to end, on scikit-learn's bundled handwritten digits.

1. Pretrain VGG16 on a rich source: digits 0-4, all labels (recipes/digits-source.yaml).
2. Fine-tune it on a poor target: digits 5-9 with a few labels per class (recipes/digits-transfer.yaml).
3. Train the same target from scratch with the same budget (recipes/digits-scratch.yaml).
4. Report target test accuracy, transfer against scratch, as means over seeds, per labels-per-class.

Model selection on the validation split would spend labels the "poor" target does not have, so both
arms are scored on the test split with their final weights (last.pt), after the same fixed budget.
"""
from __future__ import annotations

import json
import math
import os
import time

from toolkit import recipe as recipe_mod
from toolkit.errors import UserError
from toolkit.parsing import parse_int, parse_list
from toolkit.train.demo_distill import DistillDemoOptions, run_distill_demo
from toolkit.train.demo_imagenet import ImagenetDemoOptions, run_imagenet_demo
from toolkit.train.demo_shared import (add_steps, final_test_top1, machine_line, print_next_steps, recipe_path,
                                       scratch_check_line, scratch_drops, summarise, table_lines, train_quietly,
                                       write_report)


def run_demo(seeds=(0, 1, 2), labels_per_class=(1, 3, 10), quick: bool = False, out_dir: str = "runs/demo",
             overrides=()) -> dict:
    """`overrides` (KEY=VALUE) apply to all three recipes, e.g. model.arch=vgg11 for a faster story."""
    started = time.time()
    seeds, labels_per_class = list(seeds), list(labels_per_class)
    if not seeds or not labels_per_class:
        raise UserError("demo: expected at least one seed and one labels-per-class value")
    quick_overrides = (["train.epochs=4"] if quick else []) + list(overrides)

    source = recipe_mod.load(recipe_path("digits-source.yaml"), [f"out_dir={out_dir}"] + quick_overrides)
    source_ckpt = os.path.join(source.run_dir, "checkpoints", "best.pt")
    print(f"[1/3] source: VGG16 learns digits {source.data.classes} from all labels "
          f"({source.train.epochs} epochs, {source.preprocess.crop} px)", flush=True)
    seconds = train_quietly(source)
    source_summary = json.load(open(os.path.join(source.run_dir, "summary.json")))
    print(f"      source test top-1 {source_summary.get('test_top1', float('nan')):.1f}%  ({seconds:.0f}s)")

    results = []
    # Scratch first, so the newest run (what `toolkit export` picks with no path) is a transfer run.
    arms = (("scratch", "digits-scratch.yaml", []),
            ("transfer", "digits-transfer.yaml", [f"model.weights={source_ckpt}"]))
    total = len(seeds) * len(labels_per_class) * 2
    done = 0
    print(f"[2/3] target: digits 5-9, {labels_per_class} labels per class, seeds {seeds}: transfer vs scratch "
          f"({total} runs)", flush=True)
    for k in labels_per_class:
        for seed in seeds:
            for arm, recipe_file, extra in arms:
                overrides = [f"out_dir={out_dir}", f"name={arm}-k{k}-s{seed}", f"seed={seed}",
                             f"data.labels_per_class={k}", *extra, *quick_overrides]
                recipe = recipe_mod.load(recipe_path(recipe_file), overrides)
                seconds = train_quietly(recipe, evaluate_test=False)  # scored on last.pt below
                top1 = final_test_top1(recipe.run_dir)
                steps = recipe.train.epochs * math.ceil(k * len(recipe.data.classes) / recipe.train.batch_size)
                done += 1
                print(f"      {done:2d}/{total}  {arm:8s} {k:3d} labels/class  seed {seed}  test top-1 "
                      f"{top1:5.1f}%  ({seconds:.0f}s, {steps} steps)", flush=True)
                results.append({"arm": arm, "labels_per_class": k, "seed": seed, "test_top1": top1,
                                "steps": steps, "seconds": round(seconds, 1)})

    rows = add_steps(summarise(results, labels_per_class), results)
    wall = time.time() - started
    lines = ["[3/3] target test top-1 (digits 5-9), mean ± std over seeds " + ", ".join(map(str, seeds)),
             "", *table_lines(rows, steps=True)]
    lines += ["", f"source model: {source_ckpt} (test top-1 {source_summary.get('test_top1', float('nan')):.1f}% "
              f"on digits 0-4); both arms the same epochs (steps: each arm's steps a run)", scratch_check_line(rows),
              machine_line(), f"demo wall time {wall / 60:.1f} min"]
    report = "\n".join(lines)
    print(report)
    record = {"source_test_top1": source_summary.get("test_top1"), "rows": rows, "runs": results,
              "scratch_drops": scratch_drops(rows), "machine": machine_line(), "wall_time_s": round(wall, 1),
              "quick": quick}
    paths = write_report(out_dir, report, record, "digits 5-9: transfer from digits 0-4 vs scratch")
    print(f"written: {', '.join(paths)}; every run's metrics.jsonl and checkpoints are in {out_dir}/")
    showcase = os.path.join(out_dir, f"transfer-k{labels_per_class[-1]}-s{seeds[-1]}")
    target = recipe_mod.load(recipe_path("digits-scratch.yaml"), [f"out_dir={out_dir}"])  # the same target data
    print_next_steps(target, showcase, out_dir)
    return record


def demo_command(overrides: list, seeds=None, labels_per_class=None, quick: bool = False, out_dir=None,
                 imagenet: bool = False, steps=None, distill: bool = False, workers=None) -> None:
    """`toolkit demo [--imagenet | --distill]`: only the flags given are passed on, so each demo keeps its own
    defaults."""
    given = {k: v for k, v in dict(seeds=seeds, labels_per_class=labels_per_class, steps=steps, out_dir=out_dir,
                                   workers=workers).items() if v is not None}
    given.update({k: parse_list(given[k], int, "--" + k.replace("_", "-")) for k in ("seeds", "labels_per_class")
                  if k in given},
                 **{k: parse_int(given[k], "--" + k) for k in ("steps", "workers") if k in given},
                 quick=quick, overrides=overrides)
    if "workers" in given and not (imagenet or distill):
        raise UserError("demo: --workers goes with --imagenet or --distill (the digits demo trains one run at a time)")
    if "steps" in given and not (imagenet or distill):
        raise UserError("demo: --steps goes with --imagenet or --distill (the digits demo trains by epochs)")
    if imagenet and distill:
        raise UserError("demo: --imagenet or --distill, not both")
    if quick and "steps" in given:   # --quick's 4-step cap replaced the steps asked for without a word
        raise UserError(f"demo: --quick runs 4 steps a run; expected --steps {given['steps']} or --quick, not both")
    if distill:
        run_distill_demo(_distill_options(given))
    elif imagenet:
        run_imagenet_demo(ImagenetDemoOptions(**given))
    else:
        run_demo(**given)


def _distill_options(given: dict) -> DistillDemoOptions:
    """demo --distill takes one labels-per-class value (teacher and students share the labelled photos)."""
    k = given.pop("labels_per_class", None)
    if k is not None and len(k) != 1:
        raise UserError(f"demo --distill: --labels-per-class {','.join(map(str, k))}; expected one value")
    return DistillDemoOptions(**given, **({"labels_per_class": k[0]} if k else {}))
