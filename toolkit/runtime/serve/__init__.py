"""`toolkit serve-local`: a hardened HTTP server over one exported model, with micro-batching.

    toolkit serve-local                          # newest export on http://127.0.0.1:8000
    toolkit serve-local exports/flowers.onnx --port 9000 --max-batch 16 --max-wait-ms 5

Endpoints: GET /health (live), GET /ready (503 until the warm-up inference ran), GET /v1/model,
POST /v1/predict (raw image body or multipart `file`, ?top_k=), GET / (drop-an-image page),
GET /docs and /openapi.json (FastAPI's). HEAD works wherever GET does.

The modules, in the order a request meets them:
    server.py   serve(ServeOptions): bind, host warning, load the model, uvicorn (on uvloop where installed), signals
    protocol.py the HTTP/1.1 protocol: total head and body deadlines, idle timeout, connection cap, JSON errors
    guard.py    ASGI guard: Host check, HEAD, the whole body read before a prediction slot is taken
    app.py      create_app(): the FastAPI routes, decode + preprocess on the decode pool (runtime/decode_pool.py)
    batcher.py  Batcher: worker threads (one per OpenVINO infer request), micro-batches, one session call per batch;
                a request alone in the server runs in the thread that decoded it (run_alone)
    errors.py   ApiError and the JSON error bodies {"error", "detail"} (no tracebacks, no paths)
    options.py  Limits, ServeOptions and their checks

The server stays on 127.0.0.1 unless another host is asked for, and has no endpoint that loads a
model. Light package: FastAPI, uvicorn and onnxruntime are imported when a server is built, never torch.
"""
from toolkit.runtime.serve.app import create_app
from toolkit.runtime.serve.batcher import Batcher
from toolkit.runtime.serve.errors import ApiError
from toolkit.runtime.serve.options import DEFAULTS, Limits, ServeOptions
from toolkit.runtime.serve.server import host_warning, serve

__all__ = ["serve", "create_app", "Batcher", "host_warning", "DEFAULTS", "ApiError", "Limits", "ServeOptions"]
