"""FIFO, the "ASHA-free" baseline: the manual grid run concurrently by Ray Tune, no early stopping,
no exploitation. Every trial trains all its iterations; only concurrency shortens the job."""

from __future__ import annotations

from harness.strategies import StrategyContext, StrategyResult
from harness.strategies.tune_runner import run_tuner


def run(ctx: StrategyContext) -> StrategyResult:
    return run_tuner(ctx, scheduler=None, param_space=ctx.cfg.search.ray_grid(ctx.cfg.grid_lrs()))
