"""The benchmark records as dataclasses: benchmark.json / compare.json are `dataclasses.asdict` of them,
their JSON Schema is derived from these classes, and validate_record checks a record with jsonschema.

SCHEMA_VERSION 4 (3: one peak per precision, measured once; schedule[].model; 4: results[].decode_share);
docs/benchmark.md documents
every field. Standard library only at import.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import make_dataclass
from typing import Literal, Optional, Union

SCHEMA_VERSION = 4
E2E_IMAGES = {"end_to_end": (500, 375), "end_to_end_12mp": (4032, 3024)}  # end-to-end mode -> JPEG width x height
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
    "end_to_end": "end to end: Predictor.predict on `batch` in-memory JPEG files (500x375, quality 90): decode "
                  "(Pillow) + resize/crop (toolkit.preprocess) on the decode pool (toolkit.runtime.decode_pool: "
                  "one thread per core), then normalise + inference + softmax + top-5. PyTorch rows do the same "
                  "decode and preprocessing, then torch.from_numpy, model, softmax and topk. decode_share: the "
                  "median share of a call's wall time spent until every image was decoded (the rest: the model).",
    "end_to_end_12mp": "the same as end_to_end on 4032x3024 JPEGs (12 MP phone photos), ONNX engines only",
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
              "their quantized forms) x median throughput; fraction_of_peak divides it by the FP32 GEMM peak "
              "of the same device, measured once before the timing (an INT8 or FP16 row can pass 1.0: it is "
              "FP32-equivalent work); fraction_of_precision_peak divides it by the GEMM peak of the row's own "
              "precision (peak_precision: fp32, bf16, int8 or fp16), each peak the fastest of the engines "
              "available (peaks[].engine); fraction_of_gemm_in_rounds divides it by the median GFLOP/s of the "
              "same GEMM timed as one more entry of that batch size's rounds (same noise)",
}


def record(name: str, doc: str, base: Optional[type] = None, /, **fields) -> type:
    """A record dataclass, its fields declared as name=type (or name=(type, default), defaults last):
    one line per few fields keeps every record readable at a glance, like the JSON it becomes."""
    spec = [(k, *v[:1], dataclasses.field(default=v[1])) if isinstance(v, tuple) else (k, v) for k, v in fields.items()]
    cls = make_dataclass(name, spec, bases=(base,) if base else ())
    cls.__doc__, cls.__module__ = doc, __name__
    return cls


_NUM, _STR, _INT = Optional[float], Optional[str], Optional[int]  # the nullable ones
Latency = record("Latency", "Milliseconds per call over every timed call.", **dict.fromkeys(
    "p50 p90 p95 p99 mean min max q25 q75 iqr".split(), float))
PerImage = record("PerImage", "Latency / batch size.", **dict.fromkeys("p50 p90 p95 p99".split(), float))
Throughput = record("Throughput", "Images/s over the rounds.", **dict.fromkeys("median min max q25 q75".split(), float))
Versions = record("Versions", "Library versions (package metadata).", **dict.fromkeys(
    "toolkit onnxruntime openvino onnx numpy pillow torch torchvision cuda_onnxruntime cuda_torch cudnn_torch".split(),
    _STR))
GemmRound = record("GemmRound", "The reference GEMM in one batch size's rounds.", batch=int, median_gflops=float,
                   min_gflops=float, max_gflops=float, calls=int)
Machine = record("Machine", "What ran it.", cpu=str, cpu_flags=list[str], isa=dict[str, Union[bool, str]],
                 logical_cpus=int, usable_cpus=int, physical_cores=int, os=str, python=str, gpu=_STR, gpu_driver=_STR,
                 gpu_memory_mb=_NUM)
Files = record("Files", "What a run wrote.", json=str, markdown=str, png=_STR)
Head = record("Head", "What every record kind starts with.", schema_version=Literal[SCHEMA_VERSION], kind=str,
              created=str, command=str, machine=Machine, versions=Versions, notes=list[str], files=Files)
Peak = record("Peak", "One precision's GEMM peak on one device, measured once: the fastest of its candidates.",
              device=str, precision=str, engine=_STR, gflops=_NUM, matrix=int, threads=_INT,
              candidates=list[dict], note=str, in_rounds=list[GemmRound])
BackendRecord = record(
    "BackendRecord", "One backend, loaded or failed; cold_start and accuracy are filled in when measured.",
    key=str, backend=Literal["onnxruntime", "openvino", "torch-eager", "torch-compile"], engine=str,
    engine_device=_STR, inference_precision=_STR, device=str, precision=str, provider=_STR, providers=list[str],
    file=_STR, file_bytes=_INT, flops_per_image=int, flops_by_op=dict[str, int], session_options=dict,
    provider_options=dict, status=(Literal["ok", "failed"], "ok"), error=(_STR, None), cold_start=(Optional[dict], None),
    accuracy=(Optional[dict], None))
Row = record(
    "Row", "One backend x mode x batch size.",
    key=str, backend=str, engine=str, engine_device=_STR, inference_precision=_STR, device=str, precision=str,
    provider=str, mode=Literal[MODES], e2e_image=_STR, batch=int, iterations=int, rounds=int,
    throughput_ips=Throughput, latency_ms=Latency, latency_per_image_ms=PerImage, first_run_s=float, gflops=_NUM,
    fraction_of_peak=_NUM, fraction_of_precision_peak=_NUM, peak_precision=_STR, precision_peak_engine=_STR,
    fraction_of_gemm_in_rounds=_NUM, cold_start_s=_NUM, peak_rss_mb=_NUM, gpu_mem_mb=_NUM, file_bytes=_INT,
    top1=_NUM, baseline=_STR, speedup=_NUM, decode_share=_NUM)
Block = record("Block", "One timed block of the interleaved rounds (model None: the reference GEMM).",
               round=int, batch=int, model=_STR, key=str, mode=str, iterations=int)
Skipped = record("Skipped", "A combination an engine can't run.", engine=str, device=str, precision=str, reason=str)
ModelInfo = record("ModelInfo", "The export under test.", path=str, name=str, arch=_STR, head=_STR, classes=_INT,
                   input=dict, preprocess=Optional[dict], source_run=_STR, checkpoint=_STR, flops_per_image=int)
E2EImages = record("E2EImages", "The synthetic JPEGs of one end-to-end mode.", mode=str, format=str, width=int,
                   height=int, quality=int, distinct=int, bytes_mean=int)
Settings = record("Settings", "What a run measured with.", batch_sizes=list[int], precisions=list[Literal[PRECISIONS]],
                  engines=list[str], devices=list[str], threads=int, rounds=int, iterations=_INT, duration_s=_NUM,
                  data=_STR, split=_STR)
InferenceSettings = record(
    "InferenceSettings", Settings.__doc__, Settings, skipped=list[Skipped], torch=bool, compile=bool,
    threads_source=str, warmup=Union[int, str], end_to_end=bool, isolate=bool, reference=bool,
    e2e_image=E2EImages, e2e_images=list[E2EImages])
InferenceRecord = record("InferenceRecord", "benchmark.json of one export.", Head, model=ModelInfo,
                         settings=InferenceSettings, timed=dict[str, str], peaks=list[Peak],
                         backends=list[BackendRecord], results=list[Row], schedule=list[Block])
CompareSettings = record("CompareSettings", Settings.__doc__, Settings, pareto_batch=int, pareto_mode=str,
                         interleaved=bool)
CompareModel = record("CompareModel", "One compared model; `record`: the path of its own benchmark.json.",
                      name=str, path=str, arch=_STR, classes=_INT, preprocess=Optional[dict], flops_per_image=int,
                      record=str)
CompareRow = record("CompareRow", "One model x backend x batch size, inference only.", model=str, key=str,
                    engine=str, device=str, precision=str, batch=int, ips=float, ips_min=float, ips_max=float,
                    latency_p50_ms=float, file_bytes=_INT, flops_per_image=int, top1=_NUM, pareto=Optional[bool])
CompareRecord = record("CompareRecord", "compare.json of several exports.", Head, settings=CompareSettings,
                       models=list[CompareModel], rows=list[CompareRow], schedule=list[Block])
TrainRecipe = record("TrainRecipe", "The recipe timed.", path=str, name=str, arch=str, head=str, crop=int,
                     classes=int, strategy=str, optimizer=str, batch_size=int, amp=_STR, channels_last=bool,
                     train_images=int)
TrainSettings = record("TrainSettings", "What --train measured with.", device=str, threads=int, threads_source=str,
                       warmup=Union[int, str], rounds=int, iterations=_INT, duration_s=_NUM, loader_batches=int)
Phase = record("Phase", "The training step of one phase at one precision.", phase=str,
               precision=Literal["fp32", "bf16", "fp16"], groups=list[str], trainable_params=int,
               iterations=int, first_step_s=float, throughput_ips=Throughput, latency_ms=Latency)
LoaderIps = record("LoaderIps", "Images/s of the data loader.", overall=float, median_batch=float, min_batch=float,
                   max_batch=float)
Loader = record("Loader", "The data loader.", workers=int, batch_size=int, startup_s=float, batches=int, images=int,
                augment=str, throughput_ips=LoaderIps)
Limiter = record("Limiter", "Which of step and loader limits an epoch.",
                 bound_by=Literal["data loader", "training step"], step_ips=float, loader_ips=float, ratio=_NUM,
                 estimate_shared_cpu_ips=_NUM, advice=str)
TrainRecord = record("TrainRecord", "benchmark.json of --train.", Head, recipe=TrainRecipe, settings=TrainSettings,
                     timed=dict[str, str], phases=list[Phase], loader=Loader, limiter=Limiter)

RECORDS = {"inference": InferenceRecord, "train": TrainRecord, "compare": CompareRecord}
_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean", type(None): "null",
               dict: "object", list: "array"}


def json_schema(kind: object) -> dict:
    """The JSON Schema of a type annotation: dataclasses become objects whose fields are all required."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        props = {f.name: json_schema(hints[f.name]) for f in dataclasses.fields(kind)}
        return {"type": "object", "properties": props, "required": list(props)}
    if origin is Union:
        return {"anyOf": [json_schema(a) for a in args]}
    if origin is Literal:
        values = [v for a in args for v in (a if isinstance(a, tuple) else (a,))]
        return {"enum": values}
    if origin in (list, dict):
        sub = {"items": json_schema(args[0])} if origin is list and args else {}
        return {"type": _JSON_TYPES[origin], **sub}
    return {"type": _JSON_TYPES[kind]}


SCHEMAS = {kind: {**json_schema(cls), "title": f"toolkit benchmark record, kind {kind}"}
           for kind, cls in RECORDS.items()}


def _where(path) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def validate_record(record: object) -> list:
    """Problems of a benchmark record against its kind's schema, one line each; empty when valid."""
    import jsonschema

    kind = record.get("kind") if isinstance(record, dict) else record
    if kind not in SCHEMAS:
        return [f"$.kind: {kind!r}; expected one of {', '.join(SCHEMAS)}"]
    problems = set()  # jsonschema reports each missing key once per key: one line for all of them
    for err in jsonschema.Draft202012Validator(SCHEMAS[kind]).iter_errors(record):
        if err.validator == "required":
            problems.update(f"{_where([*err.absolute_path, k])}: missing" for k in err.validator_value
                            if k not in err.instance)
        else:
            problems.add(f"{_where(err.absolute_path)}: {err.message}")
    return sorted(problems)
