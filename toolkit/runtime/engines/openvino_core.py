"""The one openvino.Core of the process, and the questions asked of it (devices, BF16 support).

openvino is imported only inside these functions, when the OpenVINO engine is asked for: the runtime
layer stays importable without it (tests/test_layout.py checks it).
"""
from __future__ import annotations

import threading

from toolkit.errors import UserError

__all__ = ["shared_core", "import_openvino", "capabilities", "INSTALL_HINT"]

INSTALL_HINT = "pip install 'toolkit[openvino]'"
_core = None   # the process-wide openvino.Core: created once, never released (see shared_core)
_core_lock = threading.Lock()


def import_openvino(instead: str = "use the default engine onnxruntime"):
    """The openvino module, or a UserError naming the extra; `instead`: what else the user can do."""
    try:
        import openvino
    except ImportError as exc:
        raise UserError(f"engine openvino: the openvino package is not installed ({exc}); {INSTALL_HINT}, "
                        f"or {instead}") from None
    return openvino


def shared_core():
    """The one openvino.Core of this process, created on first use and never released.

    OpenVINO's CPU plugin maps an alternate signal stack per Core and, when that Core is released, puts
    the saved stack back only if its own is still current. Two Cores released oldest-first leave the
    thread with an unmapped alternate stack, and the next signal Python handles there (SIGCHLD, Ctrl-C)
    kills the process with SIGSEGV. One Core that lives as long as the process cannot do that, so every
    OpenVINO path of the toolkit (sessions, the BF16 checks, the benchmark's peaks) goes through it; the
    model cache is passed per compile_model call (CACHE_DIR), never set on the shared Core."""
    global _core
    with _core_lock:
        if _core is None:
            _core = import_openvino().Core()
        return _core


def capabilities(device: str = "CPU") -> list[str]:
    """OpenVINO's OPTIMIZATION_CAPABILITIES of a device (BF16, FP32, INT8, ...)."""
    return [str(c) for c in shared_core().get_property(device, "OPTIMIZATION_CAPABILITIES")]


def require_bf16(device: str, where: str, fix: str) -> None:
    """A UserError when OpenVINO's `device` can't compute in bf16 here (or OpenVINO is missing)."""
    import_openvino(instead=fix)   # export --bf16-check has no --engine to switch: its own way out
    caps = capabilities(device)
    if "BF16" not in caps:
        raise UserError(f"{where}: OpenVINO's {device} has no BF16 support on this machine (it offers "
                        f"{', '.join(caps)}; BF16 needs AVX-512 BF16 or AMX); {fix}")
