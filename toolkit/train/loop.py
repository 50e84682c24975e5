"""The training loop: discriminative learning rates, schedules, safe checkpoints, exact resume, DDP.

One session runs in stages: check the run folder (and read last.pt to resume), load the data, build
the model and optimizer, restore a resumed run's state, write the run files, then the epochs (train,
validate, checkpoint: toolkit.train.session) and the summary. The batch order and augmentation are seeded (see
toolkit.train.sampling), so a resumed run sees the same batches as an uninterrupted one.

It reads as single-process code. Under torchrun the same loop runs in every process, and `Dist`
(toolkit.train.distributed) holds what differs: each global batch of train.batch_size images is split
across the ranks (sampling.EpochBatches), the model is wrapped for DDP (Dist.wrap), the loss is scaled
so DDP's gradient average is the single-process mean over the global batch (step.TrainStep), the
validation report is gathered over the ranks (Dist.gather_report), and rank 0 alone writes files.
"""
from __future__ import annotations

import os
import time

import torch

from toolkit import recipe as recipe_mod
from toolkit.errors import UserError
from toolkit.recipe import Recipe
from toolkit.train import resume as resume_mod
from toolkit.train.device import pick_device
from toolkit.train.distributed import Dist, is_collective_failure, launch
from toolkit.train.report import write_after_training
from toolkit.train.run_dir import (checkpoint_paths, make_run_dir, prepare_run_dir, release_run_dir, write_run_files,
                                   write_summary)
from toolkit.train.session import TrainOptions, TrainSession, silent
from toolkit.train.state import RunState, seed_everything
from toolkit.train.stop import StopRequest


def train(recipe: Recipe, resume: bool = False, overwrite: bool = False, stop_after_epochs: int | None = None,
          quiet: bool = False, evaluate_test: bool = True, report: bool = True, scan: bool = True,
          resumable: bool = True) -> dict:
    """Train a recipe end to end; returns the summary. `stop_after_epochs` ends this session early, as if
    interrupted after that many epochs (used by tests). `evaluate_test=False` leaves the test split to the
    caller (the demo scores last.pt itself). `report=False`: no report.html and no plots at the end (the
    demos' 30-odd short runs). `scan=False`: no pre-flight decode of every image and no data_health.json (the
    ImageNet demo's runs: the packaged Fashion-MNIST, 30-odd times). `resumable=False`: last.pt is written
    when the run ends or is stopped, not also after every better validation and every train.save_every
    epochs (a run that is never resumed: the ImageNet demo's, where those writes were 2% of a run).

    Under torchrun every process calls this; see the module docstring."""
    if not isinstance(recipe, Recipe):   # a path or a dict was an AttributeError from deep inside
        raise UserError(f"train: a {type(recipe).__name__}; expected a Recipe: toolkit.recipe.load(PATH) reads a "
                        "recipe file, toolkit.recipe.from_dict(DICT) a mapping")
    opts = TrainOptions(resume, overwrite, stop_after_epochs, quiet, evaluate_test, report, scan, resumable)
    ctx = Dist.from_env()
    device = ctx.place(pick_device(recipe.train.device))
    ctx.join(device, recipe.train.dist_timeout)
    broken = False
    try:
        return _train(recipe, ctx, device, opts)
    except Exception as exc:
        if ctx.active and is_collective_failure(exc):
            broken = True
            raise ctx.failure(exc, checkpoint_paths(recipe.run_dir)[0]) from None
        raise
    finally:
        # Leave the group on every way out (a process that exits inside one can abort in its destructor),
        # except a broken NCCL group, whose teardown can block on the peer that is gone.
        if not (broken and ctx.backend == "nccl"):
            ctx.leave()
        if ctx.is_main:
            release_run_dir(recipe.run_dir)


def _train(recipe: Recipe, ctx: Dist, device: torch.device, opts: TrainOptions) -> dict:
    started = time.time()
    # Rank 0 checks the run folder and reads last.pt; every rank gets the checkpoint (no shared disk needed).
    resumed = ctx.on_main(lambda: _open_run(recipe, opts))
    if resumed is not None:
        recipe = resume_mod.resumed_recipe(recipe, _saved_recipe(recipe, resumed))
        ctx.on_main(lambda: resume_mod.check_unfinished(recipe, RunState(**resumed["run_state"])))  # said once
    seed_everything(recipe.seed, recipe.train.deterministic)
    run = TrainSession(recipe, ctx, device, opts, resumed)
    run.load_data()
    run.build_model()
    run.restore()
    if ctx.is_main:
        make_run_dir(recipe.run_dir, opts.overwrite, opts.resume)
        write_run_files(recipe, run.model, run.state.epoch, run.say, run.dataset.health)
    run.build_loaders()
    with StopRequest(announce=ctx.is_main) as stop:
        run.epochs(stop)
    if run.tb is not None:
        run.tb.close()
    if not ctx.is_main:
        return {"run": recipe.run_dir, "rank": ctx.rank}
    summary = write_summary(recipe, run.dataset if opts.evaluate_test else None, device, run.state, started,
                            opts.quiet, world=ctx.world)
    if opts.report:
        run.plots()  # before the report, which shows curves.png
        write_after_training(recipe.run_dir, run.say, run.dataset)
    return summary


def _open_run(recipe: Recipe, opts: TrainOptions) -> dict | None:
    """Rank 0: the run folder checked (and last.pt read, when resuming: a recipe that would change the
    run's model or data is refused there, and each other difference said; toolkit.train.resume)."""
    resumed = prepare_run_dir(recipe.run_dir, opts.resume, opts.overwrite)
    if resumed is not None:
        resume_mod.check_resume(recipe, _saved_recipe(recipe, resumed), silent if opts.quiet else print)
    return resumed


def _saved_recipe(recipe: Recipe, resumed: dict) -> Recipe:
    """The recipe saved in last.pt."""
    return recipe_mod.from_dict(resumed["recipe"], source=f"{checkpoint_paths(recipe.run_dir)[0]} (recipe)",
                                check_paths=False)


def train_command(recipe: str, overrides: list[str], resume: bool = False, overwrite: bool = False,
                  nproc: int = 1) -> int:
    """`toolkit train RECIPE [KEY=VALUE...]`: train here, or with nproc > 1 in that many processes on this
    machine (torchrun --standalone, the same elastic agent); returns the exit status."""
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise UserError(f"--nproc {nproc!r}: expected a whole number of processes, at least 1")
    if nproc > 1 and "WORLD_SIZE" in os.environ:
        raise UserError("--nproc: already running under torchrun; drop --nproc (torchrun's --nproc-per-node sets it)")
    recipe_obj = recipe_mod.load(recipe, overrides)  # a bad recipe fails here, once, not in every process
    if nproc == 1:
        train(recipe_obj, resume=resume, overwrite=overwrite)
        return 0
    argv = ["train", str(recipe), *overrides] + ["--resume"] * resume + ["--overwrite"] * overwrite
    return launch(nproc, argv)


