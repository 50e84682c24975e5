"""The ONNX Runtime adapter: an InferenceSession behind the engine interface.

Provider truth (which execution provider really runs, CUDA that can't load) stays in
toolkit.runtime.session; this adapter opens through it and reads back what runs. onnxruntime is
imported when a model is opened, not with this module.
"""
from __future__ import annotations

import contextlib
from typing import Any, Mapping, Optional, Sequence

from toolkit.runtime.engines.base import Adapter, EngineInfo, EngineOptions, Port, timed
from toolkit.runtime.engines.names import parse_precision
from toolkit.runtime.session import open_session

__all__ = ["OnnxRuntimeEngine", "ADAPTER"]

# ONNX Runtime's type names -> numpy's
_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8",
           "tensor(double)": "float64", "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8"}
_GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
# provider options worth recording (the rest are defaults nobody asked about)
_KEEP = ("device_id", "cudnn_conv_algo_search", "cudnn_conv_use_max_workspace", "do_copy_in_default_stream",
         "use_tf32", "arena_extend_strategy", "enable_cuda_graph", "trt_fp16_enable", "trt_int8_enable")


def _port(arg) -> Port:
    shape = tuple(d if isinstance(d, int) else None for d in arg.shape)
    return Port(arg.name, shape, _DTYPES.get(arg.type, arg.type))


def _session_options(session) -> dict:
    """What the session really runs with, read back from it."""
    so = session.get_session_options()
    level = so.graph_optimization_level
    opts = {"graph_optimization_level": getattr(level, "name", str(level)),
            "intra_op_num_threads": so.intra_op_num_threads, "inter_op_num_threads": so.inter_op_num_threads,
            "execution_mode": getattr(so.execution_mode, "name", str(so.execution_mode)),
            "enable_cpu_mem_arena": so.enable_cpu_mem_arena, "enable_mem_pattern": so.enable_mem_pattern}
    for key in ("session.intra_op.allow_spinning", "session.disable_prepacking"):
        with contextlib.suppress(Exception):  # the lookup raises when the entry is unset
            value = so.get_session_config_entry(key)
            if value:
                opts[key] = value
    return opts


def _provider_options(session) -> dict:
    try:
        prov = {k: dict(v) for k, v in session.get_provider_options().items()}
    except Exception:  # noqa: BLE001 - older builds lack it
        prov = {}
    return {k: {kk: vv for kk, vv in v.items() if kk in _KEEP} for k, v in prov.items()}


class OnnxRuntimeEngine(Adapter):
    """An onnxruntime.InferenceSession (`session`), opened on the provider asked for."""

    name = "onnxruntime"
    inference_precisions = ("fp32",)  # it runs a file in the precision it was exported in
    reference = True  # the export gates run here; other engines are compared with it
    devices = ("auto", "cpu", "gpu", "cuda", "tensorrt")

    def __init__(self, session, path: str, options: EngineOptions, load_s: float):
        self.session, self.path, self.options, self.load_s = session, path, options, load_s
        self.inputs = [_port(a) for a in session.get_inputs()]
        self.outputs = [_port(a) for a in session.get_outputs()]
        self._info: Optional[EngineInfo] = None

    @classmethod
    def open(cls, path: str, options: EngineOptions) -> "OnnxRuntimeEngine":

        parse_precision(options.precision, cls.name)
        session, seconds = timed(lambda: open_session(path, options.device, options.threads, options.allow_fallback))
        return cls(session, path, options, seconds)

    def run(self, inputs: Mapping[str, Any], outputs: Optional[Sequence[str]] = None) -> list:
        return self.session.run(self.output_names(inputs, outputs), dict(inputs))

    def metadata(self) -> dict:
        return dict(self.session.get_modelmeta().custom_metadata_map or {})

    def describe(self) -> EngineInfo:
        if self._info is None:
            import onnxruntime as ort

            providers = tuple(self.session.get_providers())
            options = _session_options(self.session)
            self._info = EngineInfo(
                engine=self.name, version=ort.__version__, device_asked=str(self.options.device),
                device=providers[0].replace("ExecutionProvider", "").replace("Tensorrt", "TensorRT"),
                provider=providers[0], providers=providers, precision_asked=parse_precision(self.options.precision),
                precision=self.metadata().get("precision") or "fp32",   # computed as the file was exported
                threads=options["intra_op_num_threads"] or None, load_s=self.load_s, runs_on=providers[0],
                session_options=options, provider_options=_provider_options(self.session))
        return self._info

    def prepared(self, inputs: Mapping[str, Any], outputs: Optional[Sequence[str]] = None):
        """On CUDA / TensorRT the inputs go to the device once (IO binding), so timing sees the model alone."""
        provider = self.session.get_providers()[0]
        if provider not in _GPU_PROVIDERS:
            return super().prepared(inputs, outputs)
        import onnxruntime as ort

        device_id = int(self.describe().provider_options.get(provider, {}).get("device_id", 0) or 0)
        binding = self.session.io_binding()
        self._bound = [ort.OrtValue.ortvalue_from_numpy(v, "cuda", device_id) for v in inputs.values()]
        for name, value in zip(inputs, self._bound):
            binding.bind_ortvalue_input(name, value)
        for name in outputs or [o.name for o in self.outputs]:
            binding.bind_output(name, "cuda", device_id)

        def call():
            self.session.run_with_iobinding(binding)
            binding.synchronize_outputs()
        return call


ADAPTER = OnnxRuntimeEngine
