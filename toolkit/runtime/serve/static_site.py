"""`toolkit serve-local --static DIR`: a folder (e.g. what `toolkit export --format web` writes) over HTTP, with
the cross-origin isolation headers (COOP/COEP) that WebAssembly threads need: without them onnxruntime-web
silently runs one thread. Standard library only; the export's browser check serves its folder with it too."""
from __future__ import annotations

import contextlib
import functools
import os
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

from toolkit.errors import UserError

ISOLATION_HEADERS = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
                     "Cross-Origin-Resource-Policy": "same-origin"}


class _Handler(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                      ".js": "text/javascript", ".wasm": "application/wasm", ".onnx": "application/octet-stream"}

    def end_headers(self) -> None:
        for key, value in ISOLATION_HEADERS.items():
            self.send_header(key, value)
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, *args) -> None:  # quiet: the banner says where it listens
        pass

    def list_directory(self, path):  # a folder without index.html is not listed: 404, as for a missing file
        self.send_error(404, "Not Found")
        return None


def static_server(folder: str, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """A bound (not yet serving) server of `folder`; port 0 picks a free one (server.server_address)."""
    if not os.path.isfile(os.path.join(folder, "index.html")):
        raise UserError(f"--static {folder}: expected a folder with an index.html (toolkit export --format web "
                        "writes one)")
    handler = functools.partial(_Handler, directory=os.path.abspath(folder))
    try:
        return ThreadingHTTPServer((host, int(port)), handler)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None


@contextlib.contextmanager
def serving(folder: str):
    """The folder served on a free loopback port in a thread, for the block; yields its URL."""
    server = static_server(folder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def serve_static(folder: str, host: str, port: int) -> None:
    """Serve `folder` until Ctrl-C."""
    server = static_server(folder, host, port)
    print(f"serving {folder} at http://{host}:{server.server_address[1]}/ (COOP/COEP set: WebAssembly threads "
          "work); Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
