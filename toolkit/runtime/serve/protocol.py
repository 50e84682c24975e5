"""serve-local's HTTP/1.1 protocol: uvicorn's h11 protocol with total deadlines, a connection cap, JSON errors.

uvicorn alone times only the idle wait between requests, and any byte that arrives cancels that
timer: a client that sends its head or its body a byte at a time holds its connection for as long as
it likes. Here each connection has one deadline at a time, never restarted by the bytes that arrive:

    head   from the accept, or from the first byte of the next request on a kept-alive connection,
           until the whole request head is in: `header_timeout`
    body   from the end of the head until the end of the body: `body_timeout` (for every route)
    idle   between requests: uvicorn's own timer (`timeout_keep_alive`, set from `keep_alive`)
    write  while the answers the client has not read pass the transport's 64 KB high-water mark (it
           asked, pipelining, and does not read): `write_timeout` to read them down, else the
           connection is aborted (no answer can reach a client that does not read)

When a head or body deadline passes, the client gets 408 JSON and the connection is closed (a
connection that sent nothing at all is just closed). Past `max_connections` open connections, an idle
kept-alive one is closed to make room, else one that does not read its answers; if there is neither,
the new connection's request is answered 503 busy, so excess connections live no longer than the
deadlines allow. Protocol errors are answered as JSON with their status, then the connection closes:
h11's own (a bad request line, a head over 16 KB, ...: 400, 431, 501), a request line that cannot
become valid however it goes on (400 at once, not 408 at the head deadline), a version other than
HTTP/1.x (505), and the framing RFC 9112 section 6.1 says to refuse: Content-Length together with
Transfer-Encoding (a smuggling pattern), Transfer-Encoding in HTTP/1.0 (400).
"""
import http
import logging
import re
import socket
import struct

# uvicorn first: without the serve extra, the ModuleNotFoundError names uvicorn, not h11.
from uvicorn.protocols.http.h11_impl import H11Protocol
import h11  # noqa: E402  (after uvicorn, on purpose)

from toolkit.runtime.serve.errors import response_bytes, send_json
from toolkit.runtime.serve.options import RETRY_AFTER_S, Limits

log = logging.getLogger("toolkit.runtime.serve")
H11_HEAD_LIMIT = 16 * 1024   # h11's default max_incomplete_event_size: the longest request head accepted
_HEAD_END = re.compile(rb"\n\r?\n")   # the blank line that ends a head (h11 takes bare LF line ends too)
# A request line (RFC 9112 section 3: method token, SP, a target of visible characters, SP, HTTP/d.d),
# and any start of one: a first line that matches neither can never become a request, whatever follows.
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_REQUEST_LINE = re.compile(_TOKEN + rb"+ [\x21-\x7e\x80-\xff]+ HTTP/[0-9]\.[0-9]\r?")
_REQUEST_LINE_START = re.compile(_TOKEN + rb"*(?: [\x21-\x7e\x80-\xff]*(?: (?:H(?:T(?:T(?:P(?:/(?:[0-9](?:\.(?:[0-9]"
                                 rb"\r?)?)?)?)?)?)?)?)?)?)?")


def _framing_error(event: h11.Request) -> h11.RemoteProtocolError | None:
    """What h11 lets through but must not be served: another HTTP version, ambiguous body framing."""
    version = event.http_version.decode("ascii", "replace")
    if event.http_version not in (b"1.0", b"1.1"):
        return h11.RemoteProtocolError(f"HTTP/{version} is not supported; expected HTTP/1.1 (or 1.0)",
                                       error_status_hint=505)
    names = {name for name, _ in event.headers}
    if b"transfer-encoding" in names and b"content-length" in names:
        return h11.RemoteProtocolError("Content-Length together with Transfer-Encoding (RFC 9112 section 6.1: "
                                       "the body's end would be ambiguous); send one of them")
    if b"transfer-encoding" in names and event.http_version == b"1.0":
        return h11.RemoteProtocolError("Transfer-Encoding in an HTTP/1.0 request (RFC 9112 section 6.1); "
                                       "send Content-Length, or use HTTP/1.1")
    return None


def head_problem(pending: bytes, max_head_bytes: int) -> tuple[int, str] | None:
    """(status, detail) if the request head being read in `pending` is already wrong, else None: over
    `max_head_bytes` (the blank line included; h11 checks only a head still incomplete after a read, so
    a whole 200 KB head in one read would pass it), or a first line no request line can start with."""
    end = _HEAD_END.search(pending)
    size = end.end() if end else len(pending)
    if size > max_head_bytes:
        return 431, f"the request head is over {max_head_bytes} bytes"
    first, newline, _ = pending.lstrip(b"\r\n").partition(b"\n")
    if not (_REQUEST_LINE if newline else _REQUEST_LINE_START).fullmatch(first):
        return 400, f"invalid HTTP request: the request line {first[:60]!r} is not METHOD TARGET HTTP/1.1"
    return None


class _Connection(h11.Connection):
    """h11's connection that keeps the protocol error it raised (uvicorn's handler is not told which),
    and raises one for the requests h11 accepts but serve-local refuses (see _framing_error)."""

    last_error: h11.RemoteProtocolError | None = None

    def next_event(self):
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as exc:
            self.last_error = exc
            raise
        if isinstance(event, h11.Request):
            self.last_error = _framing_error(event)
            if self.last_error is not None:
                raise self.last_error
        return event


def _busy_app(max_connections: int):
    async def busy(scope, receive, send):
        await send_json(send, 503, "busy", f"{max_connections} connections are already open; retry shortly",
                        {"Retry-After": RETRY_AFTER_S, "Connection": "close"})
    return busy


class DeadlineH11Protocol(H11Protocol):
    """One connection (see the module docstring). `protocol_class(limits)` sets the four class fields."""

    header_timeout = 10.0
    body_timeout = 30.0
    write_timeout = 10.0
    max_connections = 128

    def __init__(self, config, server_state, app_state, _loop=None):
        super().__init__(config, server_state, app_state, _loop)
        size = config.h11_max_incomplete_event_size
        self.conn = _Connection(h11.SERVER, *(() if size is None else (size,)))
        self.max_head_bytes = H11_HEAD_LIMIT if size is None else int(size)
        self._phase: str | None = None      # "head", "body" or None (idle, or the server is answering)
        self._deadline = None               # the asyncio TimerHandle of that phase
        self._write_deadline = None         # armed while the client leaves over 64 KB of answers unread

    # ---- the deadlines -------------------------------------------------------------------------
    def _buffered(self) -> bool:
        return bool(self.conn.trailing_data[0])

    def _track(self, idle_is_head: bool) -> None:
        """Arm the deadline of the phase the connection is in now (a phase keeps its first deadline)."""
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            phase = "body"
        elif state is h11.IDLE and (idle_is_head or self._phase == "head"):
            phase = "head"
        else:
            phase = None
        if phase == self._phase:
            return
        if self._deadline is not None:
            self._deadline.cancel()
        self._phase, self._deadline = phase, None
        if phase is not None:
            seconds = self.header_timeout if phase == "head" else self.body_timeout
            self._deadline = self.loop.call_later(seconds, self._deadline_passed)

    def _deadline_passed(self) -> None:
        phase, self._phase, self._deadline = self._phase, None, None
        if self.transport.is_closing():
            return
        if phase == "head" and not self._buffered():
            self._close(None)   # not one byte of a request: nobody to answer
        elif phase == "head":
            self._close(response_bytes(408, "request timeout", f"the request head did not arrive within "
                                                               f"{self.header_timeout:g} s"))
        else:
            self._close(response_bytes(408, "request timeout", f"the body did not arrive within "
                                                               f"{self.body_timeout:g} s after the head"))

    def _close(self, response: bytes | None) -> None:
        """Answer `response` (if no answer to this request has started) and close the connection."""
        if response is not None and self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            self.transport.write(response)
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True      # the app's receive() now answers http.disconnect
            self.cycle.message_event.set()
        self.transport.close()

    def _abort(self) -> None:
        """Drop the connection with a reset: close() would wait for a client that does not read, and the
        kernel would keep trying to deliver its unread answers (SO_LINGER 0 discards them)."""
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass   # already gone: abort() below is all there is to do
        self.transport.abort()

    def _write_deadline_passed(self) -> None:
        self._write_deadline = None
        if not self.transport.is_closing():
            log.info("closing a connection that left its answers unread for %g s", self.write_timeout)
            self._abort()

    @property
    def not_reading(self) -> bool:
        """Over the high-water mark of unread answers (the transport paused our writes)."""
        return self.flow is not None and self.flow.write_paused

    # ---- uvicorn's hooks -------------------------------------------------------------------------
    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_deadline is None:
            self._write_deadline = self.loop.call_later(self.write_timeout, self._write_deadline_passed)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.max_connections and not self._make_room():
            self.app = _busy_app(self.max_connections)   # answers once its head is in (or the head deadline)
        self._track(idle_is_head=True)

    def data_received(self, data: bytes) -> None:
        problem = head_problem(self.conn.trailing_data[0] + data, self.max_head_bytes) \
            if self.conn.their_state is h11.IDLE else None
        if problem is not None:
            status, detail = problem
            return self._close(response_bytes(status, http.HTTPStatus(status).phrase.lower(), detail))
        super().data_received(data)
        if not self.transport.is_closing():
            self._track(idle_is_head=True)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._track(idle_is_head=self._buffered())   # a pipelined request already waiting

    def connection_lost(self, exc) -> None:
        for timer in (self._deadline, self._write_deadline):
            if timer is not None:
                timer.cancel()
        self._deadline = self._write_deadline = None
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        error = self.conn.last_error
        status = getattr(error, "error_status_hint", 400) if error is not None else 400
        status = status if status in http.HTTPStatus._value2member_map_ else 400
        detail = f"invalid HTTP request: {error or msg}"
        self._close(response_bytes(status, http.HTTPStatus(status).phrase.lower(), detail))

    def _make_room(self) -> bool:
        """Close an idle keep-alive connection for this new one, else abort one that does not read its
        answers; False if every other connection is doing its part."""
        others = [o for o in list(self.connections) if o is not self and not o.transport.is_closing()]
        for other in others:
            if getattr(other, "timeout_keep_alive_task", None) is not None:
                log.info("connection limit: closing an idle keep-alive connection for a new one")
                other.timeout_keep_alive_handler()
                return True
        for other in others:
            if getattr(other, "not_reading", False):
                log.info("connection limit: closing a connection that does not read its answers for a new one")
                other._abort()
                return True
        return False


def protocol_class(limits: Limits) -> type:
    """The protocol class uvicorn builds each connection with, carrying these limits."""
    return type("ServeLocalProtocol", (DeadlineH11Protocol,), {
        "header_timeout": float(limits.header_timeout), "body_timeout": float(limits.body_timeout),
        "write_timeout": float(limits.write_timeout), "max_connections": int(limits.max_connections)})
