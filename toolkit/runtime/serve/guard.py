"""The ASGI guard in front of the routes: host check, concurrency limit, body size and time limits."""
import asyncio

from toolkit.runtime.serve.errors import BodyTimeout, BodyTooLarge, send_json
from toolkit.runtime.serve.options import BODY_TIMEOUT_S, RETRY_AFTER_S

PREDICT_PATH = "/v1/predict"


class _Counter:
    """Predictions in flight now, and how many were turned away busy (shown by /ready)."""

    def __init__(self):
        self.in_flight = 0
        self.rejected_busy = 0


def _header(scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value
    return None


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
        host = (_header(scope, b"host") or b"").decode("latin-1").strip().lower()
        if not host:
            return True   # HTTP/1.0 without Host: nothing a browser would send
        if host.startswith("["):
            name = host[:host.find("]") + 1] if "]" in host else host
        else:
            name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        return name in self.allowed_hosts

    def _refusal(self, scope) -> tuple | None:
        """(status, error, detail, headers) for a prediction refused before its body is read, else None."""
        if self.counter.in_flight >= self.max_concurrency:
            self.counter.rejected_busy += 1
            return (503, "busy", f"{self.max_concurrency} predictions are already in flight; retry shortly",
                    {"Retry-After": RETRY_AFTER_S})
        declared = _header(scope, b"content-length")
        if declared is None:
            return None
        try:
            length = int(declared)
        except ValueError:
            return 400, "bad request", "invalid Content-Length header", None
        if length > self.max_body:
            return 413, "body too large", f"{length} bytes; the limit is {self.max_body} bytes", None
        return None

    def _limited(self, receive):
        """`receive`, counting the body against the limit and giving up on a client that stalls."""
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
        return limited_receive

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if not self._host_ok(scope):
            return await send_json(send, 400, "host not allowed",
                                   "this server only answers requests addressed to localhost / 127.0.0.1")
        if scope["path"] != PREDICT_PATH or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        refusal = self._refusal(scope)
        if refusal is not None:
            return await send_json(send, *refusal)
        self.counter.in_flight += 1
        try:
            await self.app(scope, self._limited(receive), send)
        finally:
            self.counter.in_flight -= 1
