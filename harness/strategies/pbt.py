"""Population-Based Training over the shared trial (Ray Tune's PopulationBasedTraining)."""

from __future__ import annotations

import functools
from typing import Any

from harness.config import SearchSpace
from harness.strategies import StrategyContext, register
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


def scheduler(ctx: StrategyContext) -> Any:
    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining

    cfg = ctx.cfg
    space = cfg.search
    return PopulationBasedTraining(
        time_attr="training_iteration",
        metric="eval_loss",
        mode="min",
        perturbation_interval=1,
        hyperparam_mutations={
            "lr": tune.loguniform(space.lr_lower, space.lr_upper),
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
def run(ctx: StrategyContext) -> Any:
    return run_tuner(ctx, scheduler=scheduler(ctx), param_space=search_space(ctx.cfg.search))
