"""Recipes (no torch): the dataclass schema (schema), YAML loading with KEY=VALUE overrides (loading) and
the value checks (check). The public names are re-exported here: `from toolkit import recipe`."""
from toolkit.recipe.loading import apply_overrides, dump, from_dict, load, parse_override, to_dict
from toolkit.recipe.schema import (ARCHS, CHOICES, GROUPS, HEADS, SOURCES, DataConfig, ModelConfig,
                                   PreprocessConfig, Recipe, TrainConfig)

__all__ = [
    "apply_overrides", "dump", "from_dict", "load", "parse_override", "to_dict", "ARCHS", "CHOICES",
    "GROUPS", "HEADS", "SOURCES", "DataConfig", "ModelConfig", "PreprocessConfig", "Recipe", "TrainConfig",
]
