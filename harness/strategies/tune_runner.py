"""What every Ray Tune strategy shares: Ray start-up, trial resources, the budget-aware searcher
and stopper, the Tuner, and continuing it after a lost node or a resume."""

from __future__ import annotations

import logging
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

from ray.tune import Stopper
from ray.tune.search import BasicVariantGenerator

from harness import strategies
from harness.cluster import stop, watchdog
from harness.cluster.capacity import Node, TrialShape, trials_per_node
from harness.config import ExperimentConfig
from harness.contract.record import Status
from harness.strategies import StrategyContext, StrategyResult, ray_compat
from harness.strategies.tune_adapter import SinkCallback, trainable

log = logging.getLogger(__name__)

#: A custom Ray resource, one unit per trial, that caps a local run at ``budget.slots`` trials.
SLOT_RESOURCE = "harness_trial_slot"


def init_ray(address: str, slots: int = 0, verbose: bool = False) -> None:
    """Start (``address="local"``) or join Ray.

    ``local`` always starts a private instance: a bare ``ray.init()`` would join whatever
    ``RAY_ADDRESS`` or an earlier session on this machine points to. Ray 2.60 turns token auth on
    by itself once ``~/.ray/auth_token`` exists, so the mode is always set explicitly. A local
    instance offers ``slots`` units of :data:`SLOT_RESOURCE` when the budget caps the slots.
    """
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled" if address == "local" else "token")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # Ray's newer console output prints an experiment box and a TensorBoard hint even when silent;
    # the classic reporter at verbose=0 prints nothing (the harness logs a line per iteration)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1" if verbose else "0")
    if ray.is_initialized():  # an earlier run of this driver (harness bench) started it
        if address != "local" or int(ray.cluster_resources().get(SLOT_RESOURCE, 0)) == slots:
            return
        log.info("restarting the local Ray: %d slot(s) wanted, it offers %d", slots,
                 int(ray.cluster_resources().get(SLOT_RESOURCE, 0)))
        ray.shutdown()
    # Trial processes' output (per-checkpoint lines, library warnings) goes to Ray's log files, which
    # the run folder receives at the end (copy_ray_logs); --verbose streams it to the console too.
    kwargs: dict[str, Any] = dict(address=address, include_dashboard=False, logging_level=logging.WARNING,
                                  log_to_driver=verbose)
    if os.environ.get("RAY_NODE_IP"):  # the head job's address (127.0.0.1 would not match the raylet)
        kwargs.update(ray_compat.init_kwargs(os.environ["RAY_NODE_IP"]))
    if address == "local" and slots:
        kwargs["resources"] = {SLOT_RESOURCE: slots}
    if not verbose:
        _TrialFailuresToRunLog.install()
    if address == "local":  # an embedded Ray dies with its driver, even one killed with SIGKILL
        watchdog.guard()  # `python -m harness run` has one from its first line; a driver in a library call gets it here
    ray.init(**kwargs)
    stop.reclaim()  # ray.init replaced the SIGTERM handler


class _TrialFailuresToRunLog(logging.Filter):
    """Ray Tune logs a failed trial task on the console with the whole traceback of the worker's
    death, although it then retries the trial. The harness says it in one line there ("c02 failed
    (...); restarting it from its last checkpoint"), and the traceback goes to the run's log
    (harness.log) only."""

    LOGGER = "ray.tune.execution.tune_controller"

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith("Trial task failed"):
            return True
        logging.getLogger("tune.trial_failures").info(record.getMessage(), exc_info=record.exc_info)
        return False

    @classmethod
    def install(cls) -> None:
        logger = logging.getLogger(cls.LOGGER)
        if not any(isinstance(f, cls) for f in logger.filters):
            logger.addFilter(cls())


def trial_resources(cfg: ExperimentConfig, capped: bool) -> Any:
    """One bundle of W*Cw CPUs and W*Gw GPUs: all of a trial's ranks land on one node."""
    from ray import tune

    r = cfg.resources
    bundle = {"CPU": r.workers_per_trial * r.cpus_per_worker}
    if r.gpus_per_worker:
        bundle["GPU"] = r.workers_per_trial * r.gpus_per_worker
    if capped:
        bundle[SLOT_RESOURCE] = 1
    return tune.PlacementGroupFactory([bundle], strategy="STRICT_PACK")


def seed_everything(seed: int) -> None:
    """Ray's sampling and PBT's explore step draw from ``random`` and numpy's global state."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)


def cluster_slots(cfg: ExperimentConfig) -> int:
    """Trials Ray can run at once on the nodes it has now (the seed's capacity check per node)."""
    import ray

    r = cfg.resources
    shape = TrialShape(r.workers_per_trial, r.cpus_per_worker, r.gpus_per_worker)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    per_node = {n.get("NodeManagerAddress", "?"): trials_per_node(
        Node(cpus=n["Resources"].get("CPU", 0), gpus=n["Resources"].get("GPU", 0)), shape) for n in nodes}
    slots = sum(per_node.values())
    capped = ray.cluster_resources().get(SLOT_RESOURCE)
    if capped:
        slots = min(slots, int(capped))
    # in the run's log: which nodes Ray offered, and how many trials each holds at once
    log.info("Ray offers %d node(s): %s; %d slot(s)", len(nodes),
             ", ".join(f"{ip} holds {n}" for ip, n in sorted(per_node.items())), max(1, slots))
    return max(1, slots)


class BudgetedSearch(BasicVariantGenerator):
    """Ray's variant generator, with two changes that the budget and the overhead need.

    * It stays open until every trial it generated has completed. Ray 2.60 keeps a finished or
      paused trial's actor for reuse only while the search is not finished
      (``TuneController._maybe_cache_trial_actor``: "search is over and no more trials are
      staged"), so once a plain generator had produced all its trials, later trials of a FIFO
      grid or an ASHA run started fresh processes (imports and model build again).
    * With ``until_spent`` (ASHA) it keeps at most ``slots`` trials alive and generates the next
      one only while the iterations reported so far, plus one in flight per live trial, leave
      room for a new trial's guaranteed iterations (the grace period): promotions spend the
      budget before new samples do, as in ASHA's own accounting.
    """

    def __init__(self, *, budget: int, guaranteed: int, until_spent: bool, slots: int, random_state: int):
        super().__init__(random_state=random_state, max_concurrent=slots if until_spent else 0)
        self.budget, self.guaranteed, self.until_spent = budget, guaranteed, until_spent
        self.spent = 0  # counted by BudgetStopper: Ray skips on_trial_result for a result that stops its trial

    def in_flight(self) -> int:
        return len(ray_compat.live_trials(self))

    def next_trial(self) -> Any:
        if self.until_spent and self.spent + self.in_flight() + self.guaranteed > self.budget:
            self.set_finished()
            return None
        return super().next_trial()

    def is_finished(self) -> bool:
        return super().is_finished() and not ray_compat.live_trials(self)


class BudgetStopper(Stopper):
    """Stops a trial at its planned last iteration (on the trial's own counter, so a scheduler
    never acts on a finished trial: PBT would "exploit" it into a no-op restart). With
    ``until_spent`` it also stops a trial once the iterations reported, plus the one each other
    live trial still has in flight, reach the budget, so an ASHA run ends within a trial-iteration
    of its budget instead of letting every promoted trial run to the end."""

    def __init__(self, iterations: int, search: BudgetedSearch):
        self.iterations, self.search = iterations, search

    def __call__(self, trial_id: str, result: dict) -> bool:
        s = self.search
        s.spent += 1  # every result passes here (Ray asks the stopper first)
        if int(result.get("iteration", 0)) >= self.iterations:
            return True
        return s.until_spent and s.spent + s.in_flight() - 1 >= s.budget

    def stop_all(self) -> bool:
        return False


class KeepActorsWarm:
    """Scheduler mixin for synchronous population-based training: keep one trial actor per slot
    cached across each round's barrier.

    At the barrier every trial pauses while no trial is pending, so Ray 2.60 caches at most one
    paused trial's actor and stops the others ("no pending trials requiring its resources"); the
    next round then restarts trials one per controller step on the few cached actors while fresh
    processes are still importing torch (measured: 2 of 4 slots busy from the second round on).
    Raising the controller's actor-cache limit by the number of slots once keeps every slot's
    process warm (:func:`ray_compat.raise_actor_cache_limit`).
    """

    warm_slots = 0

    def choose_trial_to_run(self, tune_controller: Any) -> Any:
        trials = tune_controller.get_trials()
        if self.warm_slots and trials and not getattr(self, "_warmed", False):
            ray_compat.raise_actor_cache_limit(tune_controller, trials[0].placement_group_factory, self.warm_slots)
            self._warmed = True
        chosen = super().choose_trial_to_run(tune_controller)  # type: ignore[misc]
        if chosen is None and self._restored_barrier_is_stuck(tune_controller):
            chosen = super().choose_trial_to_run(tune_controller)  # type: ignore[misc]
        return chosen

    def _restored_barrier_is_stuck(self, tune_controller: Any) -> bool:
        """After ``Tuner.restore`` the scheduler is the one pickled when the Tuner was created, so
        synchronous PBT's next barrier (``_next_perturbation_sync``) starts again at the first one
        while the restored trials are further on. After their first barrier together it is set to
        their time, not one interval past it, and ``choose_trial_to_run`` then finds no trial
        behind it: every trial stays paused and the controller spins (measured: a resumed run
        stopped at 8 of 12 iterations). Move the barrier one interval on when every trial waits
        at or past it and none runs."""
        barrier = ray_compat.SyncBarrier(self)
        if not barrier.synchronous:
            return False
        trials = tune_controller.get_trials()
        waiting = [t for t in trials if t.status in ("PENDING", "PAUSED")]
        if not waiting or any(t.status == "RUNNING" for t in trials):
            return False
        times = [barrier.last_train_time(t) for t in waiting]
        if any(time is None or time < barrier.next_sync for time in times):
            return False
        barrier.move_to(waiting)
        return True


def run_tuner(ctx: StrategyContext, *, scheduler: Any, param_space: dict[str, Any]) -> StrategyResult:
    """Run the shared trial under ``scheduler`` (None: FIFO) and report to the context's sinks. The
    registry entry says how many trials the budget buys (a grid's ``param_space`` decides its own)."""
    from ray import tune

    cfg = ctx.cfg
    spec = strategies.spec(cfg.strategy)
    num_samples = 1 if spec.trials == strategies.TRIALS_GRID else spec.planned_trials(cfg)
    until_spent = spec.trials == strategies.TRIALS_UNTIL_SPENT
    local = ctx.ray_address == "local"
    if stop.requested():  # asked to stop before Ray started: start nothing (the folder stays resumable)
        log.warning("%s during start-up: nothing started; continue with --resume", stop.requested())
        return StrategyResult(slots=0)
    began = time.time()
    init_ray(ctx.ray_address, cfg.budget.slots if local else 0, ctx.verbose)
    seed_everything(cfg.seed)
    budget = cfg.budget_iterations()
    fn = tune.with_parameters(trainable, cfg=cfg, model_path=ctx.model_path, data_path=ctx.data_path,
                              cache_dir=ctx.cache_dir)
    slots = cluster_slots(cfg)
    if isinstance(scheduler, KeepActorsWarm):
        scheduler.warm_slots = slots
    search = BudgetedSearch(budget=budget, guaranteed=cfg.tune.asha_grace_period if until_spent else 1,
                            until_spent=until_spent, slots=slots, random_state=cfg.seed)
    experiment = ctx.run_dir.experiment_dir
    SinkCallback.live[str(experiment)] = ctx.sinks
    # the experiment state (what --resume restores) at most 1 s old, not Ray's "auto" (up to minutes)
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    resources = tune.with_resources(fn, trial_resources(cfg, capped=local and bool(cfg.budget.slots)))
    if stop.requested():  # asked to stop while Ray was starting: no Tuner (it writes its pickle), no trial
        log.warning("%s during start-up: no trial started; continue with --resume", stop.requested())
        copy_ray_logs(ctx.run_dir.ray_logs, began)
        return StrategyResult(slots=slots)
    if ctx.restore:  # runner.resume checked that Ray Tune saved a state to restore
        # Ray Tune's own resume: finished trials stay finished, the others continue from their last
        # checkpoint (errored ones too); the scheduler, searcher and callbacks come from its saved state
        tuner = tune.Tuner.restore(str(experiment), trainable=resources, resume_unfinished=True, resume_errored=True)
    else:
        tuner = _new_tuner(ctx, resources, scheduler, search, param_space, num_samples)
    try:
        results = tuner.fit()
        stop.reclaim()
        for _ in range(cfg.tune.max_failures):
            lost = [r.error for r in results if r.error is not None]
            if not lost or not all(_node_lost(e) for e in lost) or _interrupted(ctx):
                break
            # Ray retries a trial whose node went away, but may place the retry on that node while it is
            # still going down; a trial that fails before it runs is not retried (measured: one of two
            # trials of a cancelled worker job ended ERROR). Continue them from their checkpoints.
            log.warning("%d trial(s) failed because their node went away; continuing them from their checkpoints",
                        len(lost))
            tuner = tune.Tuner.restore(str(experiment), trainable=resources, resume_unfinished=True,
                                       resume_errored=True)
            results = tuner.fit()
            stop.reclaim()
    finally:
        SinkCallback.live.pop(str(experiment), None)  # a driver that runs more (harness bench) holds no stale sinks
        copy_ray_logs(ctx.run_dir.ray_logs, began)
    return StrategyResult(slots=slots)


def _interrupted(ctx: StrategyContext) -> bool:
    """Did ``fit`` return because it was asked to stop (SIGUSR1, to the harness or to Ray Tune's own
    handler), not because its trials ended? Then trials lost with their node wait for --resume: on
    SLURM the worker jobs reach the same time limit. An interrupted fit leaves trials that started
    and neither finished nor failed."""
    return bool(stop.requested()) or any(t.status == Status.RUNNING for t in ctx.run_dir.replay().open_trials)


#: How Ray reports a trial whose node died or was stopped under it.
NODE_LOST = ("node was terminated", "node has died", "NodeDiedError", "node died", "because its node")


def _node_lost(error: BaseException) -> bool:
    text = str(error)
    return any(marker in text for marker in NODE_LOST)


def _new_tuner(ctx: StrategyContext, resources: Any, scheduler: Any, search: BudgetedSearch,
               param_space: dict[str, Any], num_samples: int) -> Any:
    from ray import tune

    cfg = ctx.cfg
    return tune.Tuner(
        resources,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            scheduler=scheduler,
            search_alg=search,
            num_samples=num_samples,
            reuse_actors=cfg.tune.reuse_actors,
        ),
        run_config=tune.RunConfig(
            name=ctx.run_dir.experiment_name,
            storage_path=str(ctx.run_dir.path),  # absolute: a relative one fails with ArrowInvalid
            checkpoint_config=tune.CheckpointConfig(num_to_keep=cfg.tune.num_to_keep),
            failure_config=tune.FailureConfig(max_failures=cfg.tune.max_failures),
            stop=BudgetStopper(cfg.train.iterations, search),
            callbacks=[SinkCallback(str(ctx.run_dir.experiment_dir))],
            verbose=1 if ctx.verbose else 0,  # the harness prints one line per iteration instead
        ),
    )


def copy_ray_logs(dest: Path, since: float = 0.0) -> None:
    """The trial processes' stdout/stderr (Ray's worker-*.out/err of this session) into ``dest``.

    Ray keeps them under its session folder in /tmp, which the next ``ray.init`` on the machine
    moves on from; the run folder is where a user looks. Only this node's files: on a cluster the
    other nodes' stay in their own session folders. Only files written since ``since``: one Ray
    session may serve several runs.
    """
    session = ray_compat.session_dir()
    if session is None:
        return
    logs = session / "logs"
    files = [p for p in logs.glob("worker-*") if p.suffix in (".out", ".err") and p.stat().st_size
             and p.stat().st_mtime >= since]  # a session that ran earlier runs (harness bench) holds theirs too
    if files:
        dest.mkdir(parents=True, exist_ok=True)
        for path in files:
            shutil.copy2(path, dest / path.name)
