"""Decoding on every core: one small bounded thread pool that decodes and preprocesses images while the
engine runs the previous batch (Pillow releases the GIL while it decodes, resizes and crops).

    pool = DecodePool()                                   # workers: the CPU count, 1..8 (or shared_pool())
    for item, value, error in pool.ordered(prepare, paths, ahead=32):
        ...                                               # input order; error: that item's exception, or None
    array = await pool.run(prepare, body, gone=client_left)   # serve-local: one request's decode

Bounds, for every caller:
- at most `workers` images are being decoded at once, so the full-size pixels held are at most
  workers x max_pixels (each decode is capped by toolkit.preprocess before it starts);
- `ordered` decodes at most `ahead` items beyond the one it is handing over (queued, decoding or decoded
  and waiting): the caller passes its batch size, so while the engine runs one batch the pool prepares
  the next, and no more images are in flight than one batch can take;
- an item that raises fails alone: its exception comes back beside it, the others go on;
- `run` cancels a decode that has not started yet when `gone` resolves first (the client left).
The results are those of `fn` itself, in input order: nothing is copied or converted here.
"""
from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Awaitable, Callable, Iterable, Iterator, Optional

__all__ = ["DecodePool", "default_workers", "ClientGone", "shared_pool"]

MAX_WORKERS = 8
_shared: Optional["DecodePool"] = None
_shared_lock = threading.Lock()


def default_workers() -> int:
    """Decoding threads: one per CPU core, 1..MAX_WORKERS (decoding is CPU-bound; more only adds memory)."""
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


class ClientGone(Exception):
    """`DecodePool.run` gave up: `gone` resolved before the decode finished (it was cancelled if queued)."""


class DecodePool:
    """A bounded thread pool for image decoding; `decode_s` sums the seconds spent inside `fn`."""

    def __init__(self, workers: Optional[int] = None):
        self.workers = default_workers() if workers is None else max(1, int(workers))
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="toolkit-decode")
        self.decode_s = 0.0   # summed over threads: time spent decoding, for the benchmark's split

    def _timed(self, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def call(item):
            start = time.perf_counter()
            try:
                return fn(item)
            finally:
                self.decode_s += time.perf_counter() - start   # a float add: atomic under the GIL
        return call

    def ordered(self, fn: Callable[[Any], Any], items: Iterable[Any],
                ahead: int) -> Iterator[tuple[Any, Any, Optional[BaseException]]]:
        """(item, fn(item), None) or (item, None, the exception) for each item, in input order, with at most
        `ahead` items submitted beyond the one handed over (they decode while the caller works on what it
        has). Leaving the loop early cancels what has not started."""
        ahead = max(0, int(ahead))
        call = self._timed(fn)
        source = iter(items)
        pending: deque[tuple[Any, Future]] = deque()
        try:
            for item in source:
                pending.append((item, self._executor.submit(call, item)))
                if len(pending) > ahead:
                    yield _outcome(*pending.popleft())
            while pending:
                yield _outcome(*pending.popleft())
        finally:
            for _, future in pending:
                future.cancel()

    async def run(self, fn: Callable[[Any], Any], item: Any, gone: Optional[Awaitable] = None) -> Any:
        """fn(item) on the pool, awaited. When `gone` (e.g. the client's disconnect) resolves first, the
        decode is cancelled if it has not started (else left to finish unseen) and ClientGone is raised."""
        future = asyncio.wrap_future(self._executor.submit(self._timed(fn), item))
        if gone is None:
            return await future
        watcher = asyncio.ensure_future(gone)
        try:
            await asyncio.wait({future, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            future.cancel()
            raise
        finally:
            if not watcher.done():
                watcher.cancel()
        if future.done():
            return future.result()
        future.cancel()   # cancels the pool's own future too: a queued decode never starts
        raise ClientGone("the client left before its image was decoded")

    def close(self) -> None:
        """Cancel what is queued, wait for what runs."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "DecodePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def shared_pool() -> DecodePool:
    """The process-wide pool (created on first use) for callers without their own: Predictor.predict."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = DecodePool()
        return _shared


def _outcome(item: Any, future: Future) -> tuple[Any, Any, Optional[BaseException]]:
    try:
        return item, future.result(), None
    except Exception as exc:  # noqa: BLE001 - one item's failure is that item's answer, not the loop's
        return item, None, exc
