"""`toolkit benchmark --train RECIPE`: training-step and data-loader images/s (the torch side of the benchmark).

The runtime benchmark (toolkit.runtime.benchmark) imports this only when --train is asked for."""
from __future__ import annotations

import datetime as _dt
import math
import os
import sys
import time
from typing import Optional, Sequence

import numpy as np

from toolkit.errors import UserError
from toolkit.runtime.benchmark import (DEFAULT_DURATION_S, SCHEMA_VERSION, _now_iso, _Progress, _stats,
                                       _write_outputs, format_train_table, interleaved_rounds, machine_info,
                                       physical_cores, versions)


def run_train_benchmark(recipe_path: str, overrides: Sequence[str] = (), batch_size: Optional[int] = None,
                        device: Optional[str] = None, duration: Optional[float] = None,
                        iterations: Optional[int] = None, warmup: Optional[int] = None, rounds: int = 3,
                        threads: Optional[int] = None, loader_batches: Optional[int] = None,
                        out_dir: Optional[str] = None, quiet: bool = False) -> dict:
    """Training step img/s (synthetic tensors through model + loss + backward + optimizer step, built as
    toolkit train builds them) and data-loader img/s (toolkit.train.data.make_loader over the recipe's train
    split, workers as in the recipe), measured separately; says which one limits training.

    duration: timed seconds for the step (default 5; loader: the same), or iterations: timed steps
    (loader: `loader_batches`, default one pass over the train split, at least 3 batches).
    Writes benchmark.json and benchmark.md into out_dir (default benchmarks/<recipe name>-train-<stamp>/).
    """
    say = (lambda *a, **k: None) if quiet else (lambda *a, **k: print(*a, file=sys.stderr, **k))
    from toolkit import recipe as recipe_mod

    recipe = recipe_mod.load(os.fspath(recipe_path), list(overrides))
    if duration is not None and iterations is not None:
        raise UserError("benchmark: pass --duration or --iterations, not both")
    if batch_size is not None:
        if int(batch_size) < 1:
            raise UserError(f"batch_size: {batch_size!r}; expected a positive whole number")
        recipe.train.batch_size = int(batch_size)
    if device is not None:
        recipe.train.device = str(device)
    if int(rounds) < 1:
        raise UserError(f"rounds: {rounds!r}; expected at least 1")
    duration = DEFAULT_DURATION_S if duration is None and iterations is None else duration

    import torch
    import torch.nn as nn

    from toolkit.train import data as data_mod
    from toolkit.train import model as model_mod
    from toolkit.train import loop as train_mod

    n_threads, threads_source = (int(threads), "given") if threads else (physical_cores(), "physical cores")
    torch.set_num_threads(n_threads)
    dev = train_mod.pick_device(recipe.train.device)
    progress = _Progress(not quiet)
    progress.live("loading the data")
    dataset = data_mod.load_dataset(recipe, scan=False)
    if not dataset.train:
        raise UserError("data: the training split is empty; nothing to load")
    num_classes = len(dataset.labels)
    t = recipe.train
    bs = int(t.batch_size)
    crop = int(recipe.preprocess.crop)
    autocast = train_mod.amp_dtype(t.amp, dev)
    channels_last = bool(t.channels_last and dev.type == "cuda")

    # ---- training step ---------------------------------------------------------------------------
    first_groups = model_mod.trainable_groups(t, 0)
    last_groups = model_mod.trainable_groups(t, max(0, t.epochs - 1))
    phases = [("main", last_groups)]
    if first_groups != last_groups:
        phases.insert(0, ("frozen (first epochs)", first_groups))
    phase_records = []
    for phase_name, groups in phases:
        progress.live(f"building the model ({phase_name})")
        model = model_mod.build_from_recipe(recipe, num_classes)
        model.to(dev, memory_format=torch.channels_last if channels_last else torch.preserve_format)
        model_mod.set_trainable(model, groups)
        model.train()
        optimizer = train_mod.build_optimizer(model, t, groups)  # exactly as toolkit train builds it
        scaler = torch.amp.GradScaler("cuda", enabled=autocast is torch.float16)
        criterion = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(bs, 3, crop, crop, generator=gen).to(dev)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, num_classes, (bs,), generator=gen).to(dev)

        def step():
            optimizer.zero_grad(set_to_none=True)
            if autocast is not None:
                with torch.autocast(dev.type, dtype=autocast):
                    loss = criterion(model(x), y)
            else:
                loss = criterion(model(x), y)
            scaler.scale(loss).backward()
            if t.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            if dev.type == "cuda":
                torch.cuda.synchronize()

        progress.live(f"warming up the training step ({phase_name})")
        tt = time.perf_counter()
        step()
        first = time.perf_counter() - tt
        calls, spent, last = 0, 0.0, first
        want = int(warmup) if warmup is not None else None
        while calls < (want - 1 if want else 2) or (want is None and spent < 0.5 and calls < 10):
            tt = time.perf_counter()
            step()
            last = time.perf_counter() - tt
            calls, spent = calls + 1, spent + last
        k = max(1, math.ceil(int(iterations) / rounds)) if iterations is not None else \
            max(1, int(round(float(duration) / rounds / max(last, 1e-6))))

        def on_block(r, entry, kk, total, phase_name=phase_name):
            progress.live(f"training step ({phase_name}) round {r + 1}/{rounds}: {kk * bs / total:.1f} img/s")
        lat, blocks, _ = interleaved_rounds([("step", step)], rounds, {"step": k}, on_block)
        stats = _stats(lat["step"], blocks["step"], k, bs)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        phase_records.append({"phase": phase_name, "groups": sorted(groups), "trainable_params": int(trainable),
                              "iterations": len(lat["step"]), "first_step_s": round(first, 4),
                              "throughput_ips": stats["throughput_ips"], "latency_ms": stats["latency_ms"]})
        del model, optimizer
    progress.line(f"training step: {phase_records[-1]['throughput_ips']['median']:.1f} img/s "
                  f"(batch {bs}, {phase_records[-1]['phase']} phase)")

    # ---- data loader -----------------------------------------------------------------------------
    progress.live("starting the data loader")
    loader = data_mod.make_loader(dataset.train, recipe, train=True, generator=torch.Generator().manual_seed(0))
    n_batches = int(loader_batches) if loader_batches else max(3, len(loader))
    tt = time.perf_counter()
    it = iter(loader)
    first_batch = next(it)
    startup = time.perf_counter() - tt
    times, sizes_seen = [], []
    deadline = time.perf_counter() + (float(duration) if duration is not None else float("inf"))
    while len(times) < n_batches and (duration is None or time.perf_counter() < deadline or len(times) < 3):
        tt = time.perf_counter()
        try:
            xb, _ = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        times.append(time.perf_counter() - tt)
        sizes_seen.append(int(xb.shape[0]))
        progress.live(f"data loader: {len(times)} batches, {sum(sizes_seen) / sum(times):.1f} img/s")
    del first_batch
    ips_per_batch = np.asarray(sizes_seen) / np.maximum(np.asarray(times), 1e-9)
    loader_ips = float(sum(sizes_seen) / sum(times)) if times else 0.0
    loader_rec = {"workers": int(recipe.data.workers), "batch_size": bs, "startup_s": round(startup, 4),
                  "batches": len(times), "images": int(sum(sizes_seen)), "augment": "recipe" if recipe.augment
                  else "default", "throughput_ips": {
                      "overall": round(loader_ips, 3), "median_batch": round(float(np.median(ips_per_batch)), 3),
                      "min_batch": round(float(ips_per_batch.min()), 3),
                      "max_batch": round(float(ips_per_batch.max()), 3)}}
    progress.close()
    step_ips = phase_records[-1]["throughput_ips"]["median"]
    bound = "data loader" if loader_ips < step_ips else "training step"
    shared = 1.0 / (1.0 / step_ips + 1.0 / loader_ips) if dev.type == "cpu" and step_ips and loader_ips else None
    advice = ("raise data.workers, lower the decode cost (smaller source images), or cache decoded images"
              if bound == "data loader" else
              "the training step is the limit: a GPU (with AMP and channels_last), a smaller crop or more frozen "
              "blocks speed it up; more loader workers won't")
    limiter = {"bound_by": bound, "step_ips": step_ips, "loader_ips": round(loader_ips, 3),
               "ratio": round(loader_ips / step_ips, 3) if step_ips else None,
               "estimate_shared_cpu_ips": round(shared, 3) if shared else None, "advice": advice}
    notes = []
    if shared:
        notes.append("on CPU the loader's worker processes and the training step share the same cores; when both "
                     "are CPU-bound, an epoch runs at about 1/(1/step + 1/loader) images/s "
                     f"(~{shared:.1f} img/s here)")
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = out_dir or os.path.join("benchmarks", f"{recipe.name}-train-{stamp}")
    record = {
        "schema_version": SCHEMA_VERSION, "kind": "train", "created": _now_iso(),
        "command": f"toolkit benchmark --train {recipe_path}" + (" " + " ".join(overrides) if overrides else ""),
        "recipe": {"path": os.fspath(recipe_path), "name": recipe.name, "arch": recipe.model.arch,
                   "head": recipe.model.head, "crop": crop, "classes": num_classes, "strategy": t.strategy,
                   "optimizer": t.optimizer, "batch_size": bs, "amp": str(autocast).replace("torch.", "")
                   if autocast else None, "channels_last": channels_last, "train_images": len(dataset.train)},
        "machine": machine_info(gpu=dev.type == "cuda"), "versions": versions(),
        "settings": {"device": str(dev), "threads": n_threads, "threads_source": threads_source,
                     "warmup": int(warmup) if warmup is not None else "auto", "rounds": int(rounds),
                     "iterations": int(iterations) if iterations is not None else None,
                     "duration_s": float(duration) if duration is not None else None,
                     "loader_batches": n_batches},
        "timed": {"step": "one optimizer step on a synthetic batch already on the device: zero_grad, forward, "
                          "loss, backward, (grad clip), optimizer step, (CUDA synchronise); median over rounds",
                  "loader": "time to receive each next batch from toolkit.train.data.make_loader(train split, train=True) "
                            "with the recipe's workers and augmentation, after its first batch (startup_s)",
                  "limiter": "the smaller of step and loader images/s limits an epoch"},
        "phases": phase_records, "loader": loader_rec, "limiter": limiter, "notes": notes,
        "files": {"json": os.path.join(out_dir, "benchmark.json"), "markdown": os.path.join(out_dir, "benchmark.md"),
                  "png": None},
    }
    _write_outputs(record, out_dir, False, say)
    if not quiet:
        print(format_train_table(record))
        say(f"benchmark: wrote {record['files']['json']}, {record['files']['markdown']}")
    return record


