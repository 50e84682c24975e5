"""The benchmark records as dataclasses: benchmark.json / compare.json are `dataclasses.asdict` of them, their
JSON Schema is derived from these classes, and validate_record checks a record with jsonschema. Standard
library only at import. docs/benchmark.md lists every field and what each schema version changed.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Literal, Optional, Union

SCHEMA_VERSION = 5
E2E_IMAGES = {"end_to_end": (500, 375), "end_to_end_12mp": (4032, 3024)}  # end-to-end mode -> JPEG width x height
E2E_JPEG_QUALITY = 90
E2E_TOP_K = 5
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
DEVICES = ("cpu", "cuda", "tensorrt")
MODES = ("model", "end_to_end", "end_to_end_12mp")
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile")
TIMED = {  # what each number means, in one line each (docs/benchmark.md: "What is timed, and how")
    "model": "one inference call on a batch already decoded and preprocessed (CUDA: on the device, synchronised)",
    "end_to_end": "Predictor.predict's steps on `batch` 500x375 JPEGs: decode on the decode pool, then the model",
    "end_to_end_12mp": "the same as end_to_end on 4032x3024 JPEGs (12 MP phone photos), ONNX engines only",
    "cold_start": "session (or model) creation + the first inference at that batch size, in a fresh process",
    "peak_rss": "peak resident set size of that fresh process after this batch size",
    "gpu_memory": "GPU memory of that fresh process (nvidia-smi, CUDA context included)",
    "throughput": "images/s per round (batch x calls / the round's block time): median, min/max, quartiles",
    "latency": "ms per call over every timed call; latency_per_image_ms: the same / batch",
    "gflops": "FLOPs per image counted in the ONNX graph x median images/s, against each measured GEMM peak",
}


def record(name: str, doc: str, base: Optional[type] = None, /, **fields) -> type:
    """A record dataclass, its fields declared as name=type (or name=(type, default), defaults last):
    one line per few fields keeps every record readable at a glance, like the JSON it becomes."""
    spec = [(k, *v[:1], dataclasses.field(default=v[1])) if isinstance(v, tuple) else (k, v) for k, v in fields.items()]
    cls = dataclasses.make_dataclass(name, spec, bases=(base,) if base else ())
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
Machine = record("Machine", "What ran it.", cpu=str, cpu_flags=list[str], isa=dict[str, Union[bool, str]],
                 logical_cpus=int, usable_cpus=int, physical_cores=int, os=str, python=str, gpu=_STR, gpu_driver=_STR,
                 gpu_memory_mb=_NUM)
Files = record("Files", "What a run wrote.", json=str, markdown=str)
Head = record("Head", "What every record kind starts with.", schema_version=Literal[SCHEMA_VERSION], kind=str,
              created=str, command=str, machine=Machine, versions=Versions, notes=list[str], files=Files)
Peak = record("Peak", "One precision's GEMM peak on one device, measured once: the fastest of its candidates.",
              device=str, precision=str, engine=_STR, gflops=_NUM, matrix=int, threads=_INT,
              candidates=list[dict], note=str)
BackendRecord = record(
    "BackendRecord", "One backend, loaded or failed; cold_start and accuracy are filled in when measured.",
    key=str, backend=Literal["onnxruntime", "openvino", "torch-eager", "torch-compile", "onnxruntime-web",
                          "litert"], engine=str, device=str,
    precision=str, providers=list[str], file=_STR, flops_per_image=int, flops_by_op=dict[str, int],
    session_options=dict, provider_options=dict, engine_device=(_STR, None), inference_precision=(_STR, None),
    provider=(_STR, None), file_bytes=(_INT, None), status=(Literal["ok", "failed"], "ok"), error=(_STR, None),
    cold_start=(Optional[dict], None), accuracy=(Optional[dict], None))
Row = record(
    "Row", "One backend x mode x batch size.",
    key=str, backend=str, engine=str, engine_device=_STR, inference_precision=_STR, device=str, precision=str,
    provider=str, mode=Literal[MODES], e2e_image=_STR, batch=int, iterations=int, rounds=int,
    throughput_ips=Throughput, latency_ms=Latency, latency_per_image_ms=PerImage, first_run_s=float, gflops=_NUM,
    fraction_of_peak=_NUM, fraction_of_precision_peak=_NUM, peak_precision=_STR, precision_peak_engine=_STR,
    cold_start_s=_NUM, peak_rss_mb=_NUM, gpu_mem_mb=_NUM, file_bytes=_INT, decode_share=_NUM,
    top1=(_NUM, None), baseline=(_STR, None), speedup=(_NUM, None))
Block = record("Block", "One timed block of the interleaved rounds.", round=int, batch=int, model=str, key=str,
               mode=str, iterations=int)
Skipped = record("Skipped", "A combination an engine can't run.", engine=str, device=str, precision=str, reason=str)
ModelInfo = record("ModelInfo", "The export under test.", path=str, name=str, arch=_STR, head=_STR, classes=_INT,
                   input=dict, preprocess=Optional[dict], source_run=_STR, checkpoint=_STR, flops_per_image=int)
Settings = record("Settings", "What a run measured with: the options checked and parsed (options.parse).",
                  batch_sizes=list[int], precisions=list[Literal[PRECISIONS]], engines=list[str], devices=list[str],
                  modes=list[Literal[MODES]], threads=int, threads_source=str, rounds=int, iterations=_INT,
                  duration_s=_NUM, warmup=Union[int, str], data=_STR, split=_STR, torch=bool, compile=bool,
                  end_to_end=bool, isolate=bool)
InferenceSettings = record("InferenceSettings", Settings.__doc__, Settings, skipped=list[Skipped])
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
                    latency_p50_ms=float, file_bytes=_INT, flops_per_image=int, top1=_NUM,
                    pareto=(Optional[bool], None))  # set once every row of its batch size is known
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
        return {"enum": [v for a in args for v in (a if isinstance(a, tuple) else (a,))]}
    if origin in (list, dict):
        return {"type": _JSON_TYPES[origin], **({"items": json_schema(args[0])} if origin is list and args else {})}
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
