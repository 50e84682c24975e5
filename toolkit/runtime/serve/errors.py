"""Every error the server answers is JSON {"error": short, "detail": longer}, never a traceback or a path."""
import http
import json
from typing import Any


class ApiError(Exception):
    """An HTTP error answered as JSON {"error": short, "detail": longer}."""

    def __init__(self, status: int, error: str, detail: Any = None, headers: dict | None = None):
        super().__init__(error)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers or {}


def _json_bytes(error: str, detail: Any = None) -> bytes:
    return json.dumps({"error": error, "detail": detail}, separators=(",", ":")).encode()


def _raw_headers(body: bytes, headers: dict | None) -> list[tuple[bytes, bytes]]:
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return raw + [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()]


async def send_json(send, status: int, error: str, detail: Any = None, headers: dict | None = None) -> None:
    """Answer straight from the ASGI layer (before FastAPI sees the request)."""
    body = _json_bytes(error, detail)
    await send({"type": "http.response.start", "status": status, "headers": _raw_headers(body, headers)})
    await send({"type": "http.response.body", "body": body})


def response_bytes(status: int, error: str, detail: Any = None, headers: dict | None = None) -> bytes:
    """A whole HTTP/1.1 response with the JSON error body, for the protocol layer (no ASGI app involved);
    it always closes the connection."""
    body = _json_bytes(error, detail)
    phrase = http.HTTPStatus(status).phrase
    lines = [f"HTTP/1.1 {status} {phrase}".encode()]
    lines += [k + b": " + v for k, v in _raw_headers(body, {**(headers or {}), "Connection": "close"})]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def image_error(exc: Exception) -> ApiError:
    """toolkit.preprocess.ImageError (or Pillow's own bomb check) -> the HTTP answer."""
    from PIL import Image

    if isinstance(exc, Image.DecompressionBombError):
        # Pillow refuses > ~179 MP itself inside Image.open, before our own cap is looked at.
        return ApiError(413, "image too large", f"image: {exc}")
    kind = getattr(exc, "kind", "corrupt")
    message = str(exc)
    if kind == "too_large":
        return ApiError(413, "image too large", message)
    if kind == "unsupported":
        if "not a recognised image" in message:
            # Bytes that no decoder recognises: garbage, not a format we chose to refuse (those are
            # named from their magic bytes: "GIF images are not accepted").
            return ApiError(400, "not an image", message)
        return ApiError(415, "unsupported image format", message)
    if kind == "empty":
        return ApiError(400, "empty body", "expected JPEG, PNG or WebP bytes as the body, or a multipart 'file'")
    return ApiError(400, "corrupt image", message)


def add_error_handlers(app) -> None:
    """Turn every exception a route can raise into the JSON error body, with the right status."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import ClientDisconnect

    def error_response(status: int, error: str, detail: Any = None, headers: dict | None = None):
        return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return error_response(exc.status, exc.error, exc.detail, exc.headers)

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
        detail = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
                           for e in exc.errors())   # one string, as every other error's detail
        return error_response(422, "invalid request", detail)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request, exc):
        return error_response(400, "client disconnected", None)

    @app.exception_handler(Exception)
    async def _unexpected(request, exc):   # the traceback goes to the server log only
        return error_response(500, "internal error", "the server hit an unexpected error; see its log")
