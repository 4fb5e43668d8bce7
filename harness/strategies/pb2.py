"""PB2 (Parker-Holder et al., 2020): Population-Based Training whose explore step fits a
time-varying Gaussian-process bandit to the population's progress instead of perturbing by
0.8/1.2 (Ray Tune's ``PB2``; needs scikit-learn only).

PB2 searches a box: batch size and weight decay become intervals between their smallest and
largest choice, and every proposal is snapped back to the user's choices (``SearchSpace.clip``).
Its exploit step is PBT's, so it shares PBT's private random generator; its GP proposals draw
from numpy's seeded global state, which Ray's driver threads may also consume: unlike PBT's,
PB2's decisions are not guaranteed to repeat with a fixed seed.
"""

from __future__ import annotations

from typing import Any

from harness.strategies import StrategyContext, StrategyResult, ray_compat
from harness.strategies.tune_runner import KeepActorsWarm, run_tuner


def scheduler(ctx: StrategyContext) -> Any:
    from ray.tune.schedulers.pb2 import PB2

    class WarmPB2(KeepActorsWarm, PB2):
        pass

    cfg = ctx.cfg
    ray_compat.private_pbt_random(cfg.seed)  # PBT's exploit step, shared
    return WarmPB2(
        time_attr="training_iteration",
        metric=cfg.tune.metric,
        mode=cfg.tune.mode,
        perturbation_interval=1,
        hyperparam_bounds=cfg.search.bounds(),
        quantile_fraction=cfg.tune.quantile_fraction,
        custom_explore_fn=cfg.search.clip,
        synch=cfg.tune.synch,
        log_config=True,
    )


def run(ctx: StrategyContext) -> StrategyResult:
    return run_tuner(ctx, scheduler=scheduler(ctx), param_space=ctx.cfg.search.ray_space())
