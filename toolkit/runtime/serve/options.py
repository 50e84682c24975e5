"""What `toolkit serve-local` can be asked for: the server's limits and its options, with their checks."""
import math
from dataclasses import asdict, dataclass, fields

from toolkit.errors import UserError
from toolkit.limits import DEFAULT_MAX_PIXELS
from toolkit.runtime.engines import adapter_for, parse_precision

RETRY_AFTER_S = 1            # the Retry-After sent with 503 busy / shutting down
GRACEFUL_TIMEOUT_S = 30      # how long a stop waits for the requests in flight
BODY_TIMEOUT_S = 30.0        # the whole body must arrive within this long after the headers, else 408
HEADER_TIMEOUT_S = 10.0      # the whole request head must arrive within this long, else 408 (or a silent close)
KEEP_ALIVE_S = 5.0           # an idle keep-alive connection is closed after this long
WRITE_TIMEOUT_S = 10.0       # a client leaving over 64 KB of answers unread has this long to read them
MAX_CONNECTIONS = 128        # open connections; past it, idle ones are closed first, then new ones get 503
WARMUP_TIMEOUT_S = 600.0     # the warm-up inference must finish within this long, else serve-local exits 2

# (lowest value, what the message says is expected) per limit; `whole` limits must be integers.
_RULES = {
    "max_batch": (1, "a whole number >= 1"), "max_wait_ms": (0, "a number of milliseconds >= 0"),
    "max_body_mb": (1e-6, "a positive number of megabytes"), "max_pixels": (1, "a whole number >= 1"),
    "max_concurrency": (1, "a whole number >= 1"), "top_k": (1, "a whole number >= 1"),
    "header_timeout": (1e-3, "a positive number of seconds"), "body_timeout": (1e-3, "a positive number of seconds"),
    "keep_alive": (1e-3, "a positive number of seconds"), "max_connections": (1, "a whole number >= 1"),
    "write_timeout": (1e-3, "a positive number of seconds"),
}
_WHOLE = ("max_batch", "max_pixels", "max_concurrency", "top_k", "max_connections")


@dataclass
class Limits:
    """How much one server takes on: the serve-local --max-* and --top-k options."""

    max_batch: int = 16                 # images per session call (one micro-batch)
    max_wait_ms: float = 5.0            # how long a batch's first image waits for company
    max_body_mb: float = 10.0           # request body cap, checked before and while reading
    max_pixels: int = DEFAULT_MAX_PIXELS  # decoded image cap, checked before decoding
    max_concurrency: int = 64           # predictions in flight before 503 busy
    top_k: int = 5                      # labels answered when the request has no ?top_k=
    header_timeout: float = HEADER_TIMEOUT_S  # seconds for the whole request head (total, not per byte)
    body_timeout: float = BODY_TIMEOUT_S      # seconds for the whole body, counted from the end of the head
    keep_alive: float = KEEP_ALIVE_S          # seconds an idle keep-alive connection stays open
    max_connections: int = MAX_CONNECTIONS    # connections open at once (slow ones included)
    write_timeout: float = WRITE_TIMEOUT_S    # seconds a client may leave over 64 KB of answers unread

    def problems(self) -> list[str]:
        """One line per limit that is not a number in range (the option name as typed on the CLI)."""
        problems = []
        for name, value in asdict(self).items():
            low, expected = _RULES[name]
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= low \
                and (isinstance(value, int) or math.isfinite(value))
            if ok and name in _WHOLE and int(value) != value:
                ok = False
            if not ok:
                problems.append(f"{name.replace('_', '-')}: {value!r}; expected {expected}")
        return problems

    @property
    def max_body_bytes(self) -> int:
        return int(float(self.max_body_mb) * 1024 * 1024)


DEFAULTS = asdict(Limits())
_LIMIT_NAMES = tuple(f.name for f in fields(Limits))


@dataclass
class ServeOptions(Limits):
    """Everything `serve()` is told: which model, where to listen, how to run it, and the limits (the fields
    of Limits, which it extends: each default is written once, there)."""

    model: str | None = None            # an .onnx file, a folder of exports, or None: the newest in exports_dir
    host: str = "127.0.0.1"             # anything but loopback prints a warning (no auth, no TLS)
    port: int = 8000                    # 0 picks a free port (the URL is printed)
    device: str = "auto"                # the Predictor's device: auto, cpu, cuda, ...
    threads: int | None = None          # ONNX Runtime intra-op threads (None: its default)
    allow_fallback: bool = False        # run on CPU when the asked-for device is unavailable
    engine: str = "onnxruntime"         # onnxruntime or openvino (one stream with every core; see streams)
    precision: str | None = None        # fp32 or bf16 (bf16: openvino only); None: fp32
    streams: int | None = None          # OpenVINO streams; None or 1: one, batches grow; N>1: THROUGHPUT, N workers
    exports_dir: str = "exports"        # where model=None looks for the newest export
    warmup_timeout: float = WARMUP_TIMEOUT_S  # seconds for the warm-up inference (TensorRT builds engines in it)
    static: str | None = None           # serve this folder instead (export --format web's), with COOP/COEP headers

    @property
    def limits(self) -> Limits:
        return Limits(**{name: getattr(self, name) for name in _LIMIT_NAMES})

    def problems(self) -> list[str]:
        problems = self.limits.problems()
        port = self.port
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            problems.append(f"port: {port!r}; expected a whole number 0..65535 (0 picks a free port)")
        streams = self.streams
        if streams is not None and (isinstance(streams, bool) or not isinstance(streams, int) or streams < 1):
            problems.append(f"streams: {streams!r}; expected a whole number >= 1 (or leave it unset)")
        warmup = self.warmup_timeout
        if isinstance(warmup, bool) or not isinstance(warmup, (int, float)) or not 0 < warmup < math.inf:
            problems.append(f"warmup-timeout: {warmup!r}; expected a positive number of seconds")
        if self.static is not None:   # a folder, served as files: the model's options would be ignored
            unused = [f.name for f in fields(self) if f.name not in ("static", "host", "port")
                      and getattr(self, f.name) != f.default]
            if unused:
                problems.append(f"static: serves a folder, no model; expected no {', '.join(unused)} with it "
                                "(they go with a model)")
        try:
            parse_precision(self.precision, self.engine)
            if self.streams is not None and not adapter_for(self.engine).takes_streams:
                problems.append(f"streams: {self.streams!r} is for OpenVINO (--engine openvino); ONNX Runtime "
                                "serves from one session: leave --streams out")
        except UserError as exc:
            problems.append(str(exc))
        return problems
