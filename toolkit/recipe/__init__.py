"""Recipes: the dataclass schema, YAML loading with KEY=VALUE overrides, and validation (no torch)."""
from toolkit.recipe.schema import (ARCHS, GROUPS, HEADS, SOURCES, DataConfig, ModelConfig, PreprocessConfig,  # noqa: F401
                                   Recipe, TrainConfig, apply_overrides, dump, from_dict, load, parse_override,
                                   to_dict)
