"""Strategies behind one registry: the only place a strategy's name, module, role and artifacts
appear. A new strategy is a module ``harness/strategies/<name>.py`` with a ``run(ctx)`` function
and one line in :data:`REGISTRY`, nothing else.

A strategy's ``run(ctx) -> StrategyResult`` trains the shared trial and reports every trial's
events to ``ctx.sinks``; :func:`get` looks one up, refusing unknown names with the list of known
ones, before Ray or a model is touched.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness.config import ConfigError, ExperimentConfig
from harness.contract.record import RunRecord
from harness.contract.rundir import RunDir
from harness.contract.sink import Sink

#: How a strategy decides how many trials it runs out of the budget.
TRIALS_GRID = "grid"  # the grid's combinations, each for every iteration
TRIALS_POPULATION = "population"  # budget / iterations trials, each for every iteration
TRIALS_UNTIL_SPENT = "until-spent"  # sample until the budget's iterations are spent


@dataclass(frozen=True)
class Strategy:
    name: str
    role: str
    """``baseline`` (what the exercise compares against) or ``candidate`` (what it evaluates)."""
    summary: str
    trials: str = TRIALS_GRID
    sequential: bool = False
    """One trial at a time, in the driver: the exercise's manual tuning."""
    exploits: bool = False
    """Population-based: trials restart from other trials' checkpoints."""
    primary: bool = False
    """The quiz's subject: its paired tests against every baseline are the comparison's primary
    tests (each at α); every other pair is exploratory (Holm-adjusted)."""
    artifacts: tuple[str, ...] = ()
    """Globs in Ray's experiment folder copied into the run folder (and logged to MLflow)."""

    @property
    def module(self) -> str:
        return f"harness.strategies.{self.name}"

    def planned_trials(self, cfg: ExperimentConfig) -> int:
        """Trials this strategy starts for ``cfg``'s budget (an upper bound for ``until-spent``)."""
        if self.trials == TRIALS_GRID:
            return len(cfg.search.grid(cfg.grid_lrs()))
        if self.trials == TRIALS_POPULATION:
            return cfg.budget_iterations() // cfg.train.iterations
        return cfg.budget_iterations() // cfg.tune.asha_grace_period


REGISTRY: dict[str, Strategy] = {s.name: s for s in (
    Strategy("manual", "baseline", "the seed's grid, one combination after another, no Ray", sequential=True),
    Strategy("fifo", "baseline", "the same grid run concurrently by Ray Tune, no early stopping"),
    Strategy("asha", "baseline", "ASHA: random samples until the budget is spent, weak trials stop at rungs",
             trials=TRIALS_UNTIL_SPENT),
    Strategy("pbt", "candidate", "Population-Based Training (Ray Tune)", trials=TRIALS_POPULATION, exploits=True,
             primary=True, artifacts=("pbt_*.txt",)),
    Strategy("pb2", "candidate", "PB2: PBT whose explore step is a GP bandit (Ray Tune)", trials=TRIALS_POPULATION,
             exploits=True, artifacts=("pbt_*.txt",)),
)}


@dataclass(frozen=True)
class StrategyResult:
    slots: int
    """Trials that could run at once (1 for the sequential grid): the denominator of utilization."""


@dataclass
class StrategyContext:
    """What the runner hands a strategy: the resolved config and the prepared inputs."""

    cfg: ExperimentConfig
    run_dir: RunDir
    model_path: str
    data_path: str
    cache_dir: str = ""
    ray_address: str = "local"
    sinks: Sink = field(default_factory=Sink)
    """Where every trial event goes (the event log, MLflow, the console), in one :class:`Sinks`."""
    verbose: bool = False
    """Ray's own trial table and every trial process's output on the console (else: in the run folder)."""
    previous: RunRecord | None = None
    """With ``--resume``: the record replayed from the run's event log (what is already done)."""
    restore: bool = False
    """Ray Tune saved a state in the run folder: continue it (``Tuner.restore``). A resume without
    one starts the unfinished work over (the runner has discarded the trials it knew)."""
    stop: Any = None
    """A ``threading.Event`` set when the run must stop early (SIGUSR1 before a SLURM time limit)."""

    @property
    def resuming(self) -> bool:
        return self.previous is not None


def names() -> list[str]:
    return list(REGISTRY)


def spec(name: str) -> Strategy:
    """The registry entry; fails early (before Ray starts) on an unknown name."""
    if name not in REGISTRY:
        raise ConfigError(f"strategy={name!r} is unknown; choose one of {', '.join(names())}")
    return REGISTRY[name]


def get(name: str) -> Callable[[StrategyContext], StrategyResult]:
    return importlib.import_module(spec(name).module).run


def order(strategy_names: list[str]) -> list[str]:
    """Registry order (baselines first), then unknown names alphabetically."""
    known = [n for n in REGISTRY if n in strategy_names]
    return known + sorted(set(strategy_names) - set(known))
