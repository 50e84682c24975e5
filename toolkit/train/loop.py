"""The training loop: discriminative learning rates, schedules, safe checkpoints, exact resume, DDP.

Reproducibility is built in, not bolted on: the shuffle order of epoch e comes from (seed, e), and each
sample's augmentation from (seed, e, index), whatever the worker count. So a resumed run, or one
interrupted mid-epoch, sees the same batches and the same augmented pixels as an uninterrupted one.

Under torchrun the same loop runs in every process (see toolkit/distributed.py): each global batch of
train.batch_size images is split across the ranks, the loss is scaled so DistributedDataParallel's
gradient average equals the single-process mean over the global batch, and rank 0 alone writes files.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Sampler

from toolkit import recipe as recipe_mod
from toolkit.artifacts import atomic_path, atomic_write
from toolkit.train.checkpoint import load_checkpoint, save_checkpoint
from toolkit.train.distributed import IGNORE, Dist, is_collective_failure
from toolkit.errors import UserError
from toolkit.train.evaluate import collect_logits
from toolkit.metrics import classification_report
from toolkit.recipe import Recipe


# ---------------------------------------------------------------------------------------------
# Schedules: the learning rate is a pure function of the step, so restoring the step restores it.

def lr_factor(step: int, phase_start: int, phase_steps: int, schedule: str, warmup_steps: int) -> float:
    """Multiplier on each group's base rate at `step`, within a phase of `phase_steps` steps."""
    t = step - phase_start
    if schedule == "constant" or phase_steps <= 1:
        return 1.0
    if schedule == "onecycle":
        # Warm up over the first 25% from 1/25 of the peak, then cosine-anneal to ~0 (Smith's one-cycle).
        up = max(1, int(0.25 * phase_steps))
        if t < up:
            return 0.04 + 0.96 * (1 - math.cos(math.pi * t / up)) / 2
        frac = (t - up) / max(1, phase_steps - up)
        return 1e-4 + (1 - 1e-4) * (1 + math.cos(math.pi * min(frac, 1.0))) / 2
    # cosine with linear warm-up
    if t < warmup_steps:
        return (t + 1) / (warmup_steps + 1)
    frac = (t - warmup_steps) / max(1, phase_steps - warmup_steps)
    return (1 + math.cos(math.pi * min(frac, 1.0))) / 2


# ---------------------------------------------------------------------------------------------
# Data order and augmentation seeded by (seed, epoch, index).

def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled order of one epoch's n samples, from (seed, epoch) alone."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


class EpochBatches(Sampler):
    """This rank's part of each global batch of one epoch, as lists of encoded sample indices.

    The global batches are the epoch's shuffled order cut into `batch_size` pieces, the same for any
    number of processes; `dist.shard` gives each rank its part. Each index is encoded as epoch * n + i,
    so the dataset (even in a persistent worker) knows the epoch; a padding entry (see Dist.shard) as
    -(code + 1). `skip` global batches are left out, to resume mid-epoch.
    """

    def __init__(self, n: int, seed: int, epoch: int, batch_size: int, dist: Dist, skip: int = 0):
        self.n, self.seed, self.epoch = n, seed, epoch
        self.batch_size, self.dist, self.skip = batch_size, dist, skip

    def global_sizes(self) -> list[int]:
        n, b = self.n, self.batch_size
        return [min(b, n - start) for start in range(0, n, b)][self.skip:]

    def __iter__(self):
        codes = [self.epoch * self.n + i for i in epoch_order(self.n, self.seed, self.epoch)]
        for start in range(self.skip * self.batch_size, len(codes), self.batch_size):
            part, padding = self.dist.shard(codes[start:start + self.batch_size])
            yield [-(c + 1) for c in part] if padding else part

    def __len__(self):
        return len(self.global_sizes())


class SeededAugmentation(Dataset):
    """Wraps a training ImageDataset: each sample's augmentation is seeded by (seed, epoch, index), so it
    does not depend on worker count, worker seeds, or where in the epoch a resumed run starts.
    A negative code is padding: the sample loads as usual but its target is IGNORE."""

    def __init__(self, inner, seed: int):
        self.inner, self.seed = inner, seed

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, encoded: int):
        padding = encoded < 0
        epoch, index = divmod(-encoded - 1 if padding else encoded, len(self.inner))
        image, target = self.inner.load(
            index, seed=int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0]))
        return image, IGNORE if padding else target


def _worker_init(_worker_id: int) -> None:
    # Ctrl-C goes to the whole process group: let the main process alone decide when to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)


def _loader(dataset, workers, device, sampler=None, batch_size=None, batch_sampler=None) -> DataLoader:
    # A fixed generator keeps the DataLoader from drawing on (and shifting) the global torch RNG.
    return DataLoader(dataset, batch_size=batch_size if batch_sampler is None else 1, sampler=sampler,
                      batch_sampler=batch_sampler, num_workers=workers,
                      worker_init_fn=_worker_init if workers else None, pin_memory=device.type == "cuda",
                      generator=torch.Generator().manual_seed(0), persistent_workers=False)


# ---------------------------------------------------------------------------------------------
# RNG state as tensors and plain types, so checkpoints load with weights_only=True.

def _rng_state() -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos),
                                                      int(has_gauss), float(gauss)],
             "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device: cuda requested but torch sees no CUDA device; use device: auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("train.device: mps requested but it is not available; use device: auto or cpu")
    return torch.device(name)


def amp_dtype(mode: str, device: torch.device):
    """The autocast dtype, or None. Mixed precision is a CUDA feature here."""
    if device.type != "cuda" or mode == "off":
        return None
    if mode == "fp16":
        return torch.float16
    if mode == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


# ---------------------------------------------------------------------------------------------

def build_optimizer(model, t, groups) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum) or AdamW over `groups`, each layer group at its discriminative rate."""
    from toolkit.train import model as model_mod

    param_groups = model_mod.optimizer_param_groups(model, model_mod.group_learning_rates(t), t.weight_decay,
                                                    groups=groups)
    if t.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=t.lr, momentum=t.momentum, nesterov=t.momentum > 0)
    return torch.optim.AdamW(param_groups, lr=t.lr)


class _StopRequest:
    """SIGINT/SIGTERM handler: finish the current batch, save, exit. A second Ctrl-C stops at once."""

    def __init__(self, announce: bool = True):
        self.signum = None
        self.announce = announce  # under torchrun only rank 0 says so
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, _frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        if self.announce:
            print(f"\n{signal.Signals(signum).name} received: finishing this batch, then saving", file=sys.stderr,
                  flush=True)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class NonFiniteLoss(UserError):
    pass


@dataclass
class RunState:
    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # batches of the current epoch done (non-zero only after an interruption)
    global_step: int = 0
    best_top1: float = -1.0
    best_epoch: int = 0
    stale_evals: int = 0  # validations in a row without a better top-1
    best_confusion: list | None = None  # the best validation's confusion matrix, for confusion.png
    history: list = field(default_factory=list)


def _is_finite(model: nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in model.state_dict().values() if p.is_floating_point())


def train(recipe: Recipe, resume: bool = False, overwrite: bool = False, stop_after_epochs: int | None = None,
          quiet: bool = False, evaluate_test: bool = True) -> dict:
    """Train a recipe end to end; returns the summary. `stop_after_epochs` ends this session early, as if
    interrupted after that many epochs (used by tests). `evaluate_test=False` leaves the test split to the
    caller (the demo scores last.pt itself).

    Under torchrun every process calls this; see the module docstring."""
    ctx = Dist.from_env()
    device = ctx.place(pick_device(recipe.train.device))
    ctx.join(device, recipe.train.dist_timeout)
    broken = False
    try:
        return _train(recipe, ctx, device, resume, overwrite, stop_after_epochs, quiet, evaluate_test)
    except Exception as exc:
        if ctx.active and is_collective_failure(exc):
            broken = True
            raise ctx.failure(exc, os.path.join(recipe.run_dir, "checkpoints", "last.pt")) from None
        raise
    finally:
        # Leave the group on every way out (a process that exits inside one can abort in its destructor),
        # except a broken NCCL group, whose teardown can block on the peer that is gone.
        if not (broken and ctx.backend == "nccl"):
            ctx.leave()


def _prepare_run_dir(recipe: Recipe, resume: bool, overwrite: bool) -> dict | None:
    """Check the run folder against --resume / --overwrite, make it, and load last.pt when resuming."""
    run_dir = recipe.run_dir
    last_path = os.path.join(run_dir, "checkpoints", "last.pt")
    if resume:
        if not os.path.isfile(last_path):
            raise UserError(f"{last_path}: nothing to resume; train without --resume to start the run")
        return load_checkpoint(last_path)
    if os.path.exists(last_path):
        if not overwrite:
            raise UserError(f"{run_dir}: already holds a trained run; pass --resume to continue it, --overwrite to "
                            f"replace it, or set another name (e.g. name=<new>)")
        shutil.rmtree(run_dir)
    os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
    return None


def _check_distributed(t, world: int, device: torch.device, sync_bn: bool) -> None:
    if world > t.batch_size:
        raise UserError(f"train.batch_size {t.batch_size}: smaller than the {world} processes; the global batch "
                        f"is split across them, so expected at least {world}")
    if sync_bn and device.type != "cuda":
        raise UserError("train.sync_batchnorm: PyTorch's SyncBatchNorm runs on CUDA devices only; set it to false "
                        "for distributed training on the CPU")


def _train(recipe: Recipe, ctx: Dist, device: torch.device, resume: bool, overwrite: bool,
           stop_after_epochs: int | None, quiet: bool, evaluate_test: bool) -> dict:
    from toolkit.train import data as data_mod
    from toolkit.train import model as model_mod

    started = time.time()
    run_dir = recipe.run_dir
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    last_path, best_path = os.path.join(ckpt_dir, "last.pt"), os.path.join(ckpt_dir, "best.pt")
    main = ctx.is_main  # rank 0 alone writes files and prints

    # Rank 0 checks the run folder and reads last.pt; every rank gets the checkpoint (no shared disk needed).
    resumed = ctx.on_main(lambda: _prepare_run_dir(recipe, resume, overwrite))
    if resumed is not None:
        saved = recipe_mod.from_dict(resumed["recipe"], source=f"{last_path} (recipe)", check_paths=False)
        saved.train.epochs = recipe.train.epochs  # a resume may train longer ...
        saved.train.device = recipe.train.device  # ... and run on another machine
        saved.train.dist_timeout = recipe.train.dist_timeout
        recipe = saved

    t = recipe.train
    seed_everything(recipe.seed, t.deterministic)
    say = print if main and not quiet else (lambda *a, **k: None)

    # Rank 0 downloads (if anything) and decodes every image once; the other ranks get its file lists.
    dataset = ctx.on_main(lambda: data_mod.load_dataset(recipe))
    labels = dataset.labels
    if not dataset.train:
        raise UserError("data: the training split is empty")
    if not dataset.val:
        raise UserError("data: the validation split is empty; set data.val_fraction above 0 or add a val/ folder")
    sync_bn = t.sync_batchnorm and ctx.active
    ctx.on_main(lambda: _check_distributed(t, ctx.world, device, sync_bn))

    model = model_mod.build_from_recipe(recipe, num_classes=len(labels))  # same seed: same init on every rank
    if resumed is None:
        loaded = ctx.on_main(lambda: model_mod.load_weights(model, recipe.model.weights, recipe.model.arch, labels))
        say(f"weights: {loaded}")
    else:
        model.load_state_dict(resumed["model"])
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    channels_last = t.channels_last and device.type == "cuda"
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    if resumed is None:
        ctx.broadcast_module(model)  # rank 0 loaded the weights (on the device: NCCL only moves GPU tensors)
    if ctx.rank > 0:
        seed_everything(recipe.seed + 1_000_003 * ctx.rank, t.deterministic)  # own dropout masks per rank

    lrs = model_mod.group_learning_rates(t)
    ever_trained = set().union(*(model_mod.trainable_groups(t, e) for e in range(t.epochs)))
    # Every group that trains at some point is in the optimizer from the start; frozen ones have no grad.
    optimizer = build_optimizer(model, t, ever_trained)

    autocast = amp_dtype(t.amp, device)
    scaler = torch.amp.GradScaler("cuda", enabled=autocast is torch.float16)
    # Summed, then scaled by world / (images in the global batch): DDP's average over ranks is then the
    # mean over the global batch, however it was split. Padding targets (IGNORE) add nothing.
    criterion = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing, reduction="sum", ignore_index=IGNORE)
    val_criterion = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)

    state = RunState()
    if resumed is not None:
        optimizer.load_state_dict(resumed["optimizer"])
        if "scaler" in resumed and resumed["scaler"]:
            scaler.load_state_dict(resumed["scaler"])
        state = RunState(**resumed["run_state"])
        per_rank = resumed.get("rng_ranks") or []
        if len(per_rank) == ctx.world:
            _set_rng_state(per_rank[ctx.rank])
        elif main:
            _set_rng_state(resumed["rng"])
        say(f"resuming {run_dir} at epoch {state.epoch + 1}" +
            (f", batch {state.step_in_epoch + 1}" if state.step_in_epoch else ""))

    if main:
        atomic_write(os.path.join(run_dir, "recipe.yaml"), recipe_mod.dump(recipe))
        table = model_mod.param_group_table(model, lrs, model_mod.trainable_from(t))
        atomic_write(os.path.join(run_dir, "param_groups.txt"), table + "\n")
        say(table)
        _truncate_metrics(os.path.join(run_dir, "metrics.jsonl"), state.epoch)

    preprocess = data_mod.eval_preprocess(recipe)
    train_set = SeededAugmentation(
        data_mod.ImageDataset(dataset.train, preprocess, augment=data_mod.build_augment(recipe),
                              max_pixels=recipe.data.max_pixels), recipe.seed)
    val_set = data_mod.ImageDataset(dataset.val, preprocess, max_pixels=recipe.data.max_pixels)
    # Each rank validates every world-th image; the outputs are gathered, so every rank sees the same report.
    val_loader = _loader(val_set, recipe.data.workers, device, sampler=list(range(ctx.rank, len(val_set), ctx.world)),
                         batch_size=max(1, t.batch_size // ctx.world))
    steps_per_epoch = math.ceil(len(train_set) / t.batch_size)
    freeze = t.freeze_epochs if t.strategy == "finetune" else 0
    say(f"data: {len(dataset.train)} train / {len(dataset.val)} val / {len(dataset.test)} test images, "
        f"{len(labels)} classes; device {device}" + (f", autocast {autocast}" if autocast else "") +
        (f"; {ctx.world} processes ({ctx.backend}), global batch {t.batch_size}" if ctx.active else ""))

    def phase_of(step: int) -> tuple[int, int]:
        boundary = freeze * steps_per_epoch
        if step < boundary:
            return 0, boundary
        return boundary, t.epochs * steps_per_epoch - boundary

    def set_lrs(step: int) -> None:
        start, length = phase_of(step)
        factor = lr_factor(step, start, length, t.schedule, int(t.warmup_epochs * steps_per_epoch))
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor

    def checkpoint_state(metrics: dict, rngs: list | None = None) -> dict:
        """What best.pt holds; with every rank's RNG states (`rngs`), what last.pt holds to resume from."""
        out = {"model": model.state_dict(), "epoch": state.epoch, "step": state.global_step, "labels": list(labels),
               "recipe": recipe_mod.to_dict(recipe), "metrics": metrics, "best_top1": state.best_top1,
               "run_state": state.__dict__.copy()}
        if rngs is not None:
            out.update(optimizer=optimizer.state_dict(), scaler=scaler.state_dict() if scaler.is_enabled() else {},
                       rng=rngs[0], **({"rng_ranks": rngs, "world_size": ctx.world} if ctx.active else {}))
        return out

    def save_last(metrics: dict) -> None:
        """Every rank calls this (its RNG state goes into the checkpoint); rank 0 writes."""
        if not _is_finite(model):
            raise NonFiniteLoss(f"non-finite weights at epoch {state.epoch + 1}; not saving them "
                                f"(the last good checkpoint is {last_path})")
        rngs = ctx.gather(_rng_state())
        if main:
            save_checkpoint(last_path, checkpoint_state(metrics, rngs))

    def validate() -> dict:
        logits, targets, loss = collect_logits(model, val_loader, device, autocast, val_criterion)
        parts = [p for p in ctx.gather((logits, targets, loss)) if len(p[1])]
        n = sum(len(p[1]) for p in parts)
        report = classification_report(np.concatenate([p[0] for p in parts]),
                                       np.concatenate([p[1] for p in parts]), labels)
        report["loss"] = sum(p[2] * len(p[1]) for p in parts) / n
        return report

    last_metrics = resumed["metrics"] if resumed else {}
    nonfinite = 0
    stopping = False  # a stop signal that every rank has agreed on
    ddp, wrapped_for = None, None  # DistributedDataParallel over the groups training now
    from tqdm import tqdm

    with _StopRequest(announce=main) as stop:
        while state.epoch < t.epochs:
            epoch = state.epoch
            trainable = model_mod.trainable_groups(t, epoch)
            model_mod.set_trainable(model, trainable)
            if ctx.active and trainable != wrapped_for:
                # DDP registers the parameters that need grad when it is built; after a freeze or unfreeze a
                # fresh wrapper is built over the new set rather than toggling requires_grad under the old one.
                ddp = None
                ddp = nn.parallel.DistributedDataParallel(
                    model, device_ids=[device.index] if device.type == "cuda" else None)
                wrapped_for = trainable
            net = ddp if ddp is not None else model
            net.train()  # keeps frozen groups' BatchNorm in eval mode
            batches = EpochBatches(len(train_set), recipe.seed, epoch, t.batch_size, ctx, skip=state.step_in_epoch)
            global_sizes = batches.global_sizes()
            loader = _loader(train_set, recipe.data.workers, device, batch_sampler=batches)
            seen = correct = 0
            loss_sum = 0.0
            tick = time.time()
            bar = tqdm(loader, total=len(loader), desc=f"epoch {epoch + 1}/{t.epochs}", unit="batch",
                       leave=False, disable=quiet or not main, dynamic_ncols=True, file=sys.stderr)
            for i, (images, targets) in enumerate(bar):
                set_lrs(state.global_step)
                images = images.to(device, non_blocking=True)
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                targets = targets.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                    logits = net(images)
                    loss_total = criterion(logits.float(), targets)
                # Every rank takes the same branch: skip the step if any rank's loss is not finite, and stop
                # after this step if any rank was asked to stop.
                bad, stopping = ctx.any([not bool(torch.isfinite(loss_total)), stop.signum is not None])
                if bad:
                    nonfinite += 1
                    optimizer.zero_grad(set_to_none=True)
                    say(f"\nwarning: non-finite loss at epoch {epoch + 1} step {state.step_in_epoch + 1} "
                        f"({nonfinite}/{t.nan_patience})", file=sys.stderr)
                    if nonfinite >= t.nan_patience:
                        raise NonFiniteLoss(
                            f"training diverged: {nonfinite} non-finite losses, the last at epoch {epoch + 1} step "
                            f"{state.step_in_epoch + 1}; weights from that point were not saved ({last_path} holds "
                            f"the last good epoch). Try a lower train.lr or set train.grad_clip")
                    state.step_in_epoch += 1
                    state.global_step += 1
                    continue
                scaler.scale(loss_total * (ctx.world / global_sizes[i])).backward()
                if t.grad_clip:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                state.step_in_epoch += 1
                state.global_step += 1
                real = targets != IGNORE
                seen += int(real.sum())
                loss_sum += float(loss_total.detach())
                correct += int(((logits.argmax(1) == targets) & real).sum())
                bar.set_postfix(loss=f"{loss_sum / max(seen, 1):.3f}", acc=f"{100 * correct / max(seen, 1):.1f}%",
                                lr=f"{optimizer.param_groups[-1]['lr']:.2e}", refresh=False)
                if stopping:
                    break
            bar.close()
            train_time = time.time() - tick
            seen, loss_sum, correct = ctx.sum([seen, loss_sum, correct])  # the global batch's totals

            if stopping and state.step_in_epoch < steps_per_epoch:
                save_last(last_metrics)
                if main:
                    _plots(run_dir, state.history, state.best_confusion, labels, state.best_top1)
                    print(f"stopped: saved {last_path} at epoch {epoch + 1}, batch {state.step_in_epoch}/"
                          f"{steps_per_epoch}; continue with: toolkit train {os.path.join(run_dir, 'recipe.yaml')} "
                          f"--resume" + (f" --nproc {ctx.world}" if ctx.active else ""), file=sys.stderr)
                sys.exit(128 + (stop.signum or signal.SIGTERM))

            state.epoch += 1
            state.step_in_epoch = 0
            final = state.epoch == t.epochs
            record = {
                "epoch": state.epoch, "trainable": sorted(trainable),
                "train_loss": loss_sum / max(seen, 1), "train_top1": 100 * correct / max(seen, 1),
                "val_loss": None, "val_top1": None, "val_top5": None, "val_mean_per_class": None,
                "lr": {g.get("group", g["name"]): g["lr"] for g in optimizer.param_groups},
                "images_per_s": seen / max(train_time, 1e-9), "epoch_time_s": train_time,
            }
            improved = False
            if state.epoch % t.eval_every == 0 or final:
                report = validate()
                record.update(val_loss=report["loss"], val_top1=report["top1"], val_top5=report["top5"],
                              val_mean_per_class=report["mean_per_class"])
                improved = report["top1"] > state.best_top1
                if improved:
                    state.best_top1, state.best_epoch, state.stale_evals = report["top1"], state.epoch, 0
                    state.best_confusion = report["confusion"]
                else:
                    state.stale_evals += 1
                last_metrics = {k: record[k] for k in ("epoch", "val_loss", "val_top1", "val_top5",
                                                       "val_mean_per_class")}
                last_metrics["best_top1"], last_metrics["best_epoch"] = state.best_top1, state.best_epoch
            state.history.append(record)
            if main:
                # The log line goes first: after a crash between the two, resume trims it back to the checkpoint.
                with open(os.path.join(run_dir, "metrics.jsonl"), "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(record) + "\n")
            (stopping,) = ctx.any([stopping or stop.signum is not None])  # a signal during validation
            early = bool(t.early_stopping and state.stale_evals >= t.early_stopping)
            if state.epoch % t.save_every == 0 or final or stopping or early or improved:
                save_last(last_metrics)
            if improved and main:
                save_checkpoint(best_path, checkpoint_state(last_metrics))
            if record["val_top1"] is not None:
                say(f"epoch {state.epoch}/{t.epochs}  train loss {record['train_loss']:.4f} top-1 "
                    f"{record['train_top1']:.1f}%  val loss {record['val_loss']:.4f} top-1 {record['val_top1']:.2f}% "
                    f"top-5 {record['val_top5']:.2f}%  {record['images_per_s']:.0f} img/s"
                    + ("  *best*" if improved else ""))
            if early:
                say(f"early stopping: no better val top-1 in {state.stale_evals} evaluations")
                break
            if stopping:
                if main:
                    _plots(run_dir, state.history, state.best_confusion, labels, state.best_top1)
                    print(f"stopped after epoch {state.epoch}: saved {last_path}; continue with --resume",
                          file=sys.stderr)
                sys.exit(128 + (stop.signum or signal.SIGTERM))
            if stop_after_epochs is not None and state.epoch - (resumed["epoch"] if resumed else 0) >= stop_after_epochs:
                save_last(last_metrics)
                break

    if not main:
        return {"run": run_dir, "rank": ctx.rank}
    _plots(run_dir, state.history, state.best_confusion, labels, state.best_top1)
    summary = _summary(recipe, dataset if evaluate_test else None, device, best_path, state, started, quiet,
                       world=ctx.world)
    return summary


def _truncate_metrics(path: str, epochs_done: int) -> None:
    """After a crash the metrics log may run ahead of the checkpoint: keep only what the checkpoint saw."""
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as fh:
        kept = [line for line in fh if line.strip() and json.loads(line)["epoch"] <= epochs_done]
    atomic_write(path, "".join(kept))


def _plots(run_dir: str, history: list, confusion: list | None, labels: list, top1: float) -> None:
    """curves.png from the history; confusion.png from the best validation's confusion matrix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if history:
        epochs = [h["epoch"] for h in history]
        evaluated = [h for h in history if h["val_top1"] is not None]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
        ax1.plot([h["epoch"] for h in evaluated], [h["val_loss"] for h in evaluated], "o-", label="val")
        ax1.set(xlabel="epoch", ylabel="loss", title="loss")
        ax1.legend()
        ax2.plot(epochs, [h["train_top1"] for h in history], "o-", label="train top-1")
        ax2.plot([h["epoch"] for h in evaluated], [h["val_top1"] for h in evaluated], "o-", label="val top-1")
        ax2.plot([h["epoch"] for h in evaluated], [h["val_top5"] for h in evaluated], "--", label="val top-5")
        ax2.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
        ax2.legend()
        fig.tight_layout()
        _save_fig(fig, os.path.join(run_dir, "curves.png"))
        plt.close(fig)
    if confusion is not None:
        matrix = np.asarray(confusion)
        size = min(20, 3 + 0.35 * len(labels))
        fig, ax = plt.subplots(figsize=(size, size))
        ax.imshow(matrix, cmap="Blues")
        if len(labels) <= 30:
            ax.set_xticks(range(len(labels)), labels, rotation=90)
            ax.set_yticks(range(len(labels)), labels)
            for (i, j), v in np.ndenumerate(matrix):
                if v:
                    ax.text(j, i, str(v), ha="center", va="center", fontsize=8,
                            color="white" if v > matrix.max() / 2 else "black")
        ax.set(xlabel="predicted", ylabel="true", title=f"validation confusion (top-1 {top1:.1f}%)")
        fig.tight_layout()
        _save_fig(fig, os.path.join(run_dir, "confusion.png"))
        plt.close(fig)


def _save_fig(fig, path: str) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")


def _summary(recipe, dataset, device, best_path, state: RunState, started: float, quiet: bool,
             world: int = 1) -> dict:
    from toolkit.train.evaluate import evaluate_checkpoint

    summary = {"run": recipe.run_dir, "best_checkpoint": best_path, "best_epoch": state.best_epoch,
               "val_top1": state.best_top1, "epochs_run": state.epoch, "processes": world, "wall_time_s": None}
    if dataset is not None and dataset.test:
        test = evaluate_checkpoint(best_path, dataset=dataset, split="test", device=str(device), quiet=True)
        summary.update(test_top1=test["top1"], test_top5=test["top5"], test_mean_per_class=test["mean_per_class"])
    summary["wall_time_s"] = round(time.time() - started, 1)
    atomic_write(os.path.join(recipe.run_dir, "summary.json"), json.dumps(summary, indent=2) + "\n")
    if not quiet:
        print(f"\ndone in {summary['wall_time_s']:.0f}s: best val top-1 {state.best_top1:.2f}% at epoch "
              f"{state.best_epoch}" + (f", test top-1 {summary['test_top1']:.2f}%" if "test_top1" in summary else ""))
        print(f"  run folder  {recipe.run_dir}/  (recipe.yaml, metrics.jsonl, param_groups.txt, curves.png, "
              f"confusion.png)")
        print(f"  checkpoint  {best_path}")
        print(f"  next        toolkit export {recipe.run_dir}")
    return summary
