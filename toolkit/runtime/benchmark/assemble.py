"""One model's inference record (records.InferenceRecord) from what run.py measured, as a JSON-ready dict."""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from toolkit.runtime.benchmark.machine import gpu_mem_of_pid, maxrss_mb, record_head
from toolkit.runtime.engines import DEFAULT_ENGINE
from toolkit.runtime.benchmark.records import (E2E_IMAGES, E2E_JPEG_QUALITY, TIMED, E2EImages, InferenceRecord,
                                               InferenceSettings, ModelInfo)


def inference_record(s, bench) -> dict:
    """The record of subject `s` (run.Subject) of a finished run `bench` (run.Bench)."""
    opts, plan, meta = bench.opts, bench.plan, s.meta
    _finish_rows(s, bench)
    for pk in bench.peaks:
        if pk.device == "cpu" and pk.precision == "fp32":
            pk.in_rounds = [bench.gemm_rounds[b] for b in plan.sizes if b in bench.gemm_rounds]
    images = [E2EImages(m, "JPEG", *E2E_IMAGES[m], E2E_JPEG_QUALITY, len(js), int(np.mean([len(j) for j in js])))
              for m, js in bench.jpegs.items()]
    record = InferenceRecord(
        **record_head("inference", _command(s, bench), _notes(s, bench), s.out_dir,
                      ("benchmark.json", "benchmark.md", "benchmark.png" if opts.plot else None),
                      any(d != "cpu" for d in plan.devices)),
        model=ModelInfo(path=s.base, name=os.path.basename(s.base)[:-len(".onnx")], arch=meta.get("arch"),
                        head=meta.get("head"), classes=len(s.labels), preprocess=meta["preprocess"],
                        input=s.info["contract"].input or {"shape": s.info["input_dims"]},
                        source_run=meta.get("source_run"), checkpoint=s.checkpoint or meta.get("checkpoint"),
                        flops_per_image=s.info["flops"]["flops"]),
        settings=InferenceSettings(
            **common_settings(bench, s.precisions), skipped=s.skipped, torch=bool(opts.torch),
            compile=bool(opts.compile), threads_source=plan.threads_source,
            warmup=int(opts.warmup) if opts.warmup is not None else "auto", end_to_end=bool(opts.end_to_end),
            isolate=bool(opts.isolate), reference=bench.gemm is not None, e2e_image=images[0],
            e2e_images=[x for x in images if x.mode in plan.modes]),
        timed=dict(TIMED), peaks=bench.peaks, backends=[b.record for b in s.backends] + s.failed, results=s.rows,
        schedule=s.schedule)
    return dataclasses.asdict(record)


def common_settings(bench, precisions: tuple) -> dict:
    """The fields of records.Settings, shared by the inference and compare records."""
    opts, plan = bench.opts, bench.plan
    return {"batch_sizes": list(plan.sizes), "precisions": list(precisions), "engines": list(plan.engines),
            "devices": list(plan.devices), "threads": plan.threads, "rounds": plan.rounds,
            "iterations": int(opts.iterations) if opts.iterations is not None else None,
            "duration_s": float(plan.duration) if opts.iterations is None else None, "data": opts.data,
            "split": opts.split if opts.data else None}


def _finish_rows(s, bench) -> None:
    """What a row gets after the rounds: cold start and memory, top-1, the speed-up over its baseline."""
    by_key = {b.record.key: b for b in s.backends}
    rows = {(r.key, r.mode, r.batch): r for r in s.rows}
    for row in s.rows:
        b = by_key[row.key]
        cold = b.record.cold_start
        if not bench.opts.isolate:
            row.cold_start_s = round(b.session_s + s.first_runs[(row.key, "model", row.batch)], 4)
            row.peak_rss_mb = maxrss_mb()
            row.gpu_mem_mb = gpu_mem_of_pid(os.getpid()) if row.device != "cpu" else None
        elif cold and "error" not in cold:
            row.cold_start_s = round(cold["session_s"] + cold["first_inference_s"].get(str(row.batch), 0.0), 4)
            row.peak_rss_mb, row.gpu_mem_mb = cold["peak_rss_mb"].get(str(row.batch)), cold.get("gpu_mem_mb")
        row.top1 = (b.record.accuracy or {}).get("top1")
        # the baseline: PyTorch eager FP32 on this device, else ORT FP32 (PyTorch has no 12 MP rows)
        tdev = row.device.replace("tensorrt", "cuda")
        ref = next((rows[k, row.mode, row.batch] for k in (f"torch-eager/{tdev}/fp32", f"onnxruntime/{row.device}/fp32")
                    if (k, row.mode, row.batch) in rows and by_key[k].record.status == "ok"), None)
        row.baseline = ref and ref.key
        row.speedup = round(row.throughput_ips.median / ref.throughput_ips.median, 3) \
            if ref and ref.throughput_ips.median else None
    if not bench.opts.isolate:
        for b in s.backends:
            b.record.cold_start = {"isolated": False, "session_s": round(b.session_s, 4), "first_inference_s": {
                str(n): round(s.first_runs[k], 4) for n in bench.plan.sizes
                if (k := (b.record.key, "model", n)) in s.first_runs}, "peak_rss_mb": {"process": maxrss_mb()}}


def _notes(s, bench) -> list:
    notes = []
    uncounted = s.info["flops"]["uncounted"]
    if uncounted:
        notes.append(f"FLOPs: {len(uncounted)} Conv/Gemm/MatMul nodes had unknown shapes and are not counted")
    notes += [f"{r.key} failed: {r.error}" for r in [b.record for b in s.backends] + s.failed if r.status == "failed"]
    notes += [f"skipped {x.engine}/{x.device}/{x.precision}: {x.reason}" for x in s.skipped]
    if any(len(pk.candidates) > 1 for pk in bench.peaks):
        notes.append("peaks: the best of every engine's GEMM at the same thread count (peaks[].candidates)")
    notes += s.notes
    if "fp16" in s.precisions and "cpu" in bench.plan.devices:
        notes.append("FP16 on CPU runs through ORT's CPU kernels (often slower than FP32); FP16 is for GPUs")
    return notes


def _command(s, bench) -> str:
    """The command line that repeats this run."""
    opts, plan = bench.opts, bench.plan
    cmd = ["toolkit benchmark", s.base, "--batch-sizes", ",".join(map(str, plan.sizes)), "--precision",
           ",".join(s.precisions), "--device", ",".join(plan.devices)]
    cmd += ["--engine", ",".join(plan.engines)] if tuple(plan.engines) != (DEFAULT_ENGINE,) else []
    cmd += ["--torch"] if opts.torch else []
    cmd += ["--compile"] if opts.compile else []
    cmd += ["--iterations", str(opts.iterations)] if opts.iterations is not None else ["--duration", str(plan.duration)]
    cmd += ["--threads", str(opts.threads)] if opts.threads else []
    cmd += ["--data", str(opts.data)] if opts.data else []
    return " ".join(cmd)
