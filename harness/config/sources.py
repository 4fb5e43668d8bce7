"""Where a configuration comes from, lowest to highest precedence: the field defaults
(:mod:`harness.config.settings`) < a TOML preset (``harness/config/presets/<name>.toml`` or a
path) < the seed exercise's environment variables (``LR_LOWER``, ``LR_UPPER``, ``BS_CHOICES``,
``WD_CHOICES``) < the command line (``--lr-lower`` ... and ``--set section.key=value``).

Every bad value is one :class:`~harness.config.settings.ConfigError` line that names where it
came from (the variable, the flag, or the preset's key), the value as written, and the fix; the
CLI turns it into exit code 2 before Ray, MLflow or a model is touched.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import tomllib

from harness.config.settings import ConfigError, ExperimentConfig, validated

PRESET_DIR = Path(__file__).resolve().parent / "presets"

#: Environment variables of the seed exercise, mapped to the search-space field they set.
ENV_OVERRIDES: dict[str, str] = {
    "LR_LOWER": "search.lr_lower",
    "LR_UPPER": "search.lr_upper",
    "BS_CHOICES": "search.bs_choices",
    "WD_CHOICES": "search.wd_choices",
}


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def preset_path(preset: str) -> Path:
    """A preset name (``smoke``) or a path to a TOML file."""
    candidate = Path(preset)
    if candidate.suffix == ".toml":
        if not candidate.is_file():
            raise ConfigError(f"preset file {preset!r} does not exist; give an existing .toml file")
        return candidate
    path = PRESET_DIR / f"{preset}.toml"
    if not path.is_file():
        raise ConfigError(f"preset={preset!r} is unknown; choose one of {', '.join(available_presets())} "
                          "or give a path to a .toml file")
    return path


def _flat(data: Mapping[str, Any]) -> dict[str, Any]:
    """A TOML document's ``[section] key`` as ``section.key``."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update({f"{key}.{sub}": v for sub, v in value.items()})
        else:
            out[key] = value
    return out


def resolve(preset: str = "smoke", env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None,
            override_origins: Mapping[str, str] | None = None, *,
            task_settings: Callable[[str], Mapping[str, Any]] | None = None,
            tasks: Sequence[str] = ()) -> ExperimentConfig:
    """defaults < the task's settings < preset < environment (LR_LOWER ...) < ``overrides`` (the
    command line, with the flag each came from in ``override_origins``).

    ``task_settings(name)`` gives a task's settings (:mod:`harness.tasks` passes its registry);
    ``preset`` may then also be one of ``tasks``: that task on its own settings, no preset file.
    """
    env = os.environ if env is None else env
    if preset in tasks and not (PRESET_DIR / f"{preset}.toml").is_file():
        values: dict[str, Any] = {"task": preset}
        origins = {"task": f"--preset {preset} (a task)"}
        source = f"task {preset}"
    else:
        path = preset_path(preset)
        try:
            with path.open("rb") as fh:
                document = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"preset file {str(path)!r} is not valid TOML ({exc}); fix the file") from None
        values = _flat(document)
        origins = {key: f"{key} (preset {path.name})" for key in values}
        source = f"preset {path.name}"
        preset = preset if path.parent == PRESET_DIR else str(path)
    values["preset"] = preset
    for var, key in ENV_OVERRIDES.items():
        if var in env:
            values[key], origins[key] = env[var], var
    for key, value in (overrides or {}).items():
        values[key], origins[key] = value, (override_origins or {}).get(key, key)
    if task_settings is not None:
        task = str(values.get("task") or ExperimentConfig.model_fields["task"].default)
        under = {k: v for k, v in task_settings(task).items() if k not in values}
        origins.update({k: f"{k} (task {task})" for k in under})
        values = {**under, **values}
    return validated(values, origin=source, origins=origins, given=values)
