"""The documented `from toolkit import data` (data.measure_pipeline); the module lives in toolkit.train.data."""
from toolkit.train.data import *  # noqa: F401,F403
from toolkit.train.data import measure_pipeline  # noqa: F401
