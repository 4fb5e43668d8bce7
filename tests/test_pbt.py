from __future__ import annotations

import random

import pytest

from harness import strategies
from harness.config import ConfigError, SearchSpace, resolve
from harness.strategies import StrategyContext
from harness.strategies.pbt import scheduler

pytestmark = pytest.mark.unit

SPACE = SearchSpace(lr_lower=1e-5, lr_upper=2e-4, bs_choices=(1, 2), wd_choices=(0.0, 0.01))


@pytest.mark.parametrize(
    "config, expected",
    [
        ({"lr": 2.4e-4, "per_device_train_batch_size": 2, "weight_decay": 0.0}, 2e-4),  # 2e-4 * 1.2
        ({"lr": 0.8e-5, "per_device_train_batch_size": 1, "weight_decay": 0.01}, 1e-5),  # 1e-5 * 0.8
        ({"lr": 5e-5, "per_device_train_batch_size": 1, "weight_decay": 0.0}, 5e-5),
    ],
)
def test_explored_lr_is_clipped_to_the_users_bounds(config, expected):
    assert SPACE.clip(config)["lr"] == expected


def test_values_outside_the_choices_snap_to_the_nearest_choice():
    out = SPACE.clip({"lr": 1e-4, "per_device_train_batch_size": 3, "weight_decay": 0.02})
    assert out["per_device_train_batch_size"] == 2 and out["weight_decay"] == 0.01


def test_ray_explore_with_the_harness_clip_never_leaves_the_space():
    """Ray's own explore step (x0.8 / x1.2, resampling) followed by the harness clip, many times."""
    from ray.tune.schedulers.pbt import _explore

    cfg = resolve("smoke", env={"LR_LOWER": "1e-5", "LR_UPPER": "2e-4"})
    sched = scheduler(StrategyContext(cfg=cfg, run_dir=None, model_path="", data_path=""))  # type: ignore[arg-type]
    random.seed(0)
    config = {"lr": 2e-4, "per_device_train_batch_size": 2, "weight_decay": 0.01}
    escaped_without_clip = 0
    for _ in range(500):
        raw, _ = _explore(config, sched._hyperparam_mutations, 0.25, (1.2, 0.8), None)
        escaped_without_clip += not (1e-5 <= raw["lr"] <= 2e-4)
        config, _ = _explore(config, sched._hyperparam_mutations, 0.25, (1.2, 0.8), sched._custom_explore_fn)
        assert 1e-5 <= config["lr"] <= 2e-4
        assert config["per_device_train_batch_size"] in (1, 2) and config["weight_decay"] in (0.0, 0.01)
    assert escaped_without_clip > 0, "the test must exercise values Ray pushes out of bounds"


def test_pbt_scheduler_follows_the_seed_design():
    cfg = resolve("smoke", env={})
    sched = scheduler(StrategyContext(cfg=cfg, run_dir=None, model_path="", data_path=""))  # type: ignore[arg-type]
    assert sched._time_attr == "training_iteration" and sched._metric == "eval_loss" and sched._mode == "min"
    assert sched._perturbation_interval == 1 and sched._synch is True and sched._quantile_fraction == 0.5
    assert set(sched._hyperparam_mutations) == {"lr", "per_device_train_batch_size", "weight_decay"}
    assert sched._hyperparam_mutations["per_device_train_batch_size"] == [1, 2]
    resampled = [sched._hyperparam_mutations["lr"]() for _ in range(200)]
    assert all(cfg.search.lr_lower <= lr <= cfg.search.lr_upper for lr in resampled)


def test_pbt_decisions_come_from_a_generator_of_their_own():
    from ray.tune.schedulers import pbt as ray_pbt

    cfg = resolve("smoke", env={})
    ctx = StrategyContext(cfg=cfg, run_dir=None, model_path="", data_path="")  # type: ignore[arg-type]
    scheduler(ctx)
    first = [ray_pbt.random.random() for _ in range(5)]
    random.random()  # the process-wide generator moving must not matter
    scheduler(ctx)
    assert [ray_pbt.random.random() for _ in range(5)] == first


def test_registry_knows_pbt_and_refuses_the_rest():
    assert "pbt" in strategies.names()
    assert callable(strategies.get("pbt"))
    with pytest.raises(ConfigError, match="strategy='nope' is unknown; choose one of manual, fifo, asha, pbt, pb2"):
        strategies.get("nope")
