"""Strategies behind one registry: a new strategy is a new entry, not a flag inside another.

A strategy is a callable ``run(ctx) -> RunRecord``; :func:`register` adds one under a name and
:func:`get` looks it up, refusing unknown names with the list of known ones.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import ConfigError, ExperimentConfig

#: Modules that register strategies when imported (kept lazy: each pulls in Ray).
_MODULES = {"pbt": "harness.strategies.pbt"}
_REGISTRY: dict[str, Callable[[StrategyContext], Any]] = {}


@dataclass
class StrategyContext:
    """What the runner hands a strategy: the resolved config and the prepared inputs."""

    cfg: ExperimentConfig
    run_dir: Path
    model_path: str
    data_path: str
    cache_dir: str = ""
    ray_address: str = "local"
    sinks: list[Any] = field(default_factory=list)
    """Receivers of trial_started / trial_result / trial_ended (the RunRecord, the MLflow tracker)."""


def register(name: str) -> Callable[[Callable[[StrategyContext], Any]], Callable[[StrategyContext], Any]]:
    def wrap(fn: Callable[[StrategyContext], Any]) -> Callable[[StrategyContext], Any]:
        _REGISTRY[name] = fn
        return fn

    return wrap


def names() -> list[str]:
    return sorted(_MODULES)


def check(name: str) -> None:
    """Fail early (before Ray starts) on an unknown strategy name."""
    if name not in _MODULES:
        raise ConfigError(f"strategy={name!r} is unknown; choose one of {', '.join(names())}")


def get(name: str) -> Callable[[StrategyContext], Any]:
    check(name)
    importlib.import_module(_MODULES[name])
    return _REGISTRY[name]
