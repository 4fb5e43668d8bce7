"""Population-Based Training over the shared trial (Ray Tune's PopulationBasedTraining)."""

from __future__ import annotations

import random
from typing import Any

from harness.strategies import StrategyContext, StrategyResult
from harness.strategies.tune_common import KeepActorsWarm, run_tuner


def private_rng(seed: int) -> random.Random:
    """Give Ray's PBT a random generator of its own.

    PBT draws its exploit and explore decisions from the process-wide ``random`` module, which
    Ray's driver threads also draw from, a timing-dependent number of times: two synchronous runs
    with the same seed and identical losses chose different donors (measured). Ray's PBT module
    looks ``random`` up as a module global, so pointing that name at a seeded ``random.Random``
    makes the decisions depend on the seed and the losses alone.
    """
    from ray.tune.schedulers import pbt as ray_pbt

    rng = random.Random(f"pbt/{seed}")
    ray_pbt.random = rng  # type: ignore[attr-defined]
    return rng


def scheduler(ctx: StrategyContext) -> Any:
    from ray.tune.schedulers import PopulationBasedTraining

    class WarmPBT(KeepActorsWarm, PopulationBasedTraining):
        pass

    cfg = ctx.cfg
    rng = private_rng(cfg.seed)
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
