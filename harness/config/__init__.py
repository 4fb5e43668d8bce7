"""The experiment's configuration: one validated object, resolved once in the driver and handed
on as it is (to strategies, and pickled to every trial)."""

from harness.config.settings import (
    CANONICAL_DATASETS,
    BudgetConfig,
    ConfigError,
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    ResourcesConfig,
    SearchSpace,
    TrainConfig,
    TuneSettings,
    hub_dataset_problem,
    known_keys,
)
from harness.config.sources import (
    ENV_OVERRIDES,
    PRESET_DIR,
    available_presets,
    preset_path,
    resolve,
)

__all__ = [
    "CANONICAL_DATASETS", "ENV_OVERRIDES", "PRESET_DIR", "BudgetConfig", "ConfigError", "DataConfig",
    "ExperimentConfig", "ModelConfig", "ResourcesConfig", "SearchSpace", "TrainConfig", "TuneSettings",
    "available_presets", "hub_dataset_problem", "known_keys", "preset_path", "resolve",
]
