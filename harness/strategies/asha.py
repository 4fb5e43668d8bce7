"""ASHA: Ray Tune's ASHAScheduler over the same search space; weak trials stop at rungs, and new
configurations are sampled until the comparison's budget of trial-iterations is spent."""

from __future__ import annotations

from typing import Any

from harness.strategies import StrategyContext, StrategyResult
from harness.strategies.tune_runner import run_tuner


def scheduler(ctx: StrategyContext) -> Any:
    from ray.tune.schedulers import ASHAScheduler

    t = ctx.cfg.tune
    return ASHAScheduler(
        time_attr="training_iteration",
        metric=t.metric,
        mode=t.mode,
        max_t=ctx.cfg.train.iterations,
        grace_period=t.asha_grace_period,
        reduction_factor=t.asha_reduction_factor,
    )


def run(ctx: StrategyContext) -> StrategyResult:
    return run_tuner(ctx, scheduler=scheduler(ctx), param_space=ctx.cfg.search.ray_space())
