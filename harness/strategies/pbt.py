"""Population-Based Training over the shared trial (Ray Tune's PopulationBasedTraining)."""

from __future__ import annotations

from typing import Any

from harness.strategies import StrategyContext, StrategyResult, ray_compat
from harness.strategies.tune_runner import KeepActorsWarm, run_tuner


def scheduler(ctx: StrategyContext) -> Any:
    from ray.tune.schedulers import PopulationBasedTraining

    class WarmPBT(KeepActorsWarm, PopulationBasedTraining):
        pass

    cfg = ctx.cfg
    rng = ray_compat.private_pbt_random(cfg.seed)  # decisions that repeat with the seed
    return WarmPBT(
        time_attr="training_iteration",
        metric=cfg.tune.metric,
        mode=cfg.tune.mode,
        perturbation_interval=1,
        hyperparam_mutations=cfg.search.mutations(rng),
        quantile_fraction=cfg.tune.quantile_fraction,
        resample_probability=cfg.tune.resample_probability,
        custom_explore_fn=cfg.search.clip,
        synch=cfg.tune.synch,
        log_config=True,  # pbt_global.txt / pbt_policy_<trial>.txt in the experiment folder
    )


def run(ctx: StrategyContext) -> StrategyResult:
    return run_tuner(ctx, scheduler=scheduler(ctx), param_space=ctx.cfg.search.ray_space())
