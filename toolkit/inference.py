"""The documented import for edge apps: `from toolkit.inference import Predictor` (lives in toolkit.runtime)."""
from toolkit.runtime.cold_start import time_cold_start  # noqa: F401
from toolkit.runtime.predict import collect_images, predict_command  # noqa: F401
from toolkit.runtime.predictor import Predictor  # noqa: F401

__all__ = ["Predictor", "predict_command", "collect_images", "time_cold_start"]
