"""Distributed data-parallel training with PyTorch's own engine: torchrun + DistributedDataParallel.

torchrun starts one process per device and sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
MASTER_PORT; `Dist.from_env()` reads them. Without them training is a world of one and none of
this costs anything: every helper below is a no-op or an identity for a single process.

What this module owns:
  - joining the process group (NCCL on CUDA, gloo on CPU) with a timeout, so a rank that hangs
    or dies brings the others down with a clear message instead of blocking forever;
  - splitting each global batch across ranks (`shard`), so N processes see together exactly the
    batch one process would;
  - wrapping the model in DistributedDataParallel, afresh when the trainable layer groups change (`wrap`);
  - the few collectives the training loop needs: sums, an any-rank flag, the validation report over
    every rank's share (`gather_report`), and "rank 0 does it, everyone learns the outcome"
    (`on_main`), which keeps a user error raised on rank 0 from leaving the other ranks waiting.
"""
from __future__ import annotations

import datetime
import logging
import os
import signal
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from toolkit.errors import RankZeroError, UserError, first_line
from toolkit.metrics import classification_report

IGNORE = -100  # target of a padding sample: CrossEntropyLoss's ignore_index, so it adds nothing


class DistributedFailure(UserError):
    """A collective failed: another rank died, hung past the timeout, or the network dropped."""


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    timeout_s: float = 1800.0
    backend: str | None = None
    _wrapped: tuple | None = field(default=None, repr=False, compare=False)  # (trainable groups, DDP wrapper)

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "Dist":
        """The world torchrun describes in the environment; a world of one without it."""
        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        except ValueError:
            raise UserError("WORLD_SIZE / RANK / LOCAL_RANK: expected integers, as torchrun sets them") from None
        if world < 1 or not 0 <= rank < world:
            raise UserError(f"RANK {rank} with WORLD_SIZE {world}: expected 0 <= RANK < WORLD_SIZE")
        return cls(rank=rank, world=world, local_rank=local_rank)

    # -- joining and leaving ---------------------------------------------------------------------
    def place(self, device: torch.device) -> torch.device:
        """This rank's device: cuda:LOCAL_RANK when training on CUDA, else the CPU."""
        if not self.active:
            return device
        if device.type == "cuda":
            if self.local_rank >= torch.cuda.device_count():
                raise UserError(f"LOCAL_RANK {self.local_rank}: this machine has {torch.cuda.device_count()} CUDA "
                                "device(s); expected --nproc-per-node at most that many")
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        if device.type != "cpu":
            raise UserError(f"train.device: distributed training runs on cuda (NCCL) or cpu (gloo), not "
                            f"{device.type}")
        return device

    def join(self, device: torch.device, timeout_s: float) -> None:
        """Join the process group; every collective after this fails after `timeout_s` seconds."""
        self.timeout_s = float(timeout_s)
        if not self.active or dist.is_initialized():
            return
        self.backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cpu":
            # torchrun sets OMP_NUM_THREADS=1 per process; share the machine's cores instead.
            local = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local)))
        try:
            dist.init_process_group(self.backend, timeout=datetime.timedelta(seconds=self.timeout_s),
                                    **({"device_id": device} if device.type == "cuda" else {}))
        except Exception as exc:
            raise DistributedFailure(f"rank {self.rank}: could not join the process group of {self.world} "
                                     f"({first_line(exc)}); check MASTER_ADDR / MASTER_PORT and that every "
                                     "node started") from None

    def leave(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()

    def failure(self, exc: BaseException, last_checkpoint: str) -> DistributedFailure:
        """The one-line message for a collective that failed on this rank."""
        return DistributedFailure(
            f"rank {self.rank} of {self.world}: lost contact with the other processes ({first_line(exc)[:200]}). "
            f"Another rank died, or stalled for over train.dist_timeout ({self.timeout_s:g} s): its own output "
            f"says why. Training stopped; continue from {last_checkpoint} with --resume")

    def check_training(self, t, device: torch.device) -> None:
        """Refuse, on rank 0 and so on every rank, train settings that cannot run in this world."""
        def check() -> None:
            if self.world > t.batch_size:
                raise UserError(f"train.batch_size {t.batch_size}: smaller than the {self.world} processes; the "
                                f"global batch is split across them, so expected at least {self.world}")
            if t.sync_batchnorm and self.active and device.type != "cuda":
                raise UserError("train.sync_batchnorm: PyTorch's SyncBatchNorm runs on CUDA devices only; set it to "
                                "false for distributed training on the CPU")

        self.on_main(check)

    # -- the global batch --------------------------------------------------------------------------
    def shard(self, batch: list[int]) -> tuple[list[int], int]:
        """(this rank's part of a global batch, number of padding entries in it).

        Parts differ by at most one item. A rank left with nothing (a last batch smaller than the
        world) gets one copy of the batch's first item as padding, whose target is IGNORE: every
        rank must run every step, or the gradient all-reduce would wait forever.
        """
        if not self.active:
            return list(batch), 0
        base, extra = divmod(len(batch), self.world)
        start = self.rank * base + min(self.rank, extra)
        part = batch[start:start + base + (1 if self.rank < extra else 0)]
        if not part:
            return batch[:1], 1
        return part, 0

    def share(self, n: int) -> list[int]:
        """This rank's share of n items (every world-th one), e.g. of the validation images."""
        return list(range(self.rank, n, self.world))

    # -- the model ---------------------------------------------------------------------------------
    def wrap(self, model: torch.nn.Module, device: torch.device, trainable) -> torch.nn.Module:
        """The module to run forward: `model` itself in one process, else a DistributedDataParallel over it.

        DDP registers the parameters that need grad when it is built; after a freeze or unfreeze a fresh
        wrapper is built over the new `trainable` set rather than toggling requires_grad under the old one."""
        if not self.active:
            return model
        if self._wrapped is None or self._wrapped[0] != trainable:
            self._wrapped = None  # let the old wrapper go before the new one registers its hooks
            ddp = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
            self._wrapped = (trainable, ddp)
        return self._wrapped[1]

    def gather_report(self, logits: np.ndarray, targets: np.ndarray, loss: float, labels) -> dict:
        """The classification report (with the mean loss) over every rank's share of the validation set."""
        parts = [p for p in self.gather((logits, targets, loss)) if len(p[1])]
        n = sum(len(p[1]) for p in parts)
        report = classification_report(np.concatenate([p[0] for p in parts]),
                                       np.concatenate([p[1] for p in parts]), labels)
        report["loss"] = sum(p[2] * len(p[1]) for p in parts) / n
        return report

    # -- collectives ------------------------------------------------------------------------------
    def sum(self, values: list[float]) -> list[float]:
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return t.tolist()

    def any(self, flags: list[bool]) -> list[bool]:
        """Per flag: is it set on any rank? Lets all ranks take the same branch (stop, skip a step)."""
        if not self.active:
            return list(flags)
        t = torch.tensor([int(f) for f in flags], dtype=torch.int32, device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def gather(self, obj: Any) -> list:
        """Every rank's `obj`, in rank order, on every rank (small things: validation outputs, RNG states)."""
        if not self.active:
            return [obj]
        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.active:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self._comm_device())
        return box[0]

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Make every rank's parameters and buffers equal to rank 0's."""
        if not self.active:
            return
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on rank 0 alone and hand its result to every rank. A UserError on rank 0 is raised
        on every rank, so no rank is left waiting in the next collective for one that quit."""
        if not self.active:
            return fn()
        result = error = None
        if self.is_main:
            try:
                result = fn()
            except UserError as exc:
                error = str(exc)
        result, error = self.broadcast((result, error))
        if error is not None:
            # The barrier lets the broadcast finish everywhere first: a process that exits while a peer
            # is still reading from it can take that peer down with SIGABRT.
            dist.barrier()
            raise UserError(error) if self.is_main else RankZeroError(error)
        return result

    def _comm_device(self) -> torch.device:
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


# gloo reports a lost or silent peer as a plain RuntimeError; these words are in every such message seen
# (e.g. "[.../gloo/transport/tcp/pair.cc:545] Read error ... Connection reset by peer", "Application
# timeout caused pair closure"). NCCL raises DistBackendError, a DistError.
_COLLECTIVE_WORDS = ("gloo", "nccl", "processgroup", "connection", "timeout", "timed out", "pair closure",
                     "broken pipe")


def is_collective_failure(exc: BaseException) -> bool:
    """Did `exc` come out of a collective whose peer went away or timed out?"""
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(word in text for word in _COLLECTIVE_WORDS)



def launch(nproc: int, argv: list[str]) -> int:
    """Run `python -m toolkit <argv>` in `nproc` processes on this machine, as `torchrun --standalone
    --nproc-per-node N` does (the same elastic agent), and return the exit status. Failures come back as
    one line each instead of the agent's tracebacks."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    for name in ["torch.distributed.elastic", *logging.root.manager.loggerDict]:
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)  # failures are reported below, one line each
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0)
    try:
        elastic_launch(config, sys.executable)("-m", "toolkit", *argv)
    except SignalException as exc:  # Ctrl-C or SIGTERM: the ranks saved and said so; the agent stopped them
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        return _report_failures(sorted((rank, f.exitcode) for rank, f in exc.failures.items()), nproc)
    return 0


SPOKE = (2, 130, 143)  # exit statuses of a rank that printed its own error or stop message


def _report_failures(failures: list[tuple[int, int]], nproc: int) -> int:
    """One line per rank that died without a word; the exit status for the launcher.

    When one rank fails, the agent stops the others with SIGTERM, and a rank caught by it while already
    exiting can die of SIGABRT instead: both are collateral once some rank has said what went wrong."""
    collateral = {-signal.SIGTERM}
    if any(code in SPOKE for _, code in failures):
        collateral.add(-signal.SIGABRT)
    first_hand = [(r, c) for r, c in failures if c not in collateral] or failures
    for rank, code in first_hand:
        if code in SPOKE:
            continue
        how = (f"killed by {signal.Signals(-code).name}" if code < 0 and -code in signal.valid_signals()
               else f"exit status {code}")
        print(f"error: rank {rank} of {nproc} failed ({how}); the other ranks were stopped", file=sys.stderr)
    positive = [c for _, c in first_hand if c > 0]
    return positive[0] if positive else 1
