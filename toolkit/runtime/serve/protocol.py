"""serve-local's HTTP/1.1 protocol: uvicorn's h11 protocol with total deadlines, a connection cap, JSON errors.

uvicorn alone times only the idle wait between requests, and any byte that arrives cancels that
timer: a client that sends its head or its body a byte at a time holds its connection for as long as
it likes. Here each connection has one deadline at a time, never restarted by the bytes that arrive:

    head   from the accept, or from the first byte of the next request on a kept-alive connection,
           until the whole request head is in: `header_timeout`
    body   from the end of the head until the end of the body: `body_timeout` (for every route)
    idle   between requests: uvicorn's own timer (`timeout_keep_alive`, set from `keep_alive`)

When one passes, the client gets 408 JSON and the connection is closed (a connection that sent
nothing at all is just closed). Past `max_connections` open connections, an idle kept-alive one is
closed to make room; if none is idle, the new connection's request is answered 503 busy, so excess
connections live no longer than the deadlines allow. h11's protocol errors (a bad request line, a head
over h11's 16 KB, ...) are answered as JSON too, with h11's status (400, 431, 501).
"""
import http
import logging

# uvicorn first: without the serve extra, the ModuleNotFoundError names uvicorn, not h11.
from uvicorn.protocols.http.h11_impl import H11Protocol
import h11  # noqa: E402  (after uvicorn, on purpose)

from toolkit.runtime.serve.errors import response_bytes, send_json
from toolkit.runtime.serve.options import RETRY_AFTER_S, Limits

log = logging.getLogger("toolkit.runtime.serve")
H11_HEAD_LIMIT = 16 * 1024   # h11's default max_incomplete_event_size: the longest request head accepted


class _Connection(h11.Connection):
    """h11's connection that keeps the protocol error it raised (uvicorn's handler is not told which)."""

    last_error: h11.RemoteProtocolError | None = None

    def next_event(self):
        try:
            return super().next_event()
        except h11.RemoteProtocolError as exc:
            self.last_error = exc
            raise


def _busy_app(max_connections: int):
    async def busy(scope, receive, send):
        await send_json(send, 503, "busy", f"{max_connections} connections are already open; retry shortly",
                        {"Retry-After": RETRY_AFTER_S, "Connection": "close"})
    return busy


class DeadlineH11Protocol(H11Protocol):
    """One connection (see the module docstring). `protocol_class(limits)` sets the three class fields."""

    header_timeout = 10.0
    body_timeout = 30.0
    max_connections = 128

    def __init__(self, config, server_state, app_state, _loop=None):
        super().__init__(config, server_state, app_state, _loop)
        size = config.h11_max_incomplete_event_size
        self.conn = _Connection(h11.SERVER, *(() if size is None else (size,)))
        self.max_head_bytes = H11_HEAD_LIMIT if size is None else int(size)
        self._phase: str | None = None      # "head", "body" or None (idle, or the server is answering)
        self._deadline = None               # the asyncio TimerHandle of that phase

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

    # ---- uvicorn's hooks -------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.max_connections and not self._close_an_idle_connection():
            self.app = _busy_app(self.max_connections)   # answers once its head is in (or the head deadline)
        self._track(idle_is_head=True)

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE and self._head_too_long(data):
            return self._close(response_bytes(431, "request header fields too large",
                                              f"the request head is over {self.max_head_bytes} bytes"))
        super().data_received(data)
        if not self.transport.is_closing():
            self._track(idle_is_head=True)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._track(idle_is_head=self._buffered())   # a pipelined request already waiting

    def connection_lost(self, exc) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        error = self.conn.last_error
        status = getattr(error, "error_status_hint", 400) if error is not None else 400
        status = status if status in http.HTTPStatus._value2member_map_ else 400
        detail = f"invalid HTTP request: {error or msg}"
        self._close(response_bytes(status, http.HTTPStatus(status).phrase.lower(), detail))

    def _head_too_long(self, data: bytes) -> bool:
        """Whether the head being read passes the limit. h11 checks only a head that is still incomplete
        after a read, so a whole 200 KB head arriving in one read would pass it."""
        pending = self.conn.trailing_data[0] + data
        end = pending.find(b"\r\n\r\n")
        return (end if end >= 0 else len(pending)) > self.max_head_bytes

    def _close_an_idle_connection(self) -> bool:
        for other in list(self.connections):
            if other is not self and getattr(other, "timeout_keep_alive_task", None) is not None \
                    and not other.transport.is_closing():
                log.info("connection limit: closing an idle keep-alive connection for a new one")
                other.timeout_keep_alive_handler()
                return True
        return False


def protocol_class(limits: Limits) -> type:
    """The protocol class uvicorn builds each connection with, carrying these limits."""
    return type("ServeLocalProtocol", (DeadlineH11Protocol,), {
        "header_timeout": float(limits.header_timeout), "body_timeout": float(limits.body_timeout),
        "max_connections": int(limits.max_connections)})
