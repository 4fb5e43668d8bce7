"""The experiment's configuration: one validated object, resolved once in the driver and handed on."""

from harness.config.settings import *  # noqa: F401,F403  (moved here; split by the next commits)
from harness.config.settings import (  # noqa: F401
    CANONICAL_DATASETS, ENV_OVERRIDES, PRESET_DIR, BudgetConfig, ConfigError, DataConfig, ExperimentConfig, ModelConfig,
    ResourcesConfig, SearchSpace, TrainConfig, TuneSettings, available_presets, hub_dataset_problem, known_keys,
    parse_value, preset_path, resolve, validate,
)
