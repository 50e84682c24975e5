"""`serve()`: check the options, bind the port, load the model, run uvicorn until SIGTERM / Ctrl-C."""
import ipaddress
import os
import signal
import socket
import sys
import threading
import time
import warnings

from toolkit import artifacts
from toolkit.errors import AbandonedWorkError, UserError
from toolkit.preprocess import SERVE_FORMATS
from toolkit.runtime.engines import EngineOptions, OpenVinoOptions, adapter_for
from toolkit.runtime.predictor import Predictor
from toolkit.runtime.serve.app import create_app, require_stack
from toolkit.runtime.serve.options import GRACEFUL_TIMEOUT_S, Limits, ServeOptions
from toolkit.runtime.serve.static_site import serve_static

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")
_ANY_HOST = ("0.0.0.0", "::", "[::]")


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
    where = "every network interface" if host in _ANY_HOST else host
    return (f"warning: listening on {where}: anyone who can reach this machine can use the model; "
            "there is no authentication or TLS (put a reverse proxy in front, or use the default 127.0.0.1)")


def _allowed_hosts(host: str) -> tuple | None:
    """Host header names a loopback server answers (the DNS-rebinding guard); None: any."""
    if not _is_loopback(host):
        return None
    return tuple(sorted(set(LOOPBACK_NAMES) | {host.lower(), f"[{host.strip('[]').lower()}]"}))


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


def _model_file(options: ServeOptions) -> str:
    """The .onnx to serve: the one given, or the newest export in the folder given (or in exports_dir)."""
    model = options.model
    if model is None or os.path.isdir(str(model)):
        model = artifacts.newest_export(options.exports_dir if model is None else str(model))
        print(f"serve-local: serving the newest export {model}", flush=True)
    return str(model)


def _build_app(options: ServeOptions, model: str, host: str):
    asked = EngineOptions(device=options.device, threads=options.threads, precision=options.precision,
                          allow_fallback=options.allow_fallback, openvino=OpenVinoOptions(streams=options.streams))
    engine_options = adapter_for(options.engine).serving_options(asked)
    predictor = Predictor(model, batch_size=max(32, int(options.max_batch)), max_pixels=int(options.max_pixels),
                          formats=SERVE_FORMATS, engine=options.engine, options=engine_options)
    return predictor, create_app(predictor, options.limits, allowed_hosts=_allowed_hosts(host))


def _print_banner(options: ServeOptions, model: str, host: str, port: int, predictor) -> None:
    if host in _ANY_HOST:
        shown_host = "127.0.0.1" if host == "0.0.0.0" else "[::1]"   # a URL a browser here can open
    else:
        shown_host = f"[{host.strip('[]')}]" if ":" in host else host
    url = f"http://{shown_host}:{port}"
    print(f"serve-local: {os.path.basename(model)} (sha256 {predictor.sha256[:12]}, {len(predictor.labels)} labels, "
          f"{predictor.precision}) on {predictor.runs_on}; read back: {predictor.engine_info.settings_line()}, "
          f"{predictor.session.optimal_requests} batch worker(s); event loop {event_loop()}", flush=True)
    print(f"serve-local: micro-batching up to {options.max_batch} images, waiting at most {options.max_wait_ms:g} ms; "
          f"limits: body {options.max_body_mb:g} MB, {int(options.max_pixels) / 1e6:g} MP, "
          f"{options.max_concurrency} predictions in flight, {options.max_connections} connections; timeouts: "
          f"head {options.header_timeout:g} s, body {options.body_timeout:g} s, idle {options.keep_alive:g} s, "
          f"unread answers {options.write_timeout:g} s",
          flush=True)
    warning = host_warning(host)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    where = "" if shown_host.strip("[]") == host.strip("[]") else f" (bound to {host})"
    print(f"serve-local: listening on {url}{where}  (page {url}/, API docs {url}/docs; Ctrl-C or SIGTERM "
          "stops)", flush=True)


def _announce_ready(batcher, server, t0: float, timeout: float, late: list) -> None:
    """Print the ready line once the warm-up is done (nothing if it failed or the server stopped first).
    A warm-up still running after `timeout` seconds stops the server (and appends to `late`): a graph
    that never ends would otherwise leave it unready for ever."""
    deadline = time.monotonic() + timeout
    while not batcher.ready.wait(0.2):
        if batcher.warmup_error or not batcher.thread.is_alive() and batcher.thread.ident is not None:
            return
        if server.should_exit:
            return
        if time.monotonic() > deadline:
            late.append(timeout)
            server.should_exit = True
            return
    print(f"serve-local: ready {time.perf_counter() - t0:.2f}s after start (model load + warm-up; the warm-up "
          f"inference took {batcher.warmup_s:.3f}s)", flush=True)


def event_loop() -> str:
    """The asyncio event loop serve-local runs on: uvloop where it is installed (the serve extra brings it,
    except on Windows), else Python's own."""
    import importlib.util

    return "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"


def uvicorn_config(app, limits: Limits, **settings):
    """uvicorn's settings for serve-local: its own HTTP protocol (total head and body deadlines, the
    connection cap, JSON protocol errors; see protocol.py), the idle keep-alive timeout and the event loop."""
    import uvicorn

    from toolkit.runtime.serve.protocol import protocol_class

    settings = {"log_level": "warning", "access_log": False, "lifespan": "on", "server_header": False,
                "timeout_graceful_shutdown": GRACEFUL_TIMEOUT_S, "loop": event_loop(), **settings}
    return uvicorn.Config(app, http=protocol_class(limits), timeout_keep_alive=float(limits.keep_alive), **settings)


def _run_until_stopped(server, sock: socket.socket) -> None:
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


def serve(options: ServeOptions | str | None = None, **fields) -> None:
    """Serve an exported model over HTTP until SIGTERM / Ctrl-C (then finish the requests in flight).

    `serve(ServeOptions(...))`, or `serve(model, port=..., max_batch=...)` with ServeOptions' fields
    as keywords. model None: the newest export in `exports_dir`. host: 127.0.0.1 unless asked
    otherwise (anything else prints a warning). port 0 picks a free port (the URL is printed).
    """
    t0 = time.perf_counter()
    if not isinstance(options, ServeOptions):
        options = ServeOptions(**{"model": options, **fields})
    elif fields:
        raise TypeError("serve: pass ServeOptions or its fields as keywords, not both")
    host = str(options.host)
    problems = options.problems()
    if problems:
        raise UserError("\n".join(problems))
    if options.static is not None:   # a static folder: no model, no inference here
        if warning := host_warning(host):
            print(warning, file=sys.stderr, flush=True)
        return serve_static(str(options.static), host, int(options.port))
    require_stack()
    import uvicorn

    model = _model_file(options)
    sock = _bind(host, int(options.port))   # before loading the model: a busy port fails fast
    try:
        predictor, app = _build_app(options, model, host)
    except BaseException:
        sock.close()
        raise
    # Pillow warns from 89 MP on; our own cap (max_pixels) is what decides here.
    from PIL import Image
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    _print_banner(options, model, host, sock.getsockname()[1], predictor)
    server = uvicorn.Server(uvicorn_config(app, options.limits))
    batcher = app.state.batcher
    late: list = []
    threading.Thread(target=_announce_ready, args=(batcher, server, t0, float(options.warmup_timeout), late),
                     name="toolkit-ready", daemon=True).start()
    _run_until_stopped(server, sock)
    if late:
        raise AbandonedWorkError(f"{model}: the warm-up inference did not finish within {late[0]:g} s (--warmup-timeout); "
                        "the model is too slow for this machine, or its graph does not end; stopped serving")
    images, batches = batcher.images, batcher.batches
    print(f"serve-local: stopped after {images} prediction{'s' * (images != 1)} in {batches} "
          f"batch{'es' * (batches != 1)}", flush=True)
