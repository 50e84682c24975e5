"""The benchmark record's constants and JSON schema (a JSON Schema subset), and a small validator for it.

SCHEMA_VERSION 2 (2 added engines, bf16, per-precision peaks, the ISA, OpenVINO's model-cache cold
start and the 12 MP end-to-end case); docs/benchmark.md documents every field. numpy-free, standard
library only.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Optional

from toolkit.runtime.engines import ENGINES  # standard library only, like this module

SCHEMA_VERSION = 2
E2E_IMAGE = (500, 375)  # width x height of the synthetic JPEGs decoded in end-to-end mode
E2E_PHOTO = (4032, 3024)  # the 12 MP phone-photo case (mode end_to_end_12mp)
E2E_IMAGES = {"end_to_end": E2E_IMAGE, "end_to_end_12mp": E2E_PHOTO}  # end-to-end mode -> its JPEG size
E2E_JPEG_QUALITY = 90
E2E_TOP_K = 5
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
DEVICES = ("cpu", "cuda", "tensorrt")
MODES = ("model", "end_to_end", "end_to_end_12mp")
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile")
TIMED = {
    "model": "model only: one session.run (ORT) or model(x) under torch.inference_mode (PyTorch) on a batch "
             "already decoded, preprocessed and in the model's dtype and layout; the logits come back to host "
             "memory on CPU. On CUDA the input sits on the device (ORT IO binding, torch tensor on cuda), the "
             "output stays there, and each call is synchronised before the clock stops.",
    "end_to_end": f"end to end: Predictor.predict on `batch` in-memory JPEG files ({E2E_IMAGE[0]}x{E2E_IMAGE[1]}, "
                  f"quality {E2E_JPEG_QUALITY}): decode (Pillow) + resize/crop/normalise (toolkit.preprocess) + "
                  f"inference + softmax + top-{E2E_TOP_K}, sequentially in one thread. PyTorch rows do the same "
                  "decode and preprocessing, then torch.from_numpy, model, softmax and topk.",
    "cold_start": "session (or PyTorch model) creation + the first model-only inference at that batch size, in a "
                  "fresh Python process (import time excluded, listed separately); batch sizes run in ascending "
                  "order in that process, so a later size's first run follows the earlier ones; torch.compile "
                  "starts there with an empty inductor cache, so its cold start includes compiling; OpenVINO's "
                  "session time is its compile, without a model cache (model_cache has it without a cache, with "
                  "an empty one being filled and with the filled one, each in its own fresh process). Without "
                  "isolation: measured in the benchmark process itself.",
    "peak_rss": "peak resident set size (Linux VmHWM, else getrusage ru_maxrss) of the fresh process that "
                "created only this backend and ran batch sizes up to this one: Python + libraries + model + "
                "buffers. rss_base_mb in the backend's cold_start is the same process before the model was "
                "loaded. Without isolation it is the benchmark process's peak so far (all backends together).",
    "gpu_memory": "GPU memory used by that fresh process (nvidia-smi, CUDA context included); PyTorch also "
                  "reports torch.cuda.max_memory_allocated.",
    "throughput": "images per second: per round, batch x iterations / time of that round's block; the "
                  "median over rounds, with min/max and quartiles over rounds",
    "latency": "milliseconds per call (one batch) over every timed iteration: percentiles p50/p90/p95/p99, "
               "mean, min, max, IQR; latency_per_image_ms is the same divided by the batch size",
    "gflops": "FLOPs per image counted from the ONNX graph (2 x multiply-accumulates of Conv/Gemm/MatMul and "
              "their quantized forms) x median throughput; fraction_of_peak divides it by the measured FP32 "
              "GEMM peak of the same device (the best sample, before and after the timing; an INT8 or FP16 row "
              "can pass 1.0: it is FP32-equivalent work); fraction_of_precision_peak divides it by the GEMM peak "
              "of the row's own precision (peak_precision: fp32, bf16, int8 or fp16), each peak the fastest of "
              "the engines available (peaks[].engine); fraction_of_gemm_in_rounds divides it by the median "
              "GFLOP/s of the same GEMM timed as one more entry of that batch size's rounds (same noise)",
}


def _t(*types: str) -> dict:
    return {"type": list(types) if len(types) > 1 else types[0]}


def _obj(props: dict, required: Optional[Iterable] = None) -> dict:
    return {"type": "object", "properties": props, "required": list(props if required is None else required)}


_NUM, _INT, _STR, _BOOL = _t("number"), _t("integer"), _t("string"), _t("boolean")
_NUM_N, _INT_N, _STR_N = _t("number", "null"), _t("integer", "null"), _t("string", "null")
_PCT = _obj({k: _NUM for k in ("p50", "p90", "p95", "p99")})
_MACHINE = _obj({"cpu": _STR, "cpu_flags": {"type": "array", "items": _STR},
                 "isa": _obj({**{k: _BOOL for k in ISA_FLAGS}, "summary": _STR}), "logical_cpus": _INT,
                 "usable_cpus": _INT, "physical_cores": _INT, "os": _STR, "python": _STR, "gpu": _STR_N,
                 "gpu_driver": _STR_N, "gpu_memory_mb": _NUM_N})
_VERSIONS = _obj({k: _STR_N for k in ("toolkit", "onnxruntime", "openvino", "onnx", "numpy", "pillow", "torch",
                                      "torchvision", "cuda_onnxruntime", "cuda_torch", "cudnn_torch")})
_FILES = _obj({"json": _STR, "markdown": _STR, "png": _STR_N})
_COMMON = {"schema_version": {"type": "integer", "enum": [SCHEMA_VERSION]}, "kind": _STR, "created": _STR,
           "command": _STR, "machine": _MACHINE, "versions": _VERSIONS, "notes": {"type": "array", "items": _STR},
           "files": _FILES}

INFERENCE_SCHEMA = _obj({
    **_COMMON,
    "model": _obj({"path": _STR, "name": _STR, "arch": _STR_N, "head": _STR_N, "classes": _INT_N,
                   "input": _t("object"), "preprocess": _t("object", "null"), "source_run": _STR_N,
                   "checkpoint": _STR_N, "flops_per_image": _INT}),
    "settings": _obj({"batch_sizes": {"type": "array", "items": _INT, "minItems": 1},
                      "precisions": {"type": "array", "items": {"type": "string", "enum": list(PRECISIONS)}},
                      "engines": {"type": "array", "minItems": 1, "items": {"type": "string", "enum": list(ENGINES)}},
                      "skipped": {"type": "array", "items": _obj({"engine": _STR, "device": _STR,
                                                                   "precision": _STR, "reason": _STR})},
                      "devices": {"type": "array", "items": _STR}, "torch": _BOOL, "compile": _BOOL,
                      "threads": _INT, "threads_source": _STR, "warmup": _t("integer", "string"), "rounds": _INT,
                      "iterations": _INT_N, "duration_s": _NUM_N, "end_to_end": _BOOL, "isolate": _BOOL,
                      "reference": _BOOL, "data": _STR_N, "split": _STR_N, "e2e_image": _t("object"),
                      "e2e_images": {"type": "array", "items": _obj({"mode": _STR, "format": _STR, "width": _INT,
                                                                      "height": _INT, "quality": _INT,
                                                                      "distinct": _INT, "bytes_mean": _INT})}}),
    "timed": _obj({k: _STR for k in TIMED}),
    "peaks": {"type": "array", "items": _obj({"device": _STR, "precision": _STR, "engine": _STR_N, "gflops": _NUM_N,
                                              "matrix": _INT, "threads": _INT_N, "candidates": _t("array"),
                                              "note": _STR, "samples_gflops": _t("array"),
                                              "in_rounds": {"type": "array", "items": _obj({
                                                  "batch": _INT, "median_gflops": _NUM, "min_gflops": _NUM,
                                                  "max_gflops": _NUM, "calls": _INT})}})},
    "backends": {"type": "array", "minItems": 1, "items": _obj({
        "key": _STR, "backend": {"type": "string", "enum": [*ENGINES, "torch-eager", "torch-compile"]},
        "engine": _STR, "engine_device": _STR_N, "inference_precision": _STR_N,
        "device": _STR, "precision": _STR, "provider": _STR_N, "providers": _t("array"), "file": _STR_N,
        "file_bytes": _INT_N, "flops_per_image": _INT, "flops_by_op": _t("object"), "session_options": _t("object"),
        "provider_options": _t("object"), "status": {"type": "string", "enum": ["ok", "failed"]}, "error": _STR_N,
        "cold_start": _t("object", "null"), "accuracy": _t("object", "null")})},
    "results": {"type": "array", "minItems": 1, "items": _obj({
        "key": _STR, "backend": _STR, "engine": _STR, "engine_device": _STR_N, "inference_precision": _STR_N,
        "device": _STR, "precision": _STR, "provider": _STR,
        "mode": {"type": "string", "enum": list(MODES)}, "e2e_image": _STR_N,
        "batch": {"type": "integer", "minimum": 1},
        "iterations": {"type": "integer", "minimum": 1}, "rounds": {"type": "integer", "minimum": 1},
        "throughput_ips": _obj({k: _NUM for k in ("median", "min", "max", "q25", "q75")}),
        "latency_ms": _obj({k: _NUM for k in ("p50", "p90", "p95", "p99", "mean", "min", "max", "q25", "q75", "iqr")}),
        "latency_per_image_ms": _PCT, "first_run_s": _NUM, "gflops": _NUM_N, "fraction_of_peak": _NUM_N,
        "fraction_of_precision_peak": _NUM_N, "peak_precision": _STR_N, "precision_peak_engine": _STR_N,
        "fraction_of_gemm_in_rounds": _NUM_N, "cold_start_s": _NUM_N,
        "peak_rss_mb": _NUM_N, "gpu_mem_mb": _NUM_N,
        "file_bytes": _INT_N, "top1": _NUM_N, "baseline": _STR_N, "speedup": _NUM_N})},
    "schedule": {"type": "array", "items": _obj({"round": _INT, "batch": _INT, "key": _STR, "mode": _STR,
                                                 "iterations": _INT})},
})

TRAIN_SCHEMA = _obj({
    **_COMMON,
    "recipe": _obj({"path": _STR, "name": _STR, "arch": _STR, "head": _STR, "crop": _INT, "classes": _INT,
                    "strategy": _STR, "optimizer": _STR, "batch_size": _INT, "amp": _STR_N, "channels_last": _BOOL,
                    "train_images": _INT}),
    "settings": _obj({"device": _STR, "threads": _INT, "threads_source": _STR, "warmup": _t("integer", "string"),
                      "rounds": _INT, "iterations": _INT_N, "duration_s": _NUM_N, "loader_batches": _INT}),
    "timed": _obj({"step": _STR, "loader": _STR, "limiter": _STR}),
    "phases": {"type": "array", "minItems": 1, "items": _obj({
        "phase": _STR, "groups": {"type": "array", "items": _STR}, "trainable_params": _INT, "iterations": _INT,
        "first_step_s": _NUM, "throughput_ips": _obj({k: _NUM for k in ("median", "min", "max", "q25", "q75")}),
        "latency_ms": _t("object")})},
    "loader": _obj({"workers": _INT, "batch_size": _INT, "startup_s": _NUM, "batches": _INT, "images": _INT,
                    "augment": _STR, "throughput_ips": _obj({k: _NUM for k in ("overall", "median_batch",
                                                                                 "min_batch", "max_batch")})}),
    "limiter": _obj({"bound_by": {"type": "string", "enum": ["data loader", "training step"]}, "step_ips": _NUM,
                     "loader_ips": _NUM, "ratio": _NUM_N, "estimate_shared_cpu_ips": _NUM_N, "advice": _STR}),
})

COMPARE_SCHEMA = _obj({
    **_COMMON,
    "settings": _obj({"batch_sizes": {"type": "array", "items": _INT, "minItems": 1},
                      "precisions": {"type": "array", "items": {"type": "string", "enum": list(PRECISIONS)}},
                      "engines": {"type": "array", "minItems": 1, "items": {"type": "string", "enum": list(ENGINES)}},
                      "devices": {"type": "array", "items": _STR}, "threads": _INT, "rounds": _INT,
                      "iterations": _INT_N, "duration_s": _NUM_N, "data": _STR_N, "split": _STR_N,
                      "pareto_batch": _INT, "pareto_mode": _STR, "interleaved": _BOOL}),
    "models": {"type": "array", "minItems": 2, "items": _obj({
        "name": _STR, "path": _STR, "arch": _STR_N, "classes": _INT_N, "preprocess": _t("object", "null"),
        "flops_per_image": _INT, "record": _STR})},
    "rows": {"type": "array", "minItems": 1, "items": _obj({
        "model": _STR, "key": _STR, "engine": _STR, "device": _STR, "precision": _STR,
        "batch": {"type": "integer", "minimum": 1}, "ips": _NUM, "ips_min": _NUM, "ips_max": _NUM,
        "latency_p50_ms": _NUM, "file_bytes": _INT_N, "flops_per_image": _INT, "top1": _NUM_N,
        "pareto": _t("boolean", "null")})},
    "schedule": {"type": "array", "items": _obj({"round": _INT, "batch": _INT, "model": _STR, "key": _STR,
                                                 "mode": _STR, "iterations": _INT})},
})

SCHEMAS = {"inference": INFERENCE_SCHEMA, "train": TRAIN_SCHEMA, "compare": COMPARE_SCHEMA}

_JSON_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _type_ok(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, _JSON_TYPES[name])


def validate(value: Any, schema: dict, where: str = "$") -> list:
    """Problems of `value` against a JSON Schema subset (type, enum, required, properties, items,
    minItems, minimum): one line each, empty when valid."""
    problems = []
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_type_ok(value, t) for t in types):
            return [f"{where}: {type(value).__name__} {str(value)[:40]!r}; expected {' or '.join(types)}"]
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where}: {value!r}; expected one of {schema['enum']}")
    if "minimum" in schema and isinstance(value, (int, float)) and value < schema["minimum"]:
        problems.append(f"{where}: {value} is below {schema['minimum']}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                problems.append(f"{where}.{key}: missing")
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                problems += validate(value[key], sub, f"{where}.{key}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            problems.append(f"{where}: {len(value)} items; expected at least {schema['minItems']}")
        if "items" in schema:
            for i, item in enumerate(value):
                problems += validate(item, schema["items"], f"{where}[{i}]")
    return problems


def validate_record(record: dict) -> list:
    """Problems of a benchmark record against its schema (by `kind`); empty when valid."""
    schema = SCHEMAS.get(record.get("kind")) if isinstance(record, dict) else None
    if schema is None:
        kind = record.get("kind") if isinstance(record, dict) else record
        return [f"$.kind: {kind!r}; expected inference, train or compare"]
    return validate(record, schema)
