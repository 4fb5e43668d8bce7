"""What every Ray Tune strategy shares: Ray start-up, the search space, trial resources, the Tuner."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

from ray.tune import Callback

from harness.config import ExperimentConfig, SearchSpace
from harness.strategies import StrategyContext, StrategyResult
from harness.train import trainable

def init_ray(address: str) -> None:
    """Start (``address="local"``) or join Ray.

    ``local`` always starts a private instance: a bare ``ray.init()`` would join whatever
    ``RAY_ADDRESS`` or an earlier session on this machine points to. Ray 2.60 turns token auth on
    by itself once ``~/.ray/auth_token`` exists, so the mode is always set explicitly.
    """
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled" if address == "local" else "token")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = dict(address=address, include_dashboard=False, logging_level=logging.WARNING)
    if os.environ.get("RAY_NODE_IP"):  # the head job's address (127.0.0.1 would not match the raylet)
        kwargs["_node_ip_address"] = os.environ["RAY_NODE_IP"]
    ray.init(**kwargs)


def search_space(space: SearchSpace) -> dict[str, Any]:
    """Initial sampling: lr log-uniform, batch size and weight decay from their choices."""
    from ray import tune

    return {
        "lr": tune.loguniform(space.lr_lower, space.lr_upper),
        "per_device_train_batch_size": tune.choice(list(space.bs_choices)),
        "weight_decay": tune.choice(list(space.wd_choices)),
    }


def trial_resources(cfg: ExperimentConfig) -> Any:
    """One bundle of W*Cw CPUs and W*Gw GPUs: all of a trial's ranks land on one node."""
    from ray import tune

    r = cfg.resources
    bundle = {"CPU": r.workers_per_trial * r.cpus_per_worker}
    if r.gpus_per_worker:
        bundle["GPU"] = r.workers_per_trial * r.gpus_per_worker
    return tune.PlacementGroupFactory([bundle], strategy="STRICT_PACK")


def seed_everything(seed: int) -> None:
    """Ray's sampling and PBT's explore step draw from ``random`` and numpy's global state."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)


def cluster_slots(cfg: ExperimentConfig) -> int:
    """Trials Ray can run at once on the nodes it has now (the seed's capacity check per node)."""
    import ray

    from harness.capacity import Node, TrialShape, trials_per_node

    r = cfg.resources
    shape = TrialShape(r.workers_per_trial, r.cpus_per_worker, r.gpus_per_worker)
    slots = sum(
        trials_per_node(Node(cpus=n["Resources"].get("CPU", 0), gpus=n["Resources"].get("GPU", 0)), shape)
        for n in ray.nodes() if n.get("Alive")
    )
    if cfg.tune.max_concurrent:
        slots = min(slots, cfg.tune.max_concurrent)
    return max(1, slots)


def run_tuner(ctx: StrategyContext, *, scheduler: Any, param_space: dict[str, Any],
              num_samples: int | None = None) -> StrategyResult:
    """Run the shared trial under ``scheduler`` (None: FIFO) and report to the context's sinks."""
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    cfg = ctx.cfg
    init_ray(ctx.ray_address)
    seed_everything(cfg.seed)
    fn = tune.with_parameters(
        trainable, experiment=cfg.to_dict(), model_path=ctx.model_path, data_path=ctx.data_path,
        cache_dir=ctx.cache_dir,
    )
    tuner = tune.Tuner(
        tune.with_resources(fn, trial_resources(cfg)),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            scheduler=scheduler,
            search_alg=BasicVariantGenerator(random_state=cfg.seed),
            num_samples=cfg.tune.num_samples if num_samples is None else num_samples,
            max_concurrent_trials=cfg.tune.max_concurrent or None,
            reuse_actors=cfg.tune.reuse_actors,
        ),
        run_config=tune.RunConfig(
            name="ray",
            storage_path=str(Path(ctx.run_dir).resolve()),  # relative fails with ArrowInvalid
            checkpoint_config=tune.CheckpointConfig(num_to_keep=cfg.tune.num_to_keep),
            failure_config=tune.FailureConfig(max_failures=0),
            # Stop on the trial's own iteration count as soon as it reports the last one, so the
            # scheduler never acts on a finished trial (PBT would "exploit" it into a no-op restart).
            stop={"iteration": cfg.train.iterations},
            callbacks=[SinkCallback(ctx.sinks)],
            verbose=1,
        ),
    )
    slots = cluster_slots(cfg)
    tuner.fit()
    return StrategyResult(slots=slots)


class SinkCallback(Callback):
    """Forwards Ray Tune's trial events to the run's sinks (the run record, MLflow)."""

    def __init__(self, sinks: list[Any]):
        self.sinks = sinks

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        for sink in self.sinks:
            sink.trial_started(trial.trial_id, str(trial), dict(trial.config))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        for sink in self.sinks:
            sink.trial_result(trial.trial_id, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        for sink in self.sinks:
            sink.trial_ended(trial.trial_id, "TERMINATED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error_file = getattr(trial, "error_file", None)
        error = Path(error_file).read_text()[-2000:] if error_file and Path(error_file).is_file() else ""
        for sink in self.sinks:
            sink.trial_ended(trial.trial_id, "ERROR", error)
