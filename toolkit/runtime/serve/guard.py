"""The ASGI guard in front of the routes: Host check, HEAD, the prediction body and its slot."""
import asyncio
import ipaddress
import re
import time

from toolkit.runtime.serve.errors import ApiError, send_json
from toolkit.runtime.serve.options import BODY_TIMEOUT_S, RETRY_AFTER_S

PREDICT_PATH = "/v1/predict"
# A Host name: DNS labels of letters, digits, '-' and '_' (an IPv4 address is one too), an optional
# trailing dot; or an IPv6 address in brackets (checked by ipaddress). Then an optional :port.
_NAME = re.compile(r"[a-z0-9_][a-z0-9_-]{0,62}(\.[a-z0-9_][a-z0-9_-]{0,62})*\.?")
_PORT = re.compile(r"[0-9]{1,5}")
_HOST_EXAMPLE = "expected Host: NAME[:PORT], e.g. 127.0.0.1:8000"


class Counter:
    """Predictions in flight now, and how many were turned away busy (shown by /ready)."""

    def __init__(self):
        self.in_flight = 0
        self.rejected_busy = 0


def _header(scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value
    return None


def host_name(value: bytes) -> str | None:
    """The name in a Host header value (lower case; IPv6 keeps its brackets), or None if it is malformed."""
    try:
        text = value.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return None
    if text.startswith("["):
        name, bracket, rest = text.partition("]")
        if not bracket:
            return None
        try:
            ipaddress.IPv6Address(name[1:])
        except ValueError:
            return None
        name += bracket
        colon, port = rest[:1], rest[1:]
        if rest and colon != ":":
            return None
    else:
        name, colon, port = text.partition(":")
        if len(name) > 253 or not _NAME.fullmatch(name):
            return None
    if colon and not (_PORT.fullmatch(port) and int(port) <= 65535):
        return None
    return name


def _without_body(send):
    """`send` for a HEAD request routed as GET: the headers (Content-Length included), no body bytes."""
    async def send_head(message):
        if message["type"] == "http.response.body":
            message = {**message, "body": b""}
        await send(message)
    return send_head


def _replay(body: bytes, receive):
    """`receive` for the app once the guard has read the whole body: the body, then the real channel."""
    given = False

    async def replay():
        nonlocal given
        if given:
            return await receive()   # only http.disconnect is left to come
        given = True
        return {"type": "http.request", "body": body, "more_body": False}
    return replay


class Guard:
    """Pure ASGI middleware in front of the routes.

    - Every request needs one well-formed Host header (400 otherwise); when the server is bound to
      loopback it must also name this machine (the DNS-rebinding guard).
    - HEAD is answered wherever GET is: routed as GET, sent without the body.
    - POST /v1/predict: a Content-Length over the limit is refused before reading anything; the guard
      then reads the whole body itself, cut off at the size limit (413) and at `body_timeout_s` in
      total (408), and only then takes one of `max_concurrency` prediction slots (503 + Retry-After
      when none is free): a slow client never holds a slot. Health, ready and model never wait.
    """

    def __init__(self, app, counter: Counter, max_concurrency: int, max_body: int,
                 allowed_hosts: tuple | None, body_timeout_s: float = BODY_TIMEOUT_S):
        self.app, self.counter = app, counter
        self.max_concurrency, self.max_body, self.allowed_hosts = max_concurrency, max_body, allowed_hosts
        self.body_timeout_s = body_timeout_s

    def _check_host(self, scope) -> None:
        values = [value for key, value in scope.get("headers", ()) if key == b"host"]
        if not values or not values[0].strip():
            raise ApiError(400, "missing host", f"the request has no Host header; {_HOST_EXAMPLE}")
        if len(values) > 1:
            raise ApiError(400, "bad host", f"the request has {len(values)} Host headers; {_HOST_EXAMPLE}")
        name = host_name(values[0])
        if name is None:
            raise ApiError(400, "bad host", f"Host {values[0].decode('latin-1')[:100]!r} is malformed; "
                                            f"{_HOST_EXAMPLE}")
        if self.allowed_hosts is not None and name not in self.allowed_hosts:
            raise ApiError(400, "host not allowed",
                           "this server only answers requests addressed to localhost / 127.0.0.1")

    def _check_slot(self) -> None:
        if self.counter.in_flight >= self.max_concurrency:
            self.counter.rejected_busy += 1
            raise ApiError(503, "busy", f"{self.max_concurrency} predictions are already in flight; retry shortly",
                           {"Retry-After": RETRY_AFTER_S})

    def _check_declared_length(self, scope) -> None:
        declared = _header(scope, b"content-length")
        if declared is None:
            return
        try:
            length = int(declared)
        except ValueError:
            raise ApiError(400, "bad request", "invalid Content-Length header", {"Connection": "close"}) from None
        if length > self.max_body:
            raise ApiError(413, "body too large", f"{length} bytes; the limit is {self.max_body} bytes",
                           {"Connection": "close"})

    async def _read_body(self, receive) -> bytes | None:
        """The whole body (None: the client went away), within the size limit and the total deadline."""
        deadline = time.monotonic() + self.body_timeout_s
        chunks, received = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise ApiError(408, "request timeout", f"the body did not arrive within {self.body_timeout_s:g} s",
                               {"Connection": "close"}) from None
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_body:
                raise ApiError(413, "body too large", f"the body passed the limit of {self.max_body} bytes",
                               {"Connection": "close"})
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        predict = scope["path"] == PREDICT_PATH
        try:
            self._check_host(scope)
        except ApiError as exc:
            return await send_json(send, exc.status, exc.error, exc.detail, exc.headers)
        if not predict or scope["method"] != "POST":
            if scope["method"] == "HEAD" and not predict:
                scope, send = dict(scope, method="GET"), _without_body(send)
            return await self.app(scope, receive, send)
        try:
            self._check_slot()              # refused before the upload when already full
            self._check_declared_length(scope)
            body = await self._read_body(receive)
            if body is None:
                return None
            self._check_slot()              # the slot is taken only now, with the whole body here
        except ApiError as exc:
            return await send_json(send, exc.status, exc.error, exc.detail, exc.headers)
        self.counter.in_flight += 1
        try:
            await self.app(scope, _replay(body, receive), send)
        finally:
            self.counter.in_flight -= 1
