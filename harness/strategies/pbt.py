"""Population-Based Training over the shared trial (Ray Tune's PopulationBasedTraining)."""

from __future__ import annotations

import functools
import math
import random
from typing import Any

from harness.config import SearchSpace
from harness.strategies import StrategyContext, StrategyResult, register
from harness.strategies.tune_common import run_tuner, search_space


def clip_to_space(config: dict[str, Any], space: SearchSpace) -> dict[str, Any]:
    """Keep an explored config inside the user's bounds and choices.

    Ray's explore step multiplies a continuous value by 0.8 or 1.2 and does not clip, so an lr
    near LR_UPPER would leave the range the user asked for.
    """
    out = dict(config)
    out["lr"] = min(max(float(out["lr"]), space.lr_lower), space.lr_upper)
    for key, choices in (("per_device_train_batch_size", space.bs_choices), ("weight_decay", space.wd_choices)):
        if out[key] not in choices:  # snap to the nearest allowed value
            out[key] = min(choices, key=lambda c: abs(c - out[key]))
    return out


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

    cfg = ctx.cfg
    space = cfg.search
    rng = private_rng(cfg.seed)
    log_lo, log_hi = math.log(space.lr_lower), math.log(space.lr_upper)
    return PopulationBasedTraining(
        time_attr="training_iteration",
        metric="eval_loss",
        mode="min",
        perturbation_interval=1,
        hyperparam_mutations={
            # log-uniform resampling from the private generator (a tune.loguniform Domain would
            # resample from numpy's process-wide state)
            "lr": lambda: math.exp(rng.uniform(log_lo, log_hi)),
            "per_device_train_batch_size": list(space.bs_choices),
            "weight_decay": list(space.wd_choices),
        },
        quantile_fraction=cfg.tune.quantile_fraction,
        resample_probability=cfg.tune.resample_probability,
        custom_explore_fn=functools.partial(clip_to_space, space=space),
        synch=cfg.tune.synch,
        log_config=True,  # pbt_global.txt / pbt_policy_<trial>.txt in the experiment folder
    )


@register("pbt")
def run(ctx: StrategyContext) -> StrategyResult:
    return run_tuner(ctx, scheduler=scheduler(ctx), param_space=search_space(ctx.cfg.search))
