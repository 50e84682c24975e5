"""`toolkit benchmark --train RECIPE`: training-step and data-loader images/s (the torch side of the benchmark).
The step is toolkit.train.step.TrainStep, the one `toolkit train` takes; the timing, the record and its reports
are the runtime benchmark's. The CLI imports this only for --train."""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Optional, Sequence

import numpy as np
import torch

from toolkit import recipe as recipe_mod
from toolkit.errors import UserError
from toolkit.runtime.benchmark import BenchmarkOptions, interleaved_rounds
from toolkit.runtime.benchmark.machine import default_out_dir, record_head
from toolkit.runtime.benchmark.options import parse
from toolkit.runtime.benchmark.records import Limiter, Loader, LoaderIps, Phase, TrainRecipe, TrainRecord, TrainSettings
from toolkit.runtime.benchmark.report import publish
from toolkit.runtime.benchmark.timing import Progress, stats, warm_up
from toolkit.train import data as data_mod
from toolkit.train import model as model_mod
from toolkit.train.device import amp_dtype, pick_device, precision_name, use_channels_last
from toolkit.train.step import TrainStep, build_optimizer


def run_train_benchmark(recipe_path: str, overrides: Sequence[str] = (), batch_size: Optional[int] = None,
                        device: Optional[str] = None, duration: Optional[float] = None,
                        iterations: Optional[int] = None, warmup: Optional[int] = None, rounds: int = 3,
                        threads: Optional[int] = None, loader_batches: Optional[int] = None,
                        out_dir: Optional[str] = None, quiet: bool = False) -> dict:
    """Training-step img/s (synthetic tensors, model and optimizer built as toolkit train builds them) and
    data-loader img/s (make_loader over the train split), measured separately; says which one limits training.
    duration: timed seconds for the step (default 5; the loader's cap too), or iterations: timed steps (loader:
    `loader_batches`, default one pass, at least 3). Writes benchmark.json and .md into out_dir."""
    overrides = [*map(str, overrides)] + [f"train.batch_size={batch_size}"] * (batch_size is not None)
    recipe = recipe_mod.load(os.fspath(recipe_path), overrides)  # --batch-size checked as the recipe's own
    if device is not None:  # after the recipe's checks: a CUDA recipe's fp16 amp then times what it does here
        recipe.train.device = str(device)
    timing = dict(duration=duration, iterations=iterations, warmup=warmup, rounds=rounds, threads=threads,
                  out_dir=out_dir)
    settings = _settings(recipe, timing, loader_batches)
    dev = pick_device(recipe.train.device)
    settings.device, progress = str(dev), Progress(not quiet)
    progress.live("loading the data")
    dataset = data_mod.load_dataset(recipe, scan=False)
    if not dataset.train:
        raise UserError("data: the training split is empty; nothing to load")
    caller_threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:  # a library call must not leave the caller's process on the benchmark's thread count
        phases = [ph for name, groups in _phases(recipe.train)
                  for ph in _time_step(recipe, name, groups, len(dataset.labels), dev, settings, progress)]
        progress.line("training step: " + ", ".join(f"{ph.precision} {ph.throughput_ips.median:.1f} img/s"
                                                    for ph in phases if ph.phase == phases[-1].phase)
                      + f" (batch {recipe.train.batch_size}, {phases[-1].phase} phase)")
        loader = _time_loader(recipe, dataset.train, settings, progress)
    finally:
        torch.set_num_threads(caller_threads)
        progress.close()
    out_dir = out_dir or default_out_dir(f"{recipe.name}-train")
    command = f"toolkit benchmark --train {recipe_path}" + (" " + " ".join(overrides) if overrides else "")
    record = _record(recipe, recipe_path, command, dataset, dev, settings, phases, loader, out_dir)
    publish(record, quiet=quiet)
    return record


def _settings(recipe, timing: dict, loader_batches) -> TrainSettings:
    """The timing options, checked as the inference benchmark checks them (options.parse)."""
    plan = parse(BenchmarkOptions(**timing))
    return TrainSettings(device=str(recipe.train.device), threads=plan.threads, threads_source=plan.threads_source,
                         warmup=plan.warmup, rounds=plan.rounds, iterations=plan.iterations, duration_s=plan.duration_s,
                         loader_batches=int(loader_batches or 0))  # 0: one pass, set when the loader is timed


def _phases(t) -> list[tuple[str, set]]:
    """[(name, trainable groups)]: the main phase, after a frozen one when a fine-tune starts frozen."""
    first, last = (model_mod.trainable_groups(t, epoch) for epoch in (0, max(0, t.epochs - 1)))
    return [("frozen (first epochs)", first)] * (first != last) + [("main", last)]


def _time_step(recipe, phase_name: str, groups: set, num_classes: int, dev, timing: TrainSettings,
               progress) -> list[Phase]:
    """The training step's records for one phase, one per precision (fp32, bf16 and the recipe's own),
    timed in the same interleaved rounds so that their ratio is fair: models and optimizers built as
    toolkit train builds them."""
    t, bs, crop, arch = recipe.train, int(recipe.train.batch_size), int(recipe.preprocess.crop), recipe.model.arch
    channels_last = use_channels_last(t, dev, arch)
    layout = torch.channels_last if channels_last else torch.preserve_format
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(bs, 3, crop, crop, generator=gen).to(dev, memory_format=layout)
    y = torch.randint(0, num_classes, (bs,), generator=gen).to(dev)
    steps, trainable = {}, 0  # precision: (step, first call's seconds, calls per block)
    for dtype in dict.fromkeys([None, torch.bfloat16, amp_dtype(t.amp, dev, arch)] if dev.type != "mps" else [None]):
        name = precision_name(dtype)
        progress.live(f"building the model ({phase_name}, {name})")
        model = model_mod.build_from_recipe(recipe, num_classes)
        model.to(dev, memory_format=layout)
        model_mod.set_trainable(model, groups)
        model.train()
        step = TrainStep(model, build_optimizer(model, t, groups), t, dev, dtype, channels_last=channels_last)

        def one_step(step=step):
            step(x, y)
            if dev.type == "cuda":
                torch.cuda.synchronize()
        progress.live(f"warming up the training step ({phase_name}, {name})")
        steps[name] = (one_step, *warm_up(one_step, timing))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    def on_block(r, name, k, total):
        progress.live(f"training step ({phase_name}, {name}) round {r + 1}/{timing.rounds}: {k * bs / total:.1f} img/s")
    lat, blocks, _ = interleaved_rounds({n: (s[0], s[2]) for n, s in steps.items()}, timing.rounds, on_block)
    phases = []
    for name, (_, first, k) in steps.items():
        latency, _, throughput = stats(lat[name], blocks[name], k, bs)
        phases.append(Phase(phase=phase_name, precision=name, groups=sorted(groups), trainable_params=int(trainable),
                            iterations=len(lat[name]), first_step_s=round(first, 4), throughput_ips=throughput,
                            latency_ms=latency))
    return phases


def _time_loader(recipe, items: list, timing: TrainSettings, progress) -> Loader:
    """The data loader's record: seconds to each next batch after the first (startup_s); sets the batches
    wanted in timing.loader_batches."""
    progress.live("starting the data loader")
    loader = data_mod.make_loader(items, recipe, train=True, generator=torch.Generator().manual_seed(0))
    n_batches = timing.loader_batches = timing.loader_batches or max(3, len(loader))
    tt = time.perf_counter()
    it = iter(loader)
    next(it)
    startup, times, sizes_seen = time.perf_counter() - tt, [], []
    deadline = time.perf_counter() + (timing.duration_s or float("inf"))
    while len(times) < n_batches and (time.perf_counter() < deadline or len(times) < 3):
        tt = time.perf_counter()
        try:
            xb, _ = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        times.append(time.perf_counter() - tt)
        sizes_seen.append(int(xb.shape[0]))
        progress.live(f"data loader: {len(times)} batches, {sum(sizes_seen) / sum(times):.1f} img/s")
    per_batch = np.asarray(sizes_seen) / np.maximum(np.asarray(times), 1e-9)
    overall = sum(sizes_seen) / sum(times) if times else 0.0
    ips = LoaderIps(*(round(float(v), 3) for v in (overall, np.median(per_batch), per_batch.min(), per_batch.max())))
    return Loader(workers=int(recipe.data.workers), batch_size=int(recipe.train.batch_size),
                  startup_s=round(startup, 4), batches=len(times), images=int(sum(sizes_seen)),
                  augment="recipe" if recipe.augment else "default", throughput_ips=ips)


def _limiter(step_ips: float, loader_ips: float, on_cpu: bool) -> tuple[Limiter, list]:
    """(which of step and loader limits an epoch, with advice; the notes)."""
    bound = "data loader" if loader_ips < step_ips else "training step"
    shared = 1.0 / (1.0 / step_ips + 1.0 / loader_ips) if on_cpu and step_ips and loader_ips else None
    advice = ("raise data.workers, lower the decode cost (smaller source images), or cache decoded images"
              if bound == "data loader" else "a GPU (with AMP and channels_last), a smaller crop or more frozen "
              "blocks speed it up; more loader workers won't")
    limiter = Limiter(bound_by=bound, step_ips=step_ips, loader_ips=round(loader_ips, 3),
                      ratio=round(loader_ips / step_ips, 3) if step_ips else None,
                      estimate_shared_cpu_ips=round(shared, 3) if shared else None, advice=advice)
    return limiter, [f"on CPU the loader's worker processes and the training step share the same cores; when both "
                     f"are CPU-bound, an epoch runs at about 1/(1/step + 1/loader) images/s (~{shared:.1f} img/s "
                     "here)"] if shared else []


def _record(recipe, recipe_path, command: str, dataset, dev, settings: TrainSettings, phases: list,
            loader: Loader, out_dir: str) -> dict:
    """benchmark.json's record of kind "train" (toolkit.runtime.benchmark.records.TrainRecord)."""
    t, arch = recipe.train, recipe.model.arch
    autocast = amp_dtype(t.amp, dev, arch)
    main = {ph.precision: ph.throughput_ips.median for ph in phases if ph.phase == phases[-1].phase}
    limiter, notes = _limiter(main[precision_name(autocast)], loader.throughput_ips.overall, dev.type == "cpu")
    if "bf16" in main:  # the side-by-side figure issue 22 asks for; the recipe trains at amp's choice
        notes.insert(0, f"training step bf16 / fp32: {main['bf16'] / main['fp32']:.2f}x ({phases[-1].phase} phase, "
                        f"amp: {t.amp} trains in {precision_name(autocast)} here)")
    return dataclasses.asdict(TrainRecord(
        **record_head("train", command, notes, out_dir, ("benchmark.json", "benchmark.md"), dev.type == "cuda"),
        recipe=TrainRecipe(path=os.fspath(recipe_path), name=recipe.name, arch=recipe.model.arch,
                           head=recipe.model.head, crop=int(recipe.preprocess.crop), classes=len(dataset.labels),
                           strategy=t.strategy, optimizer=t.optimizer, batch_size=int(t.batch_size),
                           amp=str(autocast).replace("torch.", "") if autocast else None,
                           channels_last=use_channels_last(t, dev, arch), train_images=len(dataset.train)),
        settings=settings, phases=phases, loader=loader, limiter=limiter,
        timed={"step": "one optimizer step on a synthetic batch already on the device: zero_grad, forward, "
                       "loss, backward, (grad clip), optimizer step, (CUDA synchronise); median over rounds",
               "loader": "time to receive each next batch from toolkit.train.data.make_loader(train split, "
                         "train=True) with the recipe's workers and augmentation, after its first batch (startup_s)",
               "limiter": "the smaller of step and loader images/s limits an epoch"}))
