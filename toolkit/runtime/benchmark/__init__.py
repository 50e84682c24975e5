"""Honest throughput and latency: ONNX Runtime vs PyTorch, per batch size, precision and device.

    toolkit benchmark                                  # the newest export, ORT FP32 on CPU, batch 1,8,32
    toolkit benchmark exports/flowers.onnx --precision fp32,int8 --torch --batch-sizes 1,8
    toolkit benchmark --train recipes/flowers.yaml     # training step vs data loader
    toolkit benchmark a.onnx b.onnx --data R.yaml      # which model for this box: top-1 vs img/s, Pareto

What a number means is written into the record beside it (`timed`), and docs/benchmark.md
documents every field. The rules the measurements follow:

* Every backend (ORT per precision x device, PyTorch eager, torch.compile) is loaded once and
  warmed up per batch size before anything is timed (first runs, arena growth and cuDNN
  algorithm search stay outside the timed part; the first run is reported separately).
* Backends are timed interleaved in rounds: in round r every backend runs its block of
  iterations, the order rotated by r, so a noisy neighbour hits them all alike. Medians are
  reported with their spread (min/max over rounds for throughput, IQR for latency).
* Cold start and peak RSS are measured per backend in a fresh Python process (`isolate`).
* Achieved GFLOP/s uses FLOPs counted from the ONNX graph (Conv/Gemm/MatMul MACs x 2, shapes
  inferred), read against the FP32 GEMM peak measured on this machine at the same thread count.
* On CUDA: ORT runs with IO binding on device buffers, PyTorch synchronises after each call.

The modules, in the order a run uses them: options (BenchmarkOptions), model_file (the export, its
twins and metadata), flops, backends (ORT and the reference GEMM), peak, probe (cold start),
rounds (warm-up, interleaved timing, statistics), run (run_benchmark), record, report, schema;
compare + compare_report (compare_models: several exports interleaved in the same rounds, Pareto marks).
The --torch / --compile backends live on the torch side (toolkit.train.torch_backend) and --train
in toolkit.train.benchmark; both are imported only when asked for. No torch at import time here.
"""
from toolkit.runtime.benchmark.backends import synthetic_jpegs
from toolkit.runtime.benchmark.compare import compare_models, pareto_flags
from toolkit.runtime.benchmark.flops import count_flops
from toolkit.runtime.benchmark.machine import _now_iso, machine_info, physical_cores, versions
from toolkit.runtime.benchmark.model_file import TWIN_SUFFIX, inspect_model, twin_path
from toolkit.runtime.benchmark.options import BenchmarkOptions
from toolkit.runtime.benchmark.peak import _ort_gemm_peak, measure_peak
from toolkit.runtime.benchmark.report import (_write_outputs, format_markdown, format_table, format_train_markdown,
                                              format_train_table)
from toolkit.runtime.benchmark.rounds import DEFAULT_DURATION_S, DEFAULT_ROUNDS, _Progress, _stats, interleaved_rounds
from toolkit.runtime.benchmark.run import run_benchmark
from toolkit.runtime.benchmark.schema import SCHEMA_VERSION, SCHEMAS, TIMED, validate, validate_record

__all__ = ["BenchmarkOptions", "compare_models", "pareto_flags",
           "DEFAULT_DURATION_S", "DEFAULT_ROUNDS", "SCHEMA_VERSION", "SCHEMAS", "TIMED",
           "TWIN_SUFFIX", "count_flops", "format_markdown", "format_table", "format_train_markdown",
           "format_train_table", "inspect_model", "interleaved_rounds", "machine_info", "measure_peak",
           "physical_cores", "run_benchmark", "synthetic_jpegs", "twin_path", "validate", "validate_record",
           "versions", "_now_iso", "_Progress", "_stats", "_write_outputs", "_ort_gemm_peak"]
