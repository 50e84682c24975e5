"""The inference record (SCHEMA_VERSION 2, schema.py) assembled from what a run measured (run._Run)."""
from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np

from toolkit.runtime.benchmark.machine import _gpu_mem_of_pid, _maxrss_mb, _now_iso, machine_info, versions
from toolkit.runtime.benchmark.combos import skip_note
from toolkit.runtime.benchmark.schema import E2E_IMAGE, E2E_IMAGES, E2E_JPEG_QUALITY, SCHEMA_VERSION, TIMED
from toolkit.runtime.engines import DEFAULT_ENGINE


def build_record(run: Any) -> dict:
    """The JSON record of a finished run (`run`: run._Run)."""
    _fill_rows(run)
    _add_speedups(run)
    opts, s, meta, base = run.opts, run.s, run.meta, run.base
    out_dir = run.out_dir
    return {
        "schema_version": SCHEMA_VERSION, "kind": "inference", "created": _now_iso(),
        "command": _command(run),
        "model": {"path": base, "name": os.path.basename(base)[:-len(".onnx")], "arch": meta.get("arch"),
                  "head": meta.get("head"),
                  "classes": len(meta["labels"]) if isinstance(meta.get("labels"), list) else None,
                  "input": meta.get("input") if isinstance(meta.get("input"), dict)
                  else {"shape": run.info_base["input_dims"]},
                  "preprocess": meta.get("preprocess") if isinstance(meta.get("preprocess"), dict) else None,
                  "source_run": meta.get("source_run"), "checkpoint": run.ckpt_path or meta.get("checkpoint"),
                  "flops_per_image": run.info_base["flops"]["flops"]},
        "machine": machine_info(gpu=any(d != "cpu" for d in s.devices)), "versions": versions(),
        "settings": {"batch_sizes": list(s.sizes), "precisions": list(s.precisions), "engines": list(s.engines),
                     "skipped": list(run.skipped), "devices": list(s.devices),
                     "torch": bool(opts.torch), "compile": bool(opts.compile), "threads": s.threads,
                     "threads_source": s.threads_source,
                     "warmup": int(opts.warmup) if opts.warmup is not None else "auto",
                     "rounds": s.rounds, "iterations": int(opts.iterations) if opts.iterations is not None else None,
                     "duration_s": float(s.duration) if opts.iterations is None else None,
                     "end_to_end": bool(opts.end_to_end), "isolate": bool(opts.isolate),
                     "reference": run.gemm is not None, "data": opts.data,
                     "split": opts.split if opts.data else None,
                     "e2e_image": {"format": "JPEG", "width": E2E_IMAGE[0], "height": E2E_IMAGE[1],
                                   "quality": E2E_JPEG_QUALITY, "distinct": len(run.jpegs),
                                   "bytes_mean": int(np.mean([len(j) for j in run.jpegs]))},
                     "e2e_images": _e2e_images(run)},
        "timed": dict(TIMED), "peaks": run.peaks, "backends": _backend_records(run), "results": run.results,
        "schedule": run.schedule, "notes": _notes(run),
        "files": {"json": os.path.join(out_dir, "benchmark.json"), "markdown": os.path.join(out_dir, "benchmark.md"),
                  "png": os.path.join(out_dir, "benchmark.png") if opts.plot else None},
    }


def _e2e_images(run: Any) -> list:
    """The synthetic JPEGs of each end-to-end mode that ran."""
    out = []
    for mode, blobs in (("end_to_end", run.jpegs), ("end_to_end_12mp", run.photos)):
        if blobs and mode in run.s.modes:
            w, h = E2E_IMAGES[mode]
            out.append({"mode": mode, "format": "JPEG", "width": w, "height": h, "quality": E2E_JPEG_QUALITY,
                        "distinct": len(blobs), "bytes_mean": int(np.mean([len(j) for j in blobs]))})
    return out


def _sig(x: float) -> float:
    """Four significant digits: a tiny model's 12 MP rows stay above zero."""
    return float(f"{x:.4g}")


def own_peak_precision(precision: str, device: str) -> str:
    """Which precision's GEMM peak a row is read against: its own where one is measured (bf16, int8 on
    CPU; fp16 on CUDA), else fp32 (FP16 on a CPU computes in FP32)."""
    if device == "cpu":
        return precision if precision in ("bf16", "int8") else "fp32"
    return "fp16" if precision.startswith("fp16") else ("int8" if precision == "int8" else "fp32")


def _fill_rows(run: Any) -> None:
    """GFLOP/s and its fractions, cold start, memory, file size and accuracy of every result row."""
    peak_of = {(pk["device"], pk["precision"]): pk for pk in run.peaks}
    by_key = {b.key: b for b in run.backends}
    base_flops = run.info_base["flops"]["flops"]
    for row in run.results:
        b = by_key[row["key"]]
        flops = b.flops if b.flops else base_flops  # PyTorch runs the FP32 graph's FLOPs
        ips = row["throughput_ips"]["median"]
        gdev = "cpu" if row["device"] == "cpu" else "cuda"
        peak = (peak_of.get((gdev, "fp32")) or {}).get("gflops")
        own_pk = peak_of.get((gdev, own_peak_precision(row["precision"], gdev))) or {}
        own = own_pk.get("gflops")
        row["peak_precision"] = own_pk.get("precision") if own else None
        row["precision_peak_engine"] = own_pk.get("engine") if own else None
        row["gflops"] = _sig(flops * ips / 1e9) if flops else None
        row["fraction_of_peak"] = _sig(row["gflops"] / peak) if row["gflops"] and peak else None
        row["fraction_of_precision_peak"] = _sig(row["gflops"] / own) if row["gflops"] and own else None
        ref = run.gemm_in_rounds.get(row["batch"]) if gdev == "cpu" else None
        row["fraction_of_gemm_in_rounds"] = _sig(row["gflops"] / ref["median_gflops"]) \
            if row["gflops"] and ref and ref["median_gflops"] else None
        _fill_cold(run, row, b)
        row["file_bytes"] = b.file_bytes
        acc = run.accuracy.get(row["precision"]) if b.backend == DEFAULT_ENGINE else None  # evaluate_onnx's engine
        row["top1"] = acc.get("top1") if acc else None


def _fill_cold(run: Any, row: dict, b: Any) -> None:
    c = run.cold.get(row["key"], {})
    if c and "error" not in c:
        row["cold_start_s"] = round(c["session_s"] + c["first_inference_s"].get(str(row["batch"]), 0.0), 4)
        row["peak_rss_mb"] = c["peak_rss_mb"].get(str(row["batch"]))
        row["gpu_mem_mb"] = c.get("gpu_mem_mb")
    elif not run.opts.isolate:
        row["cold_start_s"] = round((b.session_s or 0.0) + run.first_runs[(b.key, "model", row["batch"])], 4)
        row["peak_rss_mb"] = _maxrss_mb()
        row["gpu_mem_mb"] = _gpu_mem_of_pid(os.getpid()) if row["device"] != "cpu" else None
    else:
        row["cold_start_s"] = row["peak_rss_mb"] = row["gpu_mem_mb"] = None


def _add_speedups(run: Any) -> None:
    """Speed-ups against the baseline of the same device: PyTorch eager FP32, else ORT FP32."""
    by_key = {b.key for b in run.backends}
    failed = {f["key"] for f in run.failed}
    for row in run.results:
        tdev = row["device"].replace("tensorrt", "cuda")
        candidates = [f"torch-eager/{tdev}/fp32", f"onnxruntime/{row['device']}/fp32"]
        # the first candidate with a row at this mode and batch (PyTorch has no 12 MP rows: ORT FP32 there)
        ref = next((r for k in candidates if k in by_key and k not in failed for r in run.results
                    if r["key"] == k and r["mode"] == row["mode"] and r["batch"] == row["batch"]), None)
        base_key = ref["key"] if ref else None
        row["baseline"] = base_key if ref else None
        row["speedup"] = round(row["throughput_ips"]["median"] / ref["throughput_ips"]["median"], 3) \
            if ref and ref["throughput_ips"]["median"] else None


def _backend_records(run: Any) -> list:
    """One entry per backend, loaded or failed."""
    base_flops, base_by_op = run.info_base["flops"]["flops"], run.info_base["flops"]["by_op"]
    failed = {f["key"]: f for f in run.failed}
    out = []
    for b in run.backends:
        out.append({
            "key": b.key, "backend": b.backend, "engine": b.engine or "torch",
            "engine_device": b.engine_device or b.provider, "inference_precision": b.inference_precision or b.precision,
            "device": b.device, "precision": b.precision,
            "provider": b.provider, "providers": list(b.providers), "file": b.file, "file_bytes": b.file_bytes,
            "flops_per_image": b.flops if b.flops else base_flops, "flops_by_op": b.flops_by_op or base_by_op,
            "session_options": b.session_options, "provider_options": b.provider_options,
            "status": "failed" if b.key in failed else "ok",
            "error": failed[b.key]["error"] if b.key in failed else None,
            "cold_start": _cold_record(run.cold.get(b.key), b, run.first_runs, run.s.sizes, run.opts.isolate),
            "accuracy": run.accuracy.get(b.precision) if b.backend == DEFAULT_ENGINE else None})
    loaded = {b.key for b in run.backends}
    for f in run.failed:
        if f["key"] not in loaded:
            out.append({"key": f["key"], "backend": f["backend"], "engine": "torch", "engine_device": None,
                        "inference_precision": None, "device": f["device"], "precision": f["precision"],
                        "provider": None, "providers": [], "file": run.ckpt_path, "file_bytes": None,
                        "flops_per_image": base_flops, "flops_by_op": {}, "session_options": {},
                        "provider_options": {}, "status": "failed", "error": f["error"], "cold_start": None,
                        "accuracy": None})
    return out


def _cold_record(probe: Optional[dict], b: Any, first_runs: dict, sizes: tuple, isolate: bool) -> Optional[dict]:
    if probe:
        keep = {k: v for k, v in probe.items() if k != "rss_start_mb"}
        for k in ("import_s", "session_s", "compile_s", "process_wall_s"):
            if isinstance(keep.get(k), float):
                keep[k] = round(keep[k], 4)
        if isinstance(keep.get("first_inference_s"), dict):
            keep["first_inference_s"] = {k: round(v, 4) for k, v in keep["first_inference_s"].items()}
        return keep
    if isolate:
        return None
    return {"isolated": False, "session_s": round(b.session_s or 0.0, 4),
            "first_inference_s": {str(s): round(first_runs[(b.key, "model", s)], 4)
                                  for s in sizes if (b.key, "model", s) in first_runs},
            "peak_rss_mb": {"process": _maxrss_mb()}}


def _notes(run: Any) -> list:
    notes = []
    uncounted = run.info_base["flops"]["uncounted"]
    if uncounted:
        notes.append(f"FLOPs: {len(uncounted)} Conv/Gemm/MatMul nodes had unknown shapes and are not counted")
    notes += [f"{f['key']} failed: {f['error']}" for f in run.failed]
    notes += [skip_note(x) for x in run.skipped]
    if any(pk["candidates"] and len(pk["candidates"]) > 1 for pk in run.peaks):
        notes.append("peaks: the best of every engine's GEMM at the same thread count (peaks[].candidates)")
    if run.ckpt_note:
        notes.append(run.ckpt_note)
    if "fp16" in run.s.precisions and "cpu" in run.s.devices:
        notes.append("FP16 on CPU runs through ORT's CPU kernels (often slower than FP32); FP16 is for GPUs")
    return notes


def _command(run: Any) -> str:
    """The command line that repeats this run."""
    opts, s = run.opts, run.s
    cmd = ["toolkit benchmark", run.base, "--batch-sizes", ",".join(map(str, s.sizes)), "--precision",
           ",".join(s.precisions), "--device", ",".join(s.devices)]
    cmd += ["--engine", ",".join(s.engines)] if tuple(s.engines) != (DEFAULT_ENGINE,) else []
    cmd += ["--torch"] if opts.torch else []
    cmd += ["--compile"] if opts.compile else []
    cmd += ["--iterations", str(opts.iterations)] if opts.iterations is not None else ["--duration", str(s.duration)]
    cmd += ["--threads", str(opts.threads)] if opts.threads else []
    cmd += ["--data", str(opts.data)] if opts.data else []
    return " ".join(cmd)
