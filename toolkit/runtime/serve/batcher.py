"""Micro-batching: worker threads run the model on the images that arrive together (one per request the
engine serves at once: one on ONNX Runtime and on OpenVINO's single stream, where batches grow under load;
one per infer request when OpenVINO runs several streams, so batches from many clients use every stream)."""
import asyncio
import logging
import queue
import threading
import time

from toolkit.runtime.serve.errors import ApiError
from toolkit.runtime.serve.options import GRACEFUL_TIMEOUT_S, RETRY_AFTER_S

log = logging.getLogger("toolkit.runtime.serve")

_STOP = object()


class Entry:
    """One request from `preparing()` until it leaves the decoding count (submitted, run alone or
    abandoned): leaving twice counts once, so a client that leaves mid-run is not subtracted again."""

    __slots__ = ("counted",)

    def __init__(self):
        self.counted = True


class Batcher:
    """Worker threads that run the model on micro-batches.

    A request handler calls `preparing()` before it decodes an image (its `Entry`), then, from the
    decoding thread, `run_alone(entry, array, top_k)`: when the request is alone in the server (nothing
    else decoding, queued or running) it runs there and then, a batch of one in the thread that decoded
    it, with no hand-over to a worker (the same call, the same answer). Otherwise the handler awaits
    `submit(entry, array, top_k)` (or calls `abandon(entry)` if decoding failed), which queues the prepared
    image (the model's input without the batch axis) for a worker. The worker takes the first waiting
    item, then keeps collecting until it has `max_batch` items or `max_wait_ms` have passed since the
    first. An item alone in the queue with nothing being decoded runs at once: there is nobody to wait
    for, and under load the batches grow by themselves while the model runs. When that time is up
    while other requests are already inside the server being decoded, it waits for those too, for at
    most a quarter of the last batch's inference time (`grace_s`): on a slow model a full batch is
    worth a short wait, on a fast one the grace is next to nothing. Then one
    `predict_batch` call, and every future is resolved. The warm-up inference runs before anything
    else; `ready` is set once it is done. `stop()` lets it finish everything queued, then ends it.

    `workers` threads collect and run batches side by side (None: the session's `optimal_requests`,
    which an OpenVINO session has and an ONNX Runtime one doesn't, so 1 there). With several, one
    batch is collected while others run: on OpenVINO each runs on its own infer request and stream.
    """

    GRACE_FRACTION = 0.25
    GRACE_MAX_S = 1.0

    def __init__(self, predictor, max_batch: int = 16, max_wait_ms: float = 5.0, workers: int | None = None):
        self.predictor = predictor
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.queue: queue.Queue = queue.Queue()
        self.ready = threading.Event()
        self.warmup_s: float | None = None
        self.warmup_error: str | None = None
        self.stopping = False
        self.decoding = 0          # requests between preparing() and submit() / run_alone() / abandon()
        self.running = 0           # batches in inference now (workers' and run_alone's)
        self._lock = threading.Lock()
        self.last_batch_s = 0.0
        self.batches = 0
        self.images = 0
        self.largest_batch = 0
        if workers is None:
            workers = getattr(getattr(predictor, "session", None), "optimal_requests", 1)
        self.workers = max(1, int(workers))
        self._warmed = threading.Event()   # set after the warm-up, whether it worked or not
        self._collecting = threading.Lock()   # one worker gathers a batch at a time, the others run theirs
        self.threads = [threading.Thread(target=self._run, args=(i,), name=f"toolkit-batcher-{i}", daemon=True)
                        for i in range(self.workers)]
        self.thread = self.threads[0]   # the one that warms up (serve's ready line watches it)

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self, timeout: float | None = GRACEFUL_TIMEOUT_S) -> None:
        if not any(t.is_alive() for t in self.threads):
            return
        self.stopping = True
        for _ in self.threads:
            self.queue.put(_STOP)
        if not self._warmed.is_set():
            return  # the warm-up is still running (serve gave up on it): an engine's run can't be interrupted
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self.threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def preparing(self) -> Entry:
        if self.stopping:
            raise ApiError(503, "shutting down", "the server is stopping; retry on another instance",
                           {"Retry-After": str(RETRY_AFTER_S)})
        with self._lock:
            self.decoding += 1
        return Entry()

    def _leave(self, entry: Entry) -> None:
        """Under self._lock: the request stops counting as decoding (once)."""
        if entry.counted:
            entry.counted = False
            self.decoding -= 1

    def abandon(self, entry: Entry) -> None:
        with self._lock:
            self._leave(entry)

    def run_alone(self, entry: Entry, array, top_k: int) -> list[dict] | None:
        """From the thread that decoded `array`: its predictions, run here as a batch of one, when it is
        alone in the server (after the warm-up, nothing else decoding, queued or running); else None,
        and the caller submits it. A lone request so skips two thread hand-overs (to a worker and back):
        about a quarter of a millisecond off every single-client request."""
        with self._lock:
            if not self.ready.is_set() or self.decoding != 1 or self.running or not self.queue.empty():
                return None
            self._leave(entry)
            self.running += 1
        try:
            return self._infer([(array, top_k)])[0]
        finally:
            with self._lock:
                self.running -= 1

    async def submit(self, entry: Entry, array, top_k: int) -> list[dict]:
        """Queue one prepared image (after `preparing()`) and wait for its predictions."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:   # queued before it stops counting as decoding: the worker never misses it
            self.queue.put((array, top_k, future, loop))
            self._leave(entry)
        return await future

    @property
    def grace_s(self) -> float:
        return min(self.GRACE_MAX_S, self.GRACE_FRACTION * self.last_batch_s)

    def stats(self) -> dict:
        return {"batches": self.batches, "images": self.images, "largest_batch": self.largest_batch,
                "mean_batch": round(self.images / self.batches, 2) if self.batches else 0.0,
                "queued": self.queue.qsize(), "decoding": self.decoding, "workers": self.workers,
                "last_batch_ms": round(1000 * self.last_batch_s, 2)}

    # ---- worker thread --------------------------------------------------------------------
    def _warm_up(self) -> None:
        t = time.perf_counter()
        try:
            self.last_batch_s = self.predictor.warmup(1)
            if not self.predictor.provider.startswith("CPU") and self.max_batch > 1:
                # GPUs pick kernels per shape: pay for the largest batch now, not on a user's request.
                self.predictor.warmup(self.max_batch)
        except Exception as exc:  # reported through /ready; requests still get answers (or errors)
            self.warmup_error = f"{type(exc).__name__}: {exc}"[:500]
            log.error("warm-up inference failed: %s", self.warmup_error)
            return
        self.warmup_s = time.perf_counter() - t
        self.ready.set()

    def _collect(self, first) -> tuple[list, bool]:
        """The batch that starts with `first`, and whether the stop marker was seen."""
        batch = [first]
        start = time.monotonic()
        alone = self.decoding == 0 and self.queue.empty()
        deadline = start + (0.0 if alone else self.max_wait)
        grace_end = deadline + self.grace_s
        while len(batch) < self.max_batch:
            now = time.monotonic()
            if now < deadline:
                timeout = deadline - now
            elif self.decoding > 0 and now < grace_end:
                timeout = min(grace_end - now, 0.002)   # a request being decoded is about to land
            else:
                timeout = 0.0
            try:
                nxt = self.queue.get(timeout=timeout) if timeout > 0 else self.queue.get_nowait()
            except queue.Empty:
                if timeout > 0:
                    continue
                break
            if nxt is _STOP:
                return batch, True
            batch.append(nxt)
        return batch, False

    def _run(self, index: int = 0) -> None:
        if index == 0:
            try:
                self._warm_up()
            finally:
                self._warmed.set()
        self._warmed.wait()
        stop = False
        while not stop:
            with self._collecting:
                item = self.queue.get()
                if item is _STOP:
                    break
                batch, stop = self._collect(item)
            self._run_batch(batch)
        # Anything queued after the stop marker (should not happen: requests are refused once stopping).
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:   # another worker's marker: leave it for that worker
                self.queue.put(_STOP)
                break
            self._run_batch([item])

    def _infer(self, batch: list) -> list[list[dict]]:
        """Each item's top-k, from one predict_batch call on `batch` ((array, top_k, ...) items); a
        failure is an ApiError 500 (the server log says why)."""
        import numpy as np

        try:
            arrays = np.stack([b[0] for b in batch])
            k = max(b[1] for b in batch)
            t = time.perf_counter()
            results = self.predictor.predict_batch(arrays, k)
            elapsed = time.perf_counter() - t
        except Exception as exc:
            log.error("inference failed on a batch of %d: %s: %s", len(batch), type(exc).__name__, exc)
            raise ApiError(500, "inference failed", "the model could not run on this input; see the server log") \
                from None
        with self._lock:
            self.last_batch_s = elapsed
            self.batches += 1
            self.images += len(batch)
            self.largest_batch = max(self.largest_batch, len(batch))
        answers = []
        for item, preds in zip(batch, results):
            k = item[1]
            if hasattr(preds, "first"):   # a Prediction: the top-k and the "unknown" answer beside it
                answers.append(preds.first(k))
            else:   # a plain top-k list (a predictor-like object of an app's own)
                answers.append([{"label": str(p["label"]), "score": float(p["score"]), "index": int(p["index"])}
                                for p in preds[:k]])
        return answers

    def _run_batch(self, batch: list) -> None:
        with self._lock:
            self.running += 1
        try:
            answers, error = self._infer(batch), None
        except ApiError as exc:
            answers, error = [None] * len(batch), exc
        finally:
            with self._lock:
                self.running -= 1
        for (_, _, future, loop), answer in zip(batch, answers):
            self._resolve(loop, future, answer, error)

    @staticmethod
    def _resolve(loop, future, value, error) -> None:
        def settle():
            if future.done():   # the request went away (client gone, server cancelled it)
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)
        try:
            loop.call_soon_threadsafe(settle)
        except RuntimeError:    # event loop already closed
            pass
