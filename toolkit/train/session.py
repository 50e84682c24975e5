"""One training session of `toolkit train` (toolkit.train.loop runs it): the pieces its stages build (data,
model and optimizer, a resumed run's state, the loaders, the teacher), and the epochs over them (train,
validate, checkpoint, log), on one process or on each rank under torchrun (toolkit.train.distributed)."""
from __future__ import annotations

import math
import os
import shlex
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from toolkit import recipe as recipe_mod
from toolkit.errors import UserError
from toolkit.recipe import Recipe
from toolkit.train import data as data_mod
from toolkit.train import balance
from toolkit.train import distill
from toolkit.train import model as model_mod
from toolkit.train.checkpoint import load_model_state, load_optimizer_state, save_checkpoint
from toolkit.train.device import amp_dtype, use_channels_last
from toolkit.train.distill_data import unlabeled_items
from toolkit.train.distributed import IGNORE, Dist
from toolkit.train.evaluate import collect_logits
from toolkit.train.plots import save_plots
from toolkit.train.run_dir import append_metrics, checkpoint_paths, write_distill
from toolkit.train.sampling import EpochBatches, ReplayedBatches, SeededAugmentation, run_loader
from toolkit.train.schedule import LrSchedule
from toolkit.train.state import RunState, rng_state, seed_everything, set_rng_state
from toolkit.train.step import TrainStep, build_optimizer
from toolkit.train.stop import StopRequest
from toolkit.train.tensorboard import TensorBoardLog


class NonFiniteLoss(UserError):
    pass


@dataclass
class TrainOptions:
    """How one session runs: the keyword arguments of `train`."""
    resume: bool = False  # continue from checkpoints/last.pt
    overwrite: bool = False  # replace a run folder that already holds a trained run
    stop_after_epochs: int | None = None  # end this session after that many epochs, as if interrupted (tests)
    quiet: bool = False  # no log lines, no progress bar
    evaluate_test: bool = True  # score best.pt on the test split for summary.json (the demo scores last.pt itself)
    report: bool = True  # write report.html / report.json, curves.png and confusion.png at the end
    scan: bool = True  # decode every image first and measure the data's health (data_health.json)
    resumable: bool = True  # False: last.pt only when the run ends or is stopped (a run nobody resumes)


def silent(*_args, **_kwargs) -> None:
    pass


class TrainSession:
    """One training session: the pieces the stages build, and the epochs over them."""

    def __init__(self, recipe: Recipe, ctx: Dist, device: torch.device, opts: TrainOptions, resumed: dict | None):
        self.recipe, self.t, self.ctx, self.device, self.opts = recipe, recipe.train, ctx, device, opts
        self.resumed = resumed
        self.main = ctx.is_main  # rank 0 alone writes files and prints
        self.say = print if self.main and not opts.quiet else silent
        self.last_path, self.best_path = checkpoint_paths(recipe.run_dir)
        self.state = RunState()
        self.last_metrics = resumed["metrics"] if resumed else {}
        self.nonfinite = 0  # non-finite losses so far
        self.tb: TensorBoardLog | None = None  # rank 0's TensorBoard log (build_loaders opens it)
        self.confusion = None  # this epoch's validation confusion matrix, for TensorBoard

    # -- stages ---------------------------------------------------------------------------------
    def load_data(self) -> None:
        # Rank 0 downloads (if anything) and decodes every image once; the other ranks get its file lists.
        self.dataset = self.ctx.on_main(lambda: data_mod.load_dataset(self.recipe, scan=self.opts.scan,
                                                                           quiet=self.opts.quiet))
        self.labels = self.dataset.labels
        if not self.dataset.train:
            raise UserError("data: the training split is empty")
        if not self.dataset.val:
            raise UserError(_empty_val_message(self.recipe.data))
        self.ctx.check_training(self.t, self.device)
        unlabeled = self.recipe.data.unlabeled
        self.unlabeled = self.ctx.on_main(lambda: unlabeled_items(self.recipe, distill.UNLABELLED,
                                                                  progress=not self.opts.quiet)) if unlabeled else []

    def build_model(self) -> None:
        recipe, t, ctx, device = self.recipe, self.t, self.ctx, self.device
        model = model_mod.build_from_recipe(recipe, num_classes=len(self.labels))  # same seed: same init everywhere
        if self.resumed is None:
            loaded = ctx.on_main(lambda: model_mod.load_weights(model, recipe.model.weights, recipe.model.arch,
                                                                self.labels))
            self.say(f"weights: {loaded}")
        else:
            load_model_state(model, self.resumed["model"], self.last_path)
        if t.sync_batchnorm and ctx.active:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        channels_last = use_channels_last(t, device, recipe.model.arch)
        model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
        if self.resumed is None:
            ctx.broadcast_module(model)  # rank 0 loaded the weights (on the device: NCCL only moves GPU tensors)
        if ctx.rank > 0:
            seed_everything(recipe.seed + 1_000_003 * ctx.rank, t.deterministic)  # own dropout masks per rank
        # Every group that trains at some point is in the optimizer from the start; frozen ones have no grad.
        ever_trained = set().union(*(model_mod.trainable_groups(t, e) for e in range(t.epochs)))
        self.model = model
        self.step = TrainStep(model, build_optimizer(model, t, ever_trained), t, device,
                              amp_dtype(t.amp, device, recipe.model.arch),
                              balance.loss_weights(t, self.dataset.train, len(self.labels)), channels_last)
        self.val_criterion = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
        self.distiller = None
        if t.teacher:
            load = lambda: distill.load_teacher(recipe, self.labels, device, self.step.autocast)  # noqa: E731
            loaded: list = []   # rank 0 loads it first, so what is wrong with it is said once; then the others
            ctx.on_main(lambda: loaded.append(load()))
            teacher = loaded[0] if loaded else load()
            self.distiller = self.step.distill = distill.Distiller(teacher, t.distill_alpha, t.distill_temperature)

    def restore(self) -> None:
        """A resumed run's optimizer, scaler, run state and this rank's RNG state."""
        resumed = self.resumed
        if resumed is None:
            return
        load_optimizer_state(self.step.optimizer, resumed["optimizer"], self.last_path)
        if "scaler" in resumed and resumed["scaler"]:
            self.step.scaler.load_state_dict(resumed["scaler"])
        self.state = RunState(**resumed["run_state"])
        per_rank = resumed.get("rng_ranks") or []
        if len(per_rank) == self.ctx.world:
            set_rng_state(per_rank[self.ctx.rank])
        elif self.main:
            set_rng_state(resumed["rng"])
        self.say(f"resuming {self.recipe.run_dir} at epoch {self.state.epoch + 1}" +
                 (f", batch {self.state.step_in_epoch + 1}" if self.state.step_in_epoch else ""))

    def build_loaders(self) -> None:
        recipe, t, ctx, dataset = self.recipe, self.t, self.ctx, self.dataset
        preprocess, augment = data_mod.eval_preprocess(recipe), data_mod.build_augment(recipe)
        items = dataset.train + self.unlabeled  # photos without labels last: only the teacher labels them
        self.train_set = SeededAugmentation(
            data_mod.ImageDataset(items, preprocess, augment=augment, max_pixels=recipe.data.max_pixels), recipe.seed)
        if self.distiller is not None:
            self.start_distilling(items, augment, preprocess)
        val_set = data_mod.ImageDataset(dataset.val, preprocess, max_pixels=recipe.data.max_pixels)
        # Each rank validates its share of the images; the report is gathered, so every rank sees the same one.
        self.val_loader = ReplayedBatches(run_loader(val_set, recipe.data.workers, self.device,
                                                     sampler=ctx.share(len(val_set)),
                                                     batch_size=max(1, t.batch_size // ctx.world)))
        self.sample_weights = balance.sample_weights(t, dataset.train, len(self.labels))
        self.say(balance.describe(t, dataset.train, self.labels))
        self.steps_per_epoch = math.ceil(len(self.train_set) / t.batch_size)
        if self.main:
            self.tb = TensorBoardLog(recipe.run_dir, self.labels, first_epoch=self.state.epoch, say=self.say,
                                     enabled=t.tensorboard)
        self.schedule = LrSchedule(t, self.steps_per_epoch)
        autocast = self.step.autocast
        self.say(f"data: {len(dataset.train)} train / {len(dataset.val)} val / {len(dataset.test)} test images, "
                 f"{len(self.labels)} classes; device {self.device}" + (f", autocast {autocast}" if autocast else "")
                 + (f"; {ctx.world} processes ({ctx.backend}), global batch {t.batch_size}" if ctx.active else ""))

    def start_distilling(self, items: list, augment, preprocess) -> None:
        """The teacher's logits cached now when train.distill_cache allows, else computed per batch; said
        and written to distill.json."""
        t, dist = self.t, self.distiller
        if distill.wants_cache(t.distill_cache, augment, preprocess):
            self.train_set = distill.WithIndex(self.train_set)  # batches carry their indices, for the cache
            dist.build_cache(items, self.recipe.data.max_pixels, max(1, t.batch_size))
        elif not dist.teacher.same_input:  # per batch: the teacher sees the same view, at its own input
            self.train_set = dist.with_own_views(self.train_set, items, self.recipe)
        info = dist.describe()
        self.say(f"distill: teacher {info['teacher']}, alpha {t.distill_alpha:g}, T {t.distill_temperature:g}; "
                 + (f"its logits cached for {len(items)} images in {dist.cache_seconds:.1f}s"
                    if dist.cache is not None else "its logits computed per batch ("
                    + ("the augmentation is random)" if t.distill_cache == "auto" else "train.distill_cache: never)"))
                 + (f"; {len(self.unlabeled)} photos without labels" if self.unlabeled else "")
                 + f"; teacher input {info['teacher_input']}")
        if self.main:
            write_distill(self.recipe.run_dir, {**info, "labelled_images": len(self.dataset.train),
                                                "unlabeled_images": len(self.unlabeled)})

    # -- the epochs -------------------------------------------------------------------------------
    def epochs(self, stop: StopRequest) -> None:
        t, state = self.t, self.state
        first_epoch = state.epoch
        if t.early_stopping and state.stale_evals >= t.early_stopping:
            return   # resumed after it stopped early, only to write its summary (resume.check_unfinished)
        while state.epoch < t.epochs:
            trainable, totals, seconds, stopping = self.train_epoch(stop)
            if stopping and state.step_in_epoch < self.steps_per_epoch:
                self.save_last()
                self.stop_now(stop, f"stopped: saved {self.last_path} at epoch {state.epoch + 1}, batch "
                                    f"{state.step_in_epoch}/{self.steps_per_epoch}; continue with: "
                                    f"{self.resume_command()}")
            record, improved = self.end_epoch(trainable, totals, seconds)
            (stopping,) = self.ctx.any([stopping or stop.requested])  # a signal during validation
            early = bool(t.early_stopping and state.stale_evals >= t.early_stopping)
            # best.pt before last.pt: if a write fails (disk full), last.pt stays behind best.pt, so a resume
            # redoes this epoch and writes both again, and best.pt never lags what last.pt says is best.
            if improved and self.main:
                self.check_weights()
                save_checkpoint(self.best_path, self.checkpoint_state())
            periodic = self.opts.resumable and (state.epoch % t.save_every == 0 or improved)
            if periodic or state.epoch == t.epochs or stopping or early:
                self.save_last()
            self.log_epoch(record, improved)
            if early:
                self.say(f"early stopping: no better val top-1 in {state.stale_evals} evaluations")
                break
            if stopping:
                self.stop_now(stop, f"stopped after epoch {state.epoch}: saved {self.last_path}; continue with: "
                                    f"{self.resume_command()}")
            if self.opts.stop_after_epochs is not None and state.epoch - first_epoch >= self.opts.stop_after_epochs:
                self.save_last()
                break

    def resume_command(self) -> str:
        """What a stopped run prints to continue it (the same number of processes under DDP)."""
        return f"toolkit train {shlex.quote(os.path.join(self.recipe.run_dir, 'recipe.yaml'))} --resume" + (
            f" --nproc {self.ctx.world}" if self.ctx.active else "")

    def train_epoch(self, stop: StopRequest) -> tuple[set, list, float, bool]:
        """This epoch's batches from state.step_in_epoch on. Returns (the groups trained, [images, summed
        loss, correct] over every rank, seconds, whether any rank was asked to stop)."""
        from tqdm import tqdm

        t, state = self.t, self.state
        trainable = model_mod.trainable_groups(t, state.epoch)
        model_mod.set_trainable(self.model, trainable)
        self.step.net = self.ctx.wrap(self.model, self.device, trainable)
        self.step.net.train()  # keeps frozen groups' BatchNorm in eval mode
        batches = EpochBatches(len(self.train_set), self.recipe.seed, state.epoch, t.batch_size, self.ctx,
                               skip=state.step_in_epoch, weights=self.sample_weights)
        global_sizes = batches.global_sizes()
        loader = run_loader(self.train_set, self.recipe.data.workers, self.device, batch_sampler=batches)
        totals, stopping, tick = [0, 0.0, 0, 0], False, time.time()
        bar = tqdm(loader, total=len(loader), desc=f"epoch {state.epoch + 1}/{t.epochs}", unit="batch",
                   leave=False, disable=self.opts.quiet or not self.main, dynamic_ncols=True, file=sys.stderr)
        for i, batch in enumerate(bar):
            stopping, stepped = self.take_step(batch, global_sizes[i], stop, totals)
            if stepped:
                seen = max(totals[0], 1)
                bar.set_postfix(loss=f"{totals[1] / seen:.3f}", acc=f"{100 * totals[2] / max(totals[3], 1):.1f}%",
                                lr=f"{self.step.optimizer.param_groups[-1]['lr']:.2e}", refresh=False)
                if stopping:
                    break
        bar.close()
        seconds = time.time() - tick
        return trainable, self.ctx.sum(totals), seconds, stopping  # the global batch's totals

    def take_step(self, batch, global_size: int, stop: StopRequest, totals: list) -> tuple[bool, bool]:
        """One batch ((images, targets), and the teacher's indices or views when distilling); adds [images,
        summed loss, correct, labelled images] to `totals`. Returns (stop after this step, whether the
        weights were updated)."""
        state = self.state
        self.schedule.apply(self.step.optimizer, state.global_step)
        images, targets, *extra = batch  # distilling: the indices (cache) or the teacher's own views
        teacher = self.distiller.soft_targets(images, *extra) if self.distiller is not None else None
        logits, loss, targets = self.step.forward(images, targets, teacher)
        # Every rank takes the same branch: skip the step if any rank's loss is not finite, and stop
        # after this step if any rank was asked to stop.
        bad, stopping = self.ctx.any([not bool(torch.isfinite(loss)), stop.requested])
        if bad:
            self.step.skip()
            self.count_nonfinite()
        else:
            self.step.update(loss, self.ctx.world / global_size)
        state.step_in_epoch += 1
        state.global_step += 1
        if not bad:
            labelled = targets >= 0  # not padding (IGNORE), not a photo without a label (distill.UNLABELLED)
            totals[0] += int((targets != IGNORE).sum())
            totals[1] += float(loss.detach())
            totals[2] += int(((logits.argmax(1) == targets) & labelled).sum())
            totals[3] += int(labelled.sum())
        return stopping, not bad

    def count_nonfinite(self) -> None:
        self.nonfinite += 1
        epoch, step = self.state.epoch + 1, self.state.step_in_epoch + 1
        self.say(f"\nwarning: non-finite loss at epoch {epoch} step {step} ({self.nonfinite}/{self.t.nan_patience})",
                 file=sys.stderr)
        if self.nonfinite >= self.t.nan_patience:
            raise NonFiniteLoss(
                f"training diverged: {self.nonfinite} non-finite losses, the last at epoch {epoch} step {step}; "
                f"weights from that point were not saved ({self.last_path} holds the last good epoch). Try a lower "
                f"train.lr or set train.grad_clip")

    def end_epoch(self, trainable: set, totals: list, seconds: float) -> tuple[dict, bool]:
        """Count the epoch done, validate when due; returns (its metrics record, whether top-1 improved)."""
        t, state = self.t, self.state
        seen, loss_sum, correct, labelled = totals
        state.epoch += 1
        state.step_in_epoch = 0
        record = {
            "epoch": state.epoch, "trainable": sorted(trainable),
            "train_loss": loss_sum / max(seen, 1), "train_top1": 100 * correct / max(labelled, 1),
            "val_loss": None, "val_top1": None, "val_top5": None, "val_mean_per_class": None,
            "lr": {g.get("group", g["name"]): g["lr"] for g in self.step.optimizer.param_groups},
            "images_per_s": seen / max(seconds, 1e-9), "epoch_time_s": seconds,
        }
        improved, self.confusion = False, None
        if state.epoch % t.eval_every == 0 or state.epoch == t.epochs:
            improved = self.validate(record)
        state.history.append(record)
        if self.main:
            # The log line goes first: after a crash between the two, resume trims it back to the checkpoint.
            append_metrics(self.recipe.run_dir, record)
            self.tb.log_epoch(record, self.confusion)
        return record, improved

    def validate(self, record: dict) -> bool:
        """Validation scores into `record`, the best so far tracked; returns whether top-1 improved."""
        state = self.state
        logits, targets, loss = collect_logits(self.model, self.val_loader, self.device, self.step.autocast,
                                               self.val_criterion, self.step.channels_last)
        report = self.ctx.gather_report(logits, targets, loss, self.labels)
        record.update(val_loss=report["loss"], val_top1=report["top1"], val_top5=report["top5"],
                      val_mean_per_class=report["mean_per_class"])
        improved = report["top1"] > state.best_top1
        self.confusion = report["confusion"]
        if improved:
            state.best_top1, state.best_epoch, state.stale_evals = report["top1"], state.epoch, 0
            state.best_confusion = report["confusion"]
        else:
            state.stale_evals += 1
        self.last_metrics = {k: record[k] for k in ("epoch", "val_loss", "val_top1", "val_top5", "val_mean_per_class")}
        self.last_metrics["best_top1"], self.last_metrics["best_epoch"] = state.best_top1, state.best_epoch
        return improved

    def log_epoch(self, record: dict, improved: bool) -> None:
        if record["val_top1"] is not None:
            self.say(f"epoch {record['epoch']}/{self.t.epochs}  train loss {record['train_loss']:.4f} top-1 "
                     f"{record['train_top1']:.1f}%  val loss {record['val_loss']:.4f} top-1 {record['val_top1']:.2f}% "
                     f"top-5 {record['val_top5']:.2f}%  {record['images_per_s']:.0f} img/s"
                     + ("  *best*" if improved else ""))

    # -- saving and stopping ------------------------------------------------------------------------
    def checkpoint_state(self, rngs: list | None = None) -> dict:
        """What best.pt holds; with every rank's RNG states (`rngs`), what last.pt holds to resume from."""
        state, step = self.state, self.step
        out = {"model": self.model.state_dict(), "epoch": state.epoch, "step": state.global_step,
               "labels": list(self.labels), "recipe": recipe_mod.to_dict(self.recipe), "metrics": self.last_metrics,
               "best_top1": state.best_top1, "run_state": state.__dict__.copy()}
        if rngs is not None:
            out.update(optimizer=step.optimizer.state_dict(),
                       scaler=step.scaler.state_dict() if step.scaler.is_enabled() else {}, rng=rngs[0],
                       **({"rng_ranks": rngs, "world_size": self.ctx.world} if self.ctx.active else {}))
        return out

    def check_weights(self) -> None:
        if not all(torch.isfinite(p).all() for p in self.model.state_dict().values() if p.is_floating_point()):
            raise NonFiniteLoss(f"non-finite weights at epoch {self.state.epoch + 1}; not saving them "
                                f"(the last good checkpoint is {self.last_path})")

    def save_last(self) -> None:
        """Every rank calls this (its RNG state goes into the checkpoint); rank 0 writes."""
        self.check_weights()
        rngs = self.ctx.gather(rng_state())
        if self.main:
            save_checkpoint(self.last_path, self.checkpoint_state(rngs))

    def plots(self) -> None:
        state = self.state
        save_plots(self.recipe.run_dir, state.history, state.best_confusion, self.labels, state.best_top1)

    def stop_now(self, stop: StopRequest, message: str) -> None:
        """After a stop signal (last.pt saved): the plots, how to continue, exit 128 + the signal."""
        if self.main:
            self.plots()
            print(message, file=sys.stderr)
        sys.exit(stop.exit_status())




def _empty_val_message(data) -> str:
    """Why validation is empty: no fraction held out, or classes too small to hold one out."""
    fraction = getattr(data, "val_fraction", 0) or 0
    if fraction > 0:
        return (f"data: the validation split is empty: at data.val_fraction {fraction} a class needs at least 2 "
                "images to hold one out for validation and keep one for training; add images or a val/ folder")
    return "data: the validation split is empty; set data.val_fraction above 0 or add a val/ folder"
