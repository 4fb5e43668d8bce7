"""FIFO, the "ASHA-free" baseline: the manual grid run concurrently by Ray Tune, no early stopping,
no exploitation. Every trial trains all its iterations; only concurrency shortens the job."""

from __future__ import annotations

from harness.strategies import StrategyContext, StrategyResult, grid_lrs, register
from harness.strategies.tune_common import run_tuner


@register("fifo")
def run(ctx: StrategyContext) -> StrategyResult:
    from ray import tune

    space = ctx.cfg.search
    # grid_search on every key: Ray runs their cartesian product, the manual grid's combinations
    param_space = {
        "lr": tune.grid_search(grid_lrs(space, ctx.cfg.tune.grid_lrs)),
        "per_device_train_batch_size": tune.grid_search(list(space.bs_choices)),
        "weight_decay": tune.grid_search(list(space.wd_choices)),
    }
    return run_tuner(ctx, scheduler=None, param_space=param_space, num_samples=1)
