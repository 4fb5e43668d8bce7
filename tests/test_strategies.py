"""The registry is the one place a strategy is defined; the budget decides every strategy's trials."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from harness import strategies
from harness.config import ConfigError, resolve

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent


def test_every_entry_has_a_module_with_run_and_a_role():
    assert strategies.names() == ["manual", "fifo", "asha", "pbt", "pb2"]
    for name, entry in strategies.REGISTRY.items():
        assert entry.role in ("baseline", "candidate")
        assert callable(importlib.import_module(entry.module).run), name
    assert [n for n, e in strategies.REGISTRY.items() if e.sequential] == ["manual"]
    assert [n for n, e in strategies.REGISTRY.items() if e.exploits] == ["pbt", "pb2"]


def test_no_strategy_name_is_spelled_outside_the_registry():
    literal = re.compile(r"""["'](?:%s)["']""" % "|".join(strategies.names()))
    offenders = []
    for path in (ROOT / "harness").rglob("*.py"):
        if path == ROOT / "harness" / "strategies" / "__init__.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if literal.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("budget, grid, population, asha_cap", [(36, 12, 12, 36), (12, 4, 4, 12), (24, 8, 8, 24)])
def test_the_budget_decides_every_strategys_trials(budget, grid, population, asha_cap):
    cfg = resolve("smoke", env={}, overrides={"budget.trial_iterations": budget})
    planned = {n: strategies.spec(n).planned_trials(cfg) for n in strategies.names()}
    assert planned == {"manual": grid, "fifo": grid, "asha": asha_cap, "pbt": population, "pb2": population}
    assert len(cfg.search.grid(cfg.grid_lrs())) * cfg.train.iterations == budget


def test_a_zero_budget_means_the_grids():
    cfg = resolve("smoke", env={}, overrides={"budget.trial_iterations": 0, "tune.grid_lrs": 2})
    assert cfg.budget_iterations() == 2 * 2 * 2 * 3 and cfg.grid_lrs() == 2


def test_a_budget_too_small_for_one_grid_row_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match=r"budget.trial_iterations=6 cannot pay for one learning rate of the grid "
                                          r"\(2 batch sizes x 2 weight decays x 3 iterations = 12\); use 0"):
        resolve("smoke", env={}, overrides={"budget.trial_iterations": 6},
                override_origins={"budget.trial_iterations": "budget.trial_iterations"})


def test_pb2_scheduler_searches_the_box_of_the_users_space():
    from harness.strategies.pb2 import scheduler

    cfg = resolve("smoke", env={"LR_LOWER": "1e-5"})
    sched = scheduler(strategies.StrategyContext(cfg=cfg, run_dir=None, model_path="", data_path=""))  # type: ignore[arg-type]
    assert type(sched).__mro__[2].__name__ == "PB2"
    assert sched._hyperparam_bounds == {"lr": [1e-5, 2e-4], "per_device_train_batch_size": [1.0, 2.0],
                                        "weight_decay": [0.0, 0.01]}
    snapped = sched._custom_explore_fn({"lr": 3e-4, "per_device_train_batch_size": 1.7, "weight_decay": 0.004})
    assert snapped == {"lr": 2e-4, "per_device_train_batch_size": 2, "weight_decay": 0.0}
