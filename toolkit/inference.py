"""The documented import for edge apps: `from toolkit.inference import Predictor` (lives in toolkit.runtime)."""
from toolkit.runtime.predictor import Predictor  # noqa: F401

__all__ = ["Predictor"]
