"""`toolkit serve-local`: a hardened HTTP server over one exported model, with micro-batching.

    toolkit serve-local                          # newest export on http://127.0.0.1:8000
    toolkit serve-local exports/flowers.onnx --port 9000 --max-batch 16 --max-wait-ms 5

Endpoints: GET /health (live), GET /ready (503 until the warm-up inference ran), GET /v1/model,
POST /v1/predict (raw image body or multipart `file`, ?top_k=), GET / (drop-an-image page),
GET /docs and /openapi.json (FastAPI's).

How a prediction flows: the request body is read with a size cap (Content-Length checked first,
then counted while streaming), decoded with `toolkit.preprocess.open_image` (pixel cap checked
after `Image.open`, before decoding; JPEG/PNG/WebP only) and preprocessed in the request
threadpool, in parallel. The prepared array goes on a queue; one worker thread takes up to
`max_batch` items, waiting `max_wait_ms` after the first (plus a short grace for requests that are
already being decoded, see `Batcher`), runs one session call and resolves the waiting requests. The server stays on 127.0.0.1 unless another host is asked for,
has no endpoint that loads a model, and answers every error as JSON {"error", "detail"} without
tracebacks or server paths.

Light module: FastAPI, uvicorn and onnxruntime are imported when a server is built, never torch.
"""
import asyncio
import http
import ipaddress
import json
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
import warnings
from typing import Any

from toolkit.errors import UserError

__all__ = ["serve", "create_app", "Batcher", "host_warning", "DEFAULTS"]

DEFAULTS = dict(max_batch=16, max_wait_ms=5.0, max_body_mb=10.0, max_pixels=40_000_000, max_concurrency=64, top_k=5)
RETRY_AFTER_S = 1
GRACEFUL_TIMEOUT_S = 30
BODY_TIMEOUT_S = 30.0        # a client that stops sending its body mid-way gets 408 after this long
# Content types whose body is taken as the raw image bytes (sniffed, never trusted). curl's
# --data-binary sends application/x-www-form-urlencoded unless told otherwise, so that one works too.
RAW_TYPES = ("application/octet-stream", "application/x-www-form-urlencoded", "")
PREDICT_PATH = "/v1/predict"
STATIC_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "static")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")
log = logging.getLogger("toolkit.runtime.serve")


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------

class ApiError(Exception):
    """An HTTP error answered as JSON {"error": short, "detail": longer}."""

    def __init__(self, status: int, error: str, detail: Any = None, headers: dict | None = None):
        super().__init__(error)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers or {}


class BodyTooLarge(Exception):
    """Raised from inside `receive` when a streamed body passes the limit."""


class BodyTimeout(Exception):
    """Raised from inside `receive` when the client stalls while sending its body."""


def _json_bytes(status: int, error: str, detail: Any = None) -> bytes:
    return json.dumps({"error": error, "detail": detail}, separators=(",", ":")).encode()


async def _send_json(send, status: int, error: str, detail: Any = None, headers: dict | None = None) -> None:
    """Answer straight from the ASGI layer (before FastAPI sees the request)."""
    body = _json_bytes(status, error, detail)
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


def _image_error(exc: Exception) -> ApiError:
    """toolkit.preprocess.ImageError (or Pillow's own bomb check) -> the HTTP answer."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(exc, Image.DecompressionBombError):
        # Pillow refuses > ~179 MP itself inside Image.open, before our own cap is looked at.
        return ApiError(413, "image too large", f"image: {exc}")
    kind = getattr(exc, "kind", "corrupt")
    message = str(exc)
    if kind == "too_large":
        return ApiError(413, "image too large", message)
    if kind == "unsupported":
        if isinstance(exc.__context__, UnidentifiedImageError) or "not a recognised image" in message:
            # Bytes that no decoder recognises: garbage, not a format we chose to refuse.
            return ApiError(400, "not an image", message)
        return ApiError(415, "unsupported image format", message)
    if kind == "empty":
        return ApiError(400, "empty body", "expected JPEG, PNG or WebP bytes as the body, or a multipart 'file'")
    return ApiError(400, "corrupt image", message)


# --------------------------------------------------------------------------------------------
# Micro-batching
# --------------------------------------------------------------------------------------------

_STOP = object()


class Batcher:
    """One worker thread that runs the model on micro-batches.

    A request handler calls `preparing()` before it decodes an image, then `submit(array, top_k)`
    (or `abandon()` if decoding failed); `submit` queues the prepared image (the model's input
    without the batch axis) and awaits its top-k. The worker takes the first waiting item, then
    keeps collecting until it has `max_batch` items or `max_wait_ms` have passed since the first.
    When that time is up while other requests are already inside the server being decoded, it waits
    for those too, for at most a quarter of the last batch's inference time (`grace_s`): on a slow
    model a full batch is worth a short wait, on a fast one the grace is next to nothing. Then one
    `predict_batch` call, and every future is resolved. The warm-up inference runs before anything
    else; `ready` is set once it is done. `stop()` lets it finish everything queued, then ends it.
    """

    GRACE_FRACTION = 0.25
    GRACE_MAX_S = 1.0

    def __init__(self, predictor, max_batch: int = 16, max_wait_ms: float = 5.0):
        self.predictor = predictor
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.queue: queue.Queue = queue.Queue()
        self.ready = threading.Event()
        self.warmup_s: float | None = None
        self.warmup_error: str | None = None
        self.stopping = False
        self.decoding = 0          # requests between preparing() and submit()/abandon()
        self._lock = threading.Lock()
        self.last_batch_s = 0.0
        self.batches = 0
        self.images = 0
        self.largest_batch = 0
        self.thread = threading.Thread(target=self._run, name="toolkit-batcher", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float | None = GRACEFUL_TIMEOUT_S) -> None:
        if not self.thread.is_alive():
            return
        self.stopping = True
        self.queue.put(_STOP)
        self.thread.join(timeout)

    def preparing(self) -> None:
        if self.stopping:
            raise ApiError(503, "shutting down", "the server is stopping; retry on another instance",
                           {"Retry-After": str(RETRY_AFTER_S)})
        with self._lock:
            self.decoding += 1

    def abandon(self) -> None:
        with self._lock:
            self.decoding -= 1

    async def submit(self, array, top_k: int) -> list[dict]:
        """Queue one prepared image (after `preparing()`) and wait for its predictions."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:   # queued before it stops counting as decoding: the worker never misses it
            self.queue.put((array, top_k, future, loop))
            self.decoding -= 1
        return await future

    @property
    def grace_s(self) -> float:
        return min(self.GRACE_MAX_S, self.GRACE_FRACTION * self.last_batch_s)

    def stats(self) -> dict:
        return {"batches": self.batches, "images": self.images, "largest_batch": self.largest_batch,
                "mean_batch": round(self.images / self.batches, 2) if self.batches else 0.0,
                "queued": self.queue.qsize(), "decoding": self.decoding,
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
        deadline = start + self.max_wait
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

    def _run(self) -> None:
        self._warm_up()
        stop = False
        while not stop:
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
            if item is not _STOP:
                self._run_batch([item])

    def _run_batch(self, batch: list) -> None:
        import numpy as np

        try:
            arrays = np.stack([b[0] for b in batch])
            k = max(b[1] for b in batch)
            t = time.perf_counter()
            results = self.predictor.predict_batch(arrays, k)
            self.last_batch_s = time.perf_counter() - t
        except Exception as exc:
            log.error("inference failed on a batch of %d: %s: %s", len(batch), type(exc).__name__, exc)
            error = ApiError(500, "inference failed", "the model could not run on this input; see the server log")
            for _, _, future, loop in batch:
                self._resolve(loop, future, None, error)
            return
        self.batches += 1
        self.images += len(batch)
        self.largest_batch = max(self.largest_batch, len(batch))
        for (_, k, future, loop), preds in zip(batch, results):
            clean = [{"label": str(p["label"]), "score": float(p["score"]), "index": int(p["index"])}
                     for p in preds[:k]]
            self._resolve(loop, future, clean, None)

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


# --------------------------------------------------------------------------------------------
# ASGI guard: host check, concurrency limit, body size limit
# --------------------------------------------------------------------------------------------

class _Counter:
    def __init__(self):
        self.in_flight = 0
        self.rejected_busy = 0


class _Guard:
    """Pure ASGI middleware in front of the routes.

    - Host header must name this machine when the server is bound to loopback (DNS-rebinding guard).
    - POST /v1/predict only: at most `max_concurrency` in flight, else 503 + Retry-After (the health,
      ready and model endpoints never wait behind predictions); a Content-Length over the limit is
      refused before reading anything; a streamed body is counted and cut off at the limit; a body
      that stalls for `body_timeout_s` is answered 408 (slow clients can't hold slots forever).
    """

    def __init__(self, app, counter: _Counter, max_concurrency: int, max_body: int,
                 allowed_hosts: tuple | None, body_timeout_s: float = BODY_TIMEOUT_S):
        self.app, self.counter = app, counter
        self.max_concurrency, self.max_body, self.allowed_hosts = max_concurrency, max_body, allowed_hosts
        self.body_timeout_s = body_timeout_s

    def _host_ok(self, scope) -> bool:
        if self.allowed_hosts is None:
            return True
        host = ""
        for key, value in scope.get("headers", ()):
            if key == b"host":
                host = value.decode("latin-1").strip().lower()
                break
        if not host:
            return True   # HTTP/1.0 without Host: nothing a browser would send
        if host.startswith("["):
            name = host[:host.find("]") + 1] if "]" in host else host
        else:
            name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        return name in self.allowed_hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if not self._host_ok(scope):
            return await _send_json(send, 400, "host not allowed",
                                    "this server only answers requests addressed to localhost / 127.0.0.1")
        if scope["path"] != PREDICT_PATH or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        counter = self.counter
        if counter.in_flight >= self.max_concurrency:
            counter.rejected_busy += 1
            return await _send_json(send, 503, "busy",
                                    f"{self.max_concurrency} predictions are already in flight; retry shortly",
                                    {"Retry-After": RETRY_AFTER_S})
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    return await _send_json(send, 400, "bad request", "invalid Content-Length header")
                if length > self.max_body:
                    return await _send_json(send, 413, "body too large",
                                            f"{length} bytes; the limit is {self.max_body} bytes")
                break
        limit, timeout = self.max_body, self.body_timeout_s
        received = 0
        body_done = False

        async def limited_receive():
            nonlocal received, body_done
            if body_done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout)
            except asyncio.TimeoutError:
                raise BodyTimeout() from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge()
                body_done = not message.get("more_body", False)
            return message

        counter.in_flight += 1
        try:
            await self.app(scope, limited_receive, send)
        finally:
            counter.in_flight -= 1


# --------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------

def _read_page() -> str:
    path = os.path.join(STATIC_DIR, "index.html")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return "<!doctype html><title>toolkit</title><p>The page is missing from this install; " \
               "POST an image to <code>/v1/predict</code> or see <a href='/docs'>/docs</a>.</p>"


_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "img-src blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def create_app(predictor, max_batch: int = 16, max_wait_ms: float = 5.0, max_body_mb: float = 10.0,
               max_pixels: int = 40_000_000, max_concurrency: int = 64, top_k: int = 5,
               allowed_hosts: tuple | None = None, body_timeout_s: float = BODY_TIMEOUT_S,
               decode_slots: int | None = None):
    """The FastAPI app over a loaded `toolkit.runtime.predictor.Predictor`.

    The batching worker starts (and runs the warm-up inference) in the app's lifespan, and is
    drained when the app shuts down. `allowed_hosts`: Host header names accepted (None: any).
    `decode_slots`: images decoded at once (default: the CPU count, 2..8) — decoding is CPU-bound,
    and this bounds the memory that many large images in flight can take.
    """
    fastapi, Request, JSONResponse, HTMLResponse, run_in_threadpool = _require_stack()
    from contextlib import asynccontextmanager

    from fastapi import Query
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import ClientDisconnect

    from toolkit.preprocess import SERVE_FORMATS, ImageError, open_image

    problems = _check_limits(max_batch=max_batch, max_wait_ms=max_wait_ms, max_body_mb=max_body_mb,
                             max_pixels=max_pixels, max_concurrency=max_concurrency, top_k=top_k)
    if problems:
        raise UserError("\n".join(problems))
    labels = list(predictor.labels)
    default_k = min(int(top_k), len(labels))
    max_body = int(float(max_body_mb) * 1024 * 1024)
    counter = _Counter()
    batcher = Batcher(predictor, max_batch=max_batch, max_wait_ms=max_wait_ms)
    sha = predictor.sha256
    description = predictor.describe()
    description.update({
        # The run's name, not the training machine's path to it (the API shows no file-system paths).
        "source_run": _run_name(predictor.metadata.get("source_run")),
        "checkpoint_sha256": predictor.metadata.get("checkpoint_sha256"),
        "metrics": predictor.metadata.get("metrics"),
        "serving": {"max_batch": int(max_batch), "max_wait_ms": float(max_wait_ms), "max_body_bytes": max_body,
                    "max_pixels": int(max_pixels), "max_concurrency": int(max_concurrency),
                    "default_top_k": default_k, "formats": list(SERVE_FORMATS)},
    })
    page = _read_page()
    slots = int(decode_slots or max(2, min(8, os.cpu_count() or 2)))
    limiter: dict = {}

    @asynccontextmanager
    async def lifespan(app):
        import anyio
        limiter["decode"] = anyio.CapacityLimiter(slots)   # needs the running event loop
        batcher.start()
        try:
            yield
        finally:
            # uvicorn calls this after the requests in flight have finished; drain the worker anyway.
            await asyncio.get_running_loop().run_in_executor(None, batcher.stop)

    app = fastapi.FastAPI(
        title="toolkit serve-local", version=_version(), lifespan=lifespan,
        description=f"Image classifier `{description.get('path')}` ({len(labels)} labels, "
                    f"sha256 {sha[:12]}). POST an image to /v1/predict.",
        redoc_url=None,
    )
    app.state.batcher = batcher
    app.state.counter = counter
    app.add_middleware(_Guard, counter=counter, max_concurrency=int(max_concurrency), max_body=max_body,
                       allowed_hosts=allowed_hosts, body_timeout_s=float(body_timeout_s))

    # ---- errors: always JSON, never a traceback --------------------------------------------
    def error_response(status: int, error: str, detail: Any = None, headers: dict | None = None):
        return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return error_response(exc.status, exc.error, exc.detail, exc.headers)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request, exc):
        return error_response(413, "body too large", f"the body passed the limit of {max_body} bytes")

    @app.exception_handler(BodyTimeout)
    async def _timeout(request, exc):
        return error_response(408, "request timeout", f"the body did not arrive within {body_timeout_s:g} s",
                              {"Connection": "close"})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        status = exc.status_code
        phrase = http.HTTPStatus(status).phrase.lower() if status in http.HTTPStatus._value2member_map_ else "error"
        detail = exc.detail
        if status == 404:
            detail = f"no such endpoint: {request.method} {request.url.path}"
        elif status == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
        return error_response(status, phrase, detail, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        detail = []
        for e in exc.errors():
            where = ".".join(str(x) for x in e.get("loc", ()))
            detail.append(f"{where}: {e.get('msg', 'invalid')}")
        return error_response(422, "invalid request", detail)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request, exc):
        return error_response(400, "client disconnected", None)

    @app.exception_handler(Exception)
    async def _unexpected(request, exc):   # the traceback goes to the server log only
        return error_response(500, "internal error", "the server hit an unexpected error; see its log")

    # ---- endpoints ---------------------------------------------------------------------------
    @app.get("/health", tags=["status"], summary="Liveness: the process answers")
    async def health():
        return {"status": "ok"}

    @app.get("/ready", tags=["status"], summary="Readiness: 503 until the warm-up inference has run",
             responses={503: {"description": "still warming up (or warm-up failed)"}})
    async def ready():
        body = {"ready": batcher.ready.is_set(), "provider": predictor.provider, "model_sha256": sha,
                "labels": len(labels), "warmup_s": None if batcher.warmup_s is None else round(batcher.warmup_s, 4),
                "in_flight": counter.in_flight, "rejected_busy": counter.rejected_busy, **batcher.stats()}
        if not batcher.ready.is_set():
            body["detail"] = batcher.warmup_error or "warming up"
            return JSONResponse(body, status_code=503)
        return body

    @app.get("/v1/model", tags=["model"], summary="Labels, preprocessing, input spec, precision, source run")
    async def model_info():
        return description

    def decode_and_prepare(body: bytes):
        """Runs in the request threadpool: decode (capped, JPEG/PNG/WebP only) and preprocess."""
        from PIL import Image
        try:
            image = open_image(body, max_pixels, SERVE_FORMATS)
        except (ImageError, Image.DecompressionBombError) as exc:
            raise _image_error(exc) from None
        pixels = predictor.preprocess.resize_crop(image)
        return pixels if predictor.raw else predictor.preprocess.normalize(pixels)

    image_schema = {"type": "string", "format": "binary"}
    request_body_doc = {"requestBody": {"required": True, "content": {
        "image/jpeg": {"schema": image_schema}, "image/png": {"schema": image_schema},
        "image/webp": {"schema": image_schema}, "application/octet-stream": {"schema": image_schema},
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                           "properties": {"file": image_schema}}}}}}

    @app.post(PREDICT_PATH, tags=["predict"], summary="Classify one image",
              description="Body: the image bytes (JPEG, PNG or WebP; Content-Type image/* or "
                          "application/octet-stream) or multipart/form-data with a `file` part. "
                          "Answers {predictions: [{label, score, index}], model, provider}.",
              openapi_extra=request_body_doc,
              responses={400: {"description": "empty, truncated or unreadable image"},
                         413: {"description": "body or pixel count over the limit"},
                         415: {"description": "not JPEG, PNG or WebP"},
                         422: {"description": "bad top_k"},
                         503: {"description": "too many requests in flight (see Retry-After)"}})
    async def predict(request: Request,
                      top_k: int | None = Query(None, description=f"how many labels (1..{len(labels)}); "
                                                                  f"default {default_k}")):
        k = default_k if top_k is None else top_k
        if not 1 <= k <= len(labels):
            raise ApiError(422, "invalid request", [f"query.top_k: must be between 1 and {len(labels)}, got {k}"])
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            form = await request.form(max_files=1, max_fields=16)
            try:
                upload = form.get("file")
                if upload is None or isinstance(upload, str):
                    raise ApiError(400, "missing file", "the multipart body needs a 'file' part holding the image")
                body = await upload.read()
            finally:
                await form.close()
        elif ctype.startswith("image/") or ctype in RAW_TYPES:
            body = await request.body()
        else:
            raise ApiError(415, "unsupported content type",
                           f"{ctype}: send the image bytes as image/jpeg, image/png, image/webp or "
                           "application/octet-stream, or multipart/form-data with a 'file' part")
        batcher.preparing()
        try:
            if "decode" in limiter:
                import anyio
                array = await anyio.to_thread.run_sync(decode_and_prepare, body, limiter=limiter["decode"])
            else:   # app used without its lifespan
                array = await run_in_threadpool(decode_and_prepare, body)
        except BaseException:
            batcher.abandon()
            raise
        predictions = await batcher.submit(array, k)
        return JSONResponse({"predictions": predictions, "model": sha[:12], "provider": predictor.provider})

    @app.get("/", include_in_schema=False)
    async def index():
        return HTMLResponse(page, headers=_PAGE_HEADERS)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        from starlette.responses import Response
        return Response(status_code=204)

    return app


def _run_name(source_run: Any) -> str | None:
    if not source_run or not isinstance(source_run, str):
        return None
    return os.path.basename(source_run.replace("\\", "/").rstrip("/")) or None


def _require_stack():
    try:
        import fastapi
        from fastapi import Request
        from fastapi.responses import HTMLResponse, JSONResponse
        from starlette.concurrency import run_in_threadpool
        try:  # python-multipart (for the multipart `file` upload); its import name changed in 0.0.13
            import python_multipart  # noqa: F401
        except ImportError:
            import multipart  # noqa: F401
    except ImportError as exc:
        raise UserError(f"serve-local needs FastAPI, uvicorn and python-multipart ({exc}); install them with "
                        "pip install 'toolkit[serve]'") from None
    return fastapi, Request, JSONResponse, HTMLResponse, run_in_threadpool


def _version() -> str:
    from toolkit import __version__
    return __version__


def _check_limits(**values) -> list[str]:
    rules = {
        "max_batch": (1, "a whole number >= 1"), "max_wait_ms": (0, "a number of milliseconds >= 0"),
        "max_body_mb": (1e-6, "a positive number of megabytes"), "max_pixels": (1, "a whole number >= 1"),
        "max_concurrency": (1, "a whole number >= 1"), "top_k": (1, "a whole number >= 1"),
    }
    problems = []
    for name, value in values.items():
        low, expected = rules[name]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= low
        if ok and name in ("max_batch", "max_pixels", "max_concurrency", "top_k") and int(value) != value:
            ok = False
        if not ok:
            problems.append(f"{name.replace('_', '-')}: {value!r}; expected {expected}")
    return problems


# --------------------------------------------------------------------------------------------
# serve()
# --------------------------------------------------------------------------------------------

def _is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_warning(host: str) -> str | None:
    """The warning printed when the server is asked to listen beyond this machine, else None."""
    if _is_loopback(host):
        return None
    where = "every network interface" if host in ("0.0.0.0", "::", "[::]") else host
    return (f"warning: listening on {where}: anyone who can reach this machine can use the model; "
            "there is no authentication or TLS (put a reverse proxy in front, or use the default 127.0.0.1)")


def _bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket ourselves: a busy port is one clear error, and port 0 picks a free one."""
    bare = host.strip("[]")
    try:
        infos = socket.getaddrinfo(bare, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UserError(f"host: {host!r} cannot be resolved ({exc.strerror}); expected an address such as "
                        "127.0.0.1") from None
    family, _, proto, _, address = infos[0]
    # proto must say IPPROTO_TCP: asyncio only sets TCP_NODELAY on accepted sockets that do, and
    # without it every keep-alive response waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, proto or socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        hint = "pass another --port (or --port 0 for any free one)" if exc.errno in (98, 48, 10048) else \
            "expected an address of this machine"
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}); {hint}") from None
    sock.set_inheritable(True)
    return sock


def serve(model: str | None = None, host: str = "127.0.0.1", port: int = 8000, device: str = "auto",
          threads: int | None = None, allow_fallback: bool = False, max_batch: int = 16, max_wait_ms: float = 5,
          max_body_mb: float = 10, max_pixels: int = 40_000_000, max_concurrency: int = 64, top_k: int = 5,
          exports_dir: str = "exports") -> None:
    """Serve an exported model over HTTP until SIGTERM / Ctrl-C (then finish the requests in flight).

    model None: the newest export in `exports_dir`. host: 127.0.0.1 unless asked otherwise (anything
    else prints a warning). port 0 picks a free port (the URL is printed).
    """
    t0 = time.perf_counter()
    host = str(host)
    problems = _check_limits(max_batch=max_batch, max_wait_ms=max_wait_ms, max_body_mb=max_body_mb,
                             max_pixels=max_pixels, max_concurrency=max_concurrency, top_k=top_k)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        problems.append(f"port: {port!r}; expected a whole number 0..65535 (0 picks a free port)")
    if problems:
        raise UserError("\n".join(problems))
    _require_stack()
    import uvicorn

    from toolkit import artifacts
    from toolkit.runtime.predictor import Predictor
    from toolkit.preprocess import SERVE_FORMATS

    if model is None:
        model = artifacts.newest_export(exports_dir)
        print(f"serve-local: serving the newest export {model}", flush=True)
    elif os.path.isdir(str(model)):
        model = artifacts.newest_export(str(model))
        print(f"serve-local: serving the newest export {model}", flush=True)
    model = str(model)
    sock = _bind(host, int(port))   # before loading the model: a busy port fails fast
    try:
        predictor = Predictor(model, device=device, threads=threads, allow_fallback=allow_fallback,
                              batch_size=max(32, int(max_batch)), max_pixels=int(max_pixels), formats=SERVE_FORMATS)
        loopback = _is_loopback(host)
        allowed = None
        if loopback:
            allowed = tuple(sorted(set(LOOPBACK_NAMES) | {host.lower(), f"[{host.strip('[]').lower()}]"}))
        app = create_app(predictor, max_batch=max_batch, max_wait_ms=max_wait_ms, max_body_mb=max_body_mb,
                         max_pixels=max_pixels, max_concurrency=max_concurrency, top_k=top_k,
                         allowed_hosts=allowed)
    except BaseException:
        sock.close()
        raise
    # Pillow warns from 89 MP on; our own cap (max_pixels) is what decides here.
    from PIL import Image
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)

    bound_port = sock.getsockname()[1]
    if host in ("0.0.0.0", "::", "[::]"):
        shown_host = "127.0.0.1" if host == "0.0.0.0" else "[::1]"   # a URL a browser here can open
    else:
        shown_host = f"[{host.strip('[]')}]" if ":" in host else host
    url = f"http://{shown_host}:{bound_port}"
    print(f"serve-local: {os.path.basename(model)} (sha256 {predictor.sha256[:12]}, {len(predictor.labels)} labels, "
          f"{predictor.precision}) on {predictor.provider}", flush=True)
    print(f"serve-local: micro-batching up to {max_batch} images, waiting at most {max_wait_ms:g} ms; limits: "
          f"body {max_body_mb:g} MB, {int(max_pixels) / 1e6:g} MP, {max_concurrency} predictions in flight", flush=True)
    warning = host_warning(host)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    where = "" if shown_host.strip("[]") == host.strip("[]") else f" (bound to {host})"
    print(f"serve-local: listening on {url}{where}  (page {url}/, API docs {url}/docs; Ctrl-C or SIGTERM "
          "stops)", flush=True)

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", server_header=False,
                            timeout_graceful_shutdown=GRACEFUL_TIMEOUT_S, timeout_keep_alive=5)
    server = uvicorn.Server(config)

    def announce_ready():
        batcher: Batcher = app.state.batcher
        while not batcher.ready.wait(0.2):
            if batcher.warmup_error or not batcher.thread.is_alive() and batcher.thread.ident is not None:
                return
            if server.should_exit:
                return
        print(f"serve-local: ready {time.perf_counter() - t0:.2f}s after start (model load + warm-up; the warm-up "
              f"inference took {batcher.warmup_s:.3f}s)", flush=True)

    threading.Thread(target=announce_ready, name="toolkit-ready", daemon=True).start()

    # uvicorn re-raises the signal that stopped it once it has shut down gracefully, so that the
    # default action (die by SIGTERM / KeyboardInterrupt) happens. A graceful stop is a success here:
    # keep do-nothing handlers in place for that re-raise, so the process exits 0.
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: None)
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    batcher = app.state.batcher
    print(f"serve-local: stopped after {batcher.images} predictions in {batcher.batches} batches", flush=True)
