"""Strategies behind one registry: a new strategy is a new entry, not a flag inside another.

A strategy is a callable ``run(ctx) -> StrategyResult`` that trains the shared trial and reports
every trial's events to ``ctx.sinks``; :func:`register` adds one under a name and :func:`get`
looks it up, refusing unknown names with the list of known ones.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import ConfigError, ExperimentConfig, SearchSpace

#: Modules that register strategies when imported (kept lazy: each pulls in Ray).
_MODULES = {
    "pbt": "harness.strategies.pbt",
    "fifo": "harness.strategies.fifo",
    "asha": "harness.strategies.asha",
    "manual": "harness.strategies.manual",
}
_REGISTRY: dict[str, Callable[[StrategyContext], StrategyResult]] = {}


@dataclass(frozen=True)
class StrategyResult:
    slots: int
    """Trials that could run at once (1 for the sequential grid): the denominator of utilization."""


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


def register(name: str) -> Callable[[Callable[[StrategyContext], StrategyResult]], Callable[[StrategyContext], StrategyResult]]:
    def wrap(fn: Callable[[StrategyContext], StrategyResult]) -> Callable[[StrategyContext], StrategyResult]:
        _REGISTRY[name] = fn
        return fn

    return wrap


def names() -> list[str]:
    return sorted(_MODULES)


def check(name: str) -> None:
    """Fail early (before Ray starts) on an unknown strategy name."""
    if name not in _MODULES:
        raise ConfigError(f"strategy={name!r} is unknown; choose one of {', '.join(names())}")


def get(name: str) -> Callable[[StrategyContext], StrategyResult]:
    check(name)
    importlib.import_module(_MODULES[name])
    return _REGISTRY[name]


def grid_lrs(space: SearchSpace, n_lrs: int) -> list[float]:
    """``n_lrs`` learning rates log-spaced over [lr_lower, lr_upper], both ends exactly included."""
    if n_lrs == 1:
        return [math.sqrt(space.lr_lower * space.lr_upper)]
    step = (math.log(space.lr_upper) - math.log(space.lr_lower)) / (n_lrs - 1)
    lrs = [math.exp(math.log(space.lr_lower) + i * step) for i in range(n_lrs)]
    lrs[0], lrs[-1] = space.lr_lower, space.lr_upper
    return lrs


def grid(space: SearchSpace, n_lrs: int) -> list[dict[str, Any]]:
    """The seed's manual grid: :func:`grid_lrs` x batch sizes x weight decays, in a fixed order."""
    return [
        {"lr": lr, "per_device_train_batch_size": bs, "weight_decay": wd}
        for lr in grid_lrs(space, n_lrs) for bs in space.bs_choices for wd in space.wd_choices
    ]
