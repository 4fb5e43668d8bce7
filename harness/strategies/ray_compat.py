"""Every place the harness relies on Ray's private API, in one module.

Each function below names the private attribute it touches, why no public API does the job, and
what breaks without it. ``tests/test_ray_compat.py`` has a fast test for each (no trial runs):
when a Ray upgrade renames or reshapes one, that test fails in seconds, not a 3-minute
integration run. Checked against Ray :data:`TESTED_WITH`.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

TESTED_WITH = "2.60.0"


def init_kwargs(node_ip: str) -> dict[str, Any]:
    """``ray.init``'s private ``_node_ip_address``: the address of the SLURM head job's Ray node.

    A driver on a node whose Ray listens on a job-specific address (127.0.0.2 in the tests, the
    node's interface on a cluster) must say so, or it looks for a raylet on the wrong address.
    ``ray.init`` has no public keyword for it (``ray start`` has ``--node-ip-address``)."""
    return {"_node_ip_address": node_ip}


def live_trials(search: Any) -> set[str]:
    """``BasicVariantGenerator._live_trials``: the ids of the trials it generated that have not
    completed yet (Ray keeps the set for ``max_concurrent``; nothing public exposes it).

    ``BudgetedSearch`` needs it to stay open until its last trial completes (else Ray stops
    caching paused trials' actors) and to count ASHA's iterations in flight."""
    return search._live_trials


def raise_actor_cache_limit(tune_controller: Any, placement_group_factory: Any, by: int) -> None:
    """``TuneController._actor_cache.increase_max``: keep ``by`` more trial actors of this shape
    cached, behind the ``TrialRunnerWrapper`` (``_tune_controller``) that schedulers receive.

    At a synchronous PBT barrier every trial pauses while none is pending, and Ray 2.60 caches at
    most one paused actor; the next round then starts fresh processes while others import torch
    (measured: 2 of 4 slots busy). Without it a run still completes, with more processes."""
    controller = getattr(tune_controller, "_tune_controller", tune_controller)
    controller._actor_cache.increase_max(placement_group_factory, by=by)


class SyncBarrier:
    """Synchronous PBT's barrier state: ``_synch``, ``_next_perturbation_sync``,
    ``_perturbation_interval`` and each trial's ``_trial_state[trial].last_train_time``.

    After ``Tuner.restore`` the scheduler is the one pickled when the Tuner was created, so its
    barrier starts again at the first one while the restored trials are further on, and every
    trial stays paused (measured: a resumed run stuck at 8 of 12 iterations). The harness moves
    the barrier on; Ray offers no public way to read or set it."""

    def __init__(self, scheduler: Any):
        self.scheduler = scheduler

    @property
    def synchronous(self) -> bool:
        return bool(getattr(self.scheduler, "_synch", False)) and hasattr(self.scheduler, "_trial_state")

    @property
    def next_sync(self) -> float:
        return self.scheduler._next_perturbation_sync

    @property
    def interval(self) -> float:
        return self.scheduler._perturbation_interval

    def last_train_time(self, trial: Any) -> float | None:
        """The trial's time at its last result, or None for a trial the scheduler does not know."""
        state = self.scheduler._trial_state.get(trial)
        return None if state is None else state.last_train_time

    def move_to(self, trials: Iterable[Any]) -> None:
        """Put the next barrier one interval past the furthest of ``trials``."""
        self.scheduler._next_perturbation_sync = max(self.last_train_time(t) or 0 for t in trials) + self.interval


def session_dir() -> Path | None:
    """``ray._private.worker._global_node.get_session_dir_path()``: this driver's Ray session
    folder, whose ``logs/`` holds the trial processes' output (``worker-*.out``/``.err``).

    The run folder copies them so a user finds them (the next ``ray.init`` moves on from the
    folder in /tmp). None when Ray is not initialized here; a copy that cannot be made loses
    only that convenience."""
    import ray._private.worker

    node = getattr(ray._private.worker, "_global_node", None)
    return Path(node.get_session_dir_path()) if node is not None else None


def private_pbt_random(seed: int) -> random.Random:
    """Give Ray's PBT a random generator of its own: ``ray.tune.schedulers.pbt.random``.

    PBT draws its exploit and explore decisions from the process-wide ``random`` module, which
    Ray's driver threads also draw from, a timing-dependent number of times: two synchronous runs
    with the same seed and identical losses chose different donors (measured). PBT's module looks
    ``random`` up as a module global, so pointing that name at a seeded ``random.Random`` makes
    the decisions depend on the seed and the losses alone."""
    from ray.tune.schedulers import pbt as ray_pbt

    rng = random.Random(f"pbt/{seed}")
    ray_pbt.random = rng  # type: ignore[attr-defined]
    return rng


def tune_state_saved(experiment_dir: str | Path) -> bool:
    """Whether ``Tuner.restore`` would find a run to continue in ``experiment_dir``: the Tuner's
    pickle *and* at least one saved experiment state (``experiment_state-<session>.json``, found by
    Ray's private ``experiment_state._find_newest_experiment_checkpoint``).

    The public ``Tuner.can_restore`` looks only for the pickle, which ``Tuner(...)`` writes before
    ``fit`` has saved any state. Restoring such a folder fails inside the controller ("Failed to
    restore the run state"), which then runs with the pickled searcher and scheduler as if new but
    finished: measured, a resumed PBT run started 1 trial of 12 and stopped, again on every resume."""
    from ray.tune import Tuner
    from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint

    path = Path(experiment_dir)
    return path.is_dir() and Tuner.can_restore(str(path)) and _find_newest_experiment_checkpoint(str(path)) is not None
