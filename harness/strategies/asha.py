"""ASHA: Ray Tune's ASHAScheduler over the same search space; weak trials stop at rungs."""

from __future__ import annotations

from typing import Any

from harness.strategies import StrategyContext, StrategyResult, register
from harness.strategies.tune_common import run_tuner, search_space


def scheduler(ctx: StrategyContext) -> Any:
    from ray.tune.schedulers import ASHAScheduler

    t = ctx.cfg.tune
    return ASHAScheduler(
        time_attr="training_iteration",
        metric="eval_loss",
        mode="min",
        max_t=ctx.cfg.train.iterations,
        grace_period=t.asha_grace_period,
        reduction_factor=t.asha_reduction_factor,
    )


@register("asha")
def run(ctx: StrategyContext) -> StrategyResult:
    t = ctx.cfg.tune
    return run_tuner(ctx, scheduler=scheduler(ctx), param_space=search_space(ctx.cfg.search),
                     num_samples=t.asha_num_samples or t.num_samples)
