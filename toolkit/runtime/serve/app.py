"""The FastAPI app over one loaded Predictor: status routes, the predict route, the drop-an-image page.

How a prediction flows: the body is read with a size cap (see `guard`), decoded with
`toolkit.preprocess.open_image` (pixel cap checked after `Image.open`, before decoding; JPEG/PNG/WebP
only) and preprocessed on the shared decode pool (toolkit.runtime.decode_pool: every core, in parallel
with the model), then handed to the `Batcher`. A client that leaves while its decode is queued cancels it.
"""
import asyncio
import os
from contextlib import asynccontextmanager
from typing import Any

from toolkit import __version__
from toolkit.errors import UserError
from toolkit.preprocess import SERVE_FORMATS, ImageError
from toolkit.runtime.decode_pool import ClientGone, DecodePool
from toolkit.runtime.serve.batcher import Batcher
from toolkit.runtime.serve.errors import ApiError, add_error_handlers, image_error
from toolkit.runtime.serve.guard import PREDICT_PATH, Counter, Guard
from toolkit.runtime.serve.options import Limits

# Content types whose body is taken as the raw image bytes (sniffed, never trusted). curl's
# --data-binary sends application/x-www-form-urlencoded unless told otherwise, so that one works too.
RAW_TYPES = ("application/octet-stream", "application/x-www-form-urlencoded", "")
STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "img-src blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_IMAGE_SCHEMA = {"type": "string", "format": "binary"}
_PREDICT_BODY_DOC = {"requestBody": {"required": True, "content": {
    "image/jpeg": {"schema": _IMAGE_SCHEMA}, "image/png": {"schema": _IMAGE_SCHEMA},
    "image/webp": {"schema": _IMAGE_SCHEMA}, "application/octet-stream": {"schema": _IMAGE_SCHEMA},
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                       "properties": {"file": _IMAGE_SCHEMA}}}}}}
_PREDICT_RESPONSES = {400: {"description": "empty, truncated or unreadable image"},
                      413: {"description": "body or pixel count over the limit"},
                      415: {"description": "not JPEG, PNG or WebP"},
                      422: {"description": "bad top_k"},
                      503: {"description": "too many requests in flight (see Retry-After)"}}


def require_stack():
    try:
        import fastapi
        try:  # python-multipart (for the multipart `file` upload); its import name changed in 0.0.13
            import python_multipart  # noqa: F401
        except ImportError:
            import multipart  # noqa: F401
    except ImportError as exc:
        raise UserError(f"serve-local needs FastAPI, uvicorn and python-multipart ({exc}); install them with "
                        "pip install 'toolkit[serve]'") from None
    return fastapi


def _read_page() -> str:
    path = os.path.join(STATIC_DIR, "index.html")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return "<!doctype html><title>toolkit</title><p>The page is missing from this install; " \
               "POST an image to <code>/v1/predict</code> or see <a href='/docs'>/docs</a>.</p>"


def _run_name(source_run: Any) -> str | None:
    if not source_run or not isinstance(source_run, str):
        return None
    return os.path.basename(source_run.replace("\\", "/").rstrip("/")) or None


def _answer(predictions: list) -> dict:
    """The "unknown" answer beside the top-k (a Prediction's); a plain list is an accepted answer."""
    if not hasattr(predictions, "text"):
        best = f"{predictions[0]['label']} {predictions[0]['score']:.2f}" if predictions else ""
        return {"answer": best, "accepted": True, "ood_score": None}
    return {"answer": predictions.text(), "accepted": predictions.accepted, "ood_score": predictions.ood_score}


def _describe(predictor, limits: Limits, default_k: int, batch_workers: int, decode_threads: int) -> dict:
    """What GET /v1/model answers: the model's contract, where it came from, and the serving limits."""
    description = predictor.describe()
    description.update({
        # The run's name, not the training machine's path to it (the API shows no file-system paths).
        "source_run": _run_name(predictor.metadata.get("source_run")),
        "checkpoint_sha256": predictor.metadata.get("checkpoint_sha256"),
        "metrics": predictor.metadata.get("metrics"),
        # read back from the engine after compiling (hint, streams, threads, requests): never assumed
        "engine_settings": predictor.engine_info.settings(),
        "serving": {"max_batch": int(limits.max_batch), "max_wait_ms": float(limits.max_wait_ms),
                    "max_body_bytes": limits.max_body_bytes, "max_pixels": int(limits.max_pixels),
                    "max_concurrency": int(limits.max_concurrency), "default_top_k": default_k,
                    "batch_workers": batch_workers, "decode_threads": decode_threads,
                    "formats": list(SERVE_FORMATS), "max_connections": int(limits.max_connections),
                    "header_timeout_s": float(limits.header_timeout), "body_timeout_s": float(limits.body_timeout),
                    "keep_alive_s": float(limits.keep_alive), "write_timeout_s": float(limits.write_timeout)},
    })
    return description


def _lifespan(batcher: Batcher, pool: DecodePool):
    """Start the batching worker (it runs the warm-up inference) with the app; drain it and the decode
    pool at shutdown."""
    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        try:
            yield
        finally:
            # uvicorn calls this after the requests in flight have finished; drain the worker anyway.
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, batcher.stop)
            await loop.run_in_executor(None, pool.close)
    return lifespan


async def _client_left(receive) -> None:
    """Returns once the client has gone (the body is read: http.disconnect is all that is left to come)."""
    while (await receive())["type"] != "http.disconnect":
        await asyncio.sleep(0.05)   # a server that answers again with an empty body: don't spin


def _add_status_routes(app, predictor, batcher: Batcher, counter: Counter, description: dict) -> None:
    from fastapi.responses import JSONResponse

    labels, sha = len(predictor.labels), predictor.sha256

    @app.get("/health", tags=["status"], summary="Liveness: the process answers")
    async def health():
        return {"status": "ok"}

    @app.get("/ready", tags=["status"], summary="Readiness: 503 until the warm-up inference has run",
             responses={503: {"description": "still warming up (or warm-up failed)"}})
    async def ready():
        body = {"ready": batcher.ready.is_set(), "provider": predictor.provider, "model_sha256": sha,
                "labels": labels, "warmup_s": None if batcher.warmup_s is None else round(batcher.warmup_s, 4),
                "in_flight": counter.in_flight, "rejected_busy": counter.rejected_busy, **batcher.stats()}
        if not batcher.ready.is_set():
            body["detail"] = batcher.warmup_error or "warming up"
            return JSONResponse(body, status_code=503)
        return body

    @app.get("/v1/model", tags=["model"], summary="Labels, preprocessing, input spec, precision, source run")
    async def model_info():
        return description


async def _image_bytes(request) -> bytes:
    """The image from a raw body (image/*, octet-stream) or from a multipart `file` part."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=16)
        try:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise ApiError(400, "missing file", "the multipart body needs a 'file' part holding the image")
            return await upload.read()
        finally:
            await form.close()
    if ctype.startswith("image/") or ctype in RAW_TYPES:
        return await request.body()
    raise ApiError(415, "unsupported content type",
                   f"{ctype}: send the image bytes as image/jpeg, image/png, image/webp or "
                   "application/octet-stream, or multipart/form-data with a 'file' part")


def _decoder(predictor, max_pixels: int):
    """The function the decode pool runs: decode (capped, JPEG/PNG/WebP only) and preprocess."""
    def decode_and_prepare(body: bytes):
        from PIL import Image
        try:  # decode (draft or full, as the model file says), resize and crop: the Predictor's own steps
            pixels = predictor.preprocess.pixels(body, max_pixels, SERVE_FORMATS)
        except (ImageError, Image.DecompressionBombError) as exc:
            raise image_error(exc) from None
        return pixels if predictor.raw else predictor.preprocess.normalize(pixels)
    return decode_and_prepare


def _add_predict_route(app, predictor, batcher: Batcher, pool: DecodePool, counter: Counter, default_k: int,
                       decode) -> None:
    from fastapi import Query, Request
    from fastapi.responses import JSONResponse

    labels, sha = len(predictor.labels), predictor.sha256

    @app.post(PREDICT_PATH, tags=["predict"], summary="Classify one image",
              description="Body: the image bytes (JPEG, PNG or WebP; Content-Type image/* or "
                          "application/octet-stream) or multipart/form-data with a `file` part. "
                          "Answers {predictions: [{label, score, index}], answer, accepted, ood_score, "
                          "model, provider}: accepted false and answer \"unknown (best guess: rose 0.41)\" "
                          "when the image looks like none of the classes (the model's OOD threshold).",
              openapi_extra=_PREDICT_BODY_DOC, responses=_PREDICT_RESPONSES)
    async def predict(request: Request,
                      top_k: int | None = Query(None, description=f"how many labels (1..{labels}); "
                                                                  f"default {default_k}")):
        k = default_k if top_k is None else top_k
        if not 1 <= k <= labels:
            raise ApiError(422, "invalid request", f"query.top_k: must be between 1 and {labels}, got {k}")
        body = await _image_bytes(request)
        entry = batcher.preparing()

        def decode_and_run_if_alone(data: bytes):
            array = decode(data)
            # the only prediction in flight (others past their upload count too): run it here, now
            return array, batcher.run_alone(entry, array, k) if counter.in_flight == 1 else None
        try:
            array, predictions = await pool.run(decode_and_run_if_alone, body, gone=_client_left(request.receive))
        except ClientGone:
            batcher.abandon(entry)
            return None   # nobody to answer
        except BaseException:
            batcher.abandon(entry)
            raise
        if predictions is None:   # others are in the server: batched with them by a worker
            predictions = await batcher.submit(entry, array, k)
        return JSONResponse({"predictions": list(predictions), **_answer(predictions), "model": sha[:12],
                             "provider": predictor.provider})


def _add_page_routes(app) -> None:
    from fastapi.responses import HTMLResponse
    from starlette.responses import Response

    page = _read_page()

    @app.get("/", include_in_schema=False)
    async def index():
        return HTMLResponse(page, headers=_PAGE_HEADERS)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return Response(status_code=204)


def create_app(predictor, limits: Limits | None = None, allowed_hosts: tuple | None = None,
               decode_slots: int | None = None, **limit_fields):
    """The FastAPI app over a loaded `toolkit.runtime.predictor.Predictor`.

    `limits`: a `Limits`, or its fields as keywords (max_batch=..., body_timeout=...). The batching worker
    starts (and runs the warm-up inference) in the app's lifespan, and is drained when the app shuts
    down. `allowed_hosts`: Host header names accepted (None: any). `decode_slots`: the decode pool's
    threads, i.e. images decoded at once (default: the CPU count, 1..8) — decoding is CPU-bound, and this
    bounds the memory that many large images in flight can take (decode_slots x max_pixels).
    """
    fastapi = require_stack()
    if limits is not None and limit_fields:
        raise TypeError("create_app: pass limits or its fields as keywords, not both")
    limits = limits or Limits(**limit_fields)
    problems = limits.problems()
    if problems:
        raise UserError("\n".join(problems))
    default_k = min(int(limits.top_k), len(predictor.labels))
    counter = Counter()
    batcher = Batcher(predictor, max_batch=limits.max_batch, max_wait_ms=limits.max_wait_ms)
    pool = DecodePool(decode_slots)
    description = _describe(predictor, limits, default_k, batcher.workers, pool.workers)
    app = fastapi.FastAPI(
        title="toolkit serve-local", version=__version__, lifespan=_lifespan(batcher, pool),
        description=f"Image classifier `{description.get('path')}` ({len(predictor.labels)} labels, "
                    f"sha256 {predictor.sha256[:12]}). POST an image to /v1/predict.",
        redoc_url=None,
    )
    app.state.batcher = batcher
    app.state.decode_pool = pool
    app.state.counter = counter
    app.add_middleware(Guard, counter=counter, max_concurrency=int(limits.max_concurrency),
                       max_body=limits.max_body_bytes, allowed_hosts=allowed_hosts,
                       body_timeout_s=float(limits.body_timeout))
    add_error_handlers(app)
    _add_status_routes(app, predictor, batcher, counter, description)
    _add_predict_route(app, predictor, batcher, pool, counter, default_k, _decoder(predictor, int(limits.max_pixels)))
    _add_page_routes(app)
    return app
