"""The demos' training runs, several at once: each in a worker process on one torch thread.

Two 1-thread runs side by side train about twice as fast as one run on two threads (small 64 px
batches leave a second thread idle most of the time), and a run's numbers depend on its thread count:
with every run on one thread, the demo's table is the same whatever the core count (docs/demo.md).
Workers are spawned, not forked: a forked child of a process that has used OpenMP can hang.
"""
from __future__ import annotations

import gc
import multiprocessing
import os
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait

from toolkit.runtime.benchmark.machine import physical_cores

MAX_WORKERS = 8  # beyond this the demo's 30-odd runs leave workers idle at the end anyway
WORKER_BYTES = 1.5 * 2**30  # one worker's peak memory, rounded up (measured: docs/demo.md)
# What the pooled demos' machine line says of their threads: the table does not depend on the core count.
RUNS_ON = "every run on one torch thread"


def worker_count(asked: int) -> int:
    """`asked` workers; 0: one per physical core, as many as free memory holds, at most MAX_WORKERS."""
    if asked > 0:
        return asked
    try:
        free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not Linux: cores alone decide
        free = MAX_WORKERS * WORKER_BYTES
    return max(1, min(physical_cores(), MAX_WORKERS, int(free // WORKER_BYTES)))


def _quiet_interrupt(signum, _frame):
    """Ctrl-C in a worker outside a training run (waiting for work, or scoring): leave without a traceback.
    A run in progress has its own handler (toolkit.train.stop) that saves first, then puts this one back.
    (SystemExit, not os._exit: the worker's queues then close cleanly, with no leaked-semaphore warning.)"""
    raise SystemExit(128 + signum)


def _start_worker() -> None:
    """One torch thread; Ctrl-C, which the terminal sends to every worker too, ends an idle one quietly (the
    main process cancels the queued runs and says "interrupted"). One that lands inside the executor's own
    hand-over of a result is kept by the executor; that worker then ends when the pool shuts down."""
    import signal

    import torch

    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, _quiet_interrupt)


def _then_collect(fn, *args):
    """fn(*args), then a garbage collection: a run's model, optimizer state and evaluation twin sit in
    reference cycles (the training session's closures; the frames torch.fx.wrap keeps when timm is first
    imported inside a run) that would otherwise outlive the run, and a worker's memory grew run by run
    (5 short runs: 1.35 GB peak without, 1.27 GB with)."""
    try:
        return fn(*args)
    finally:
        gc.collect()


class RunPool:
    """Calls `fn(*args)` in worker processes, one torch thread each, `workers` at a time. `run` blocks, so
    a caller that must wait for one result before it knows the next run (a learning-rate sweep) writes
    that logic plainly in a thread of `each` and still shares the workers with the others."""

    def __init__(self, workers: int):
        self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_start_worker)

    def __enter__(self) -> "RunPool":
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, fn, *args) -> Future:
        return self._pool.submit(_then_collect, fn, *args)

    def run(self, fn, *args):
        return self.submit(fn, *args).result()

    def close(self) -> None:
        """Cancel the queued runs (those in progress, and the one each worker has been handed next, finish); a
        later `submit` raises RuntimeError."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def each(self, fn, items: list) -> list:
        """fn(item) for every item, each in its own thread (they wait on the workers, not the CPU); results
        in the order of `items`, whatever order they finish in. The first error (or Ctrl-C) cancels the
        queued runs, so it surfaces once the runs in progress end, not after every other item has trained."""
        if not items:
            return []
        with ThreadPoolExecutor(len(items)) as threads:
            futures = [threads.submit(fn, item) for item in items]
            try:
                wait(futures, return_when=FIRST_EXCEPTION)
                failed = next((f for f in futures if f.done() and f.exception() is not None), None)
                if failed is not None:
                    raise failed.exception()
                return [future.result() for future in futures]
            except BaseException:
                self.close()  # the other items' threads then end as their runs are cancelled or finish
                raise
