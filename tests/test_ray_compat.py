"""One fast test per private Ray API the harness relies on (harness/strategies/ray_compat.py): no
Ray cluster, no trial. When a Ray upgrade renames or reshapes one of them, its test fails here in
seconds instead of a run misbehaving minutes into an integration test."""

from __future__ import annotations

import inspect
import random
from types import SimpleNamespace

import pytest

from harness.strategies import ray_compat

pytestmark = pytest.mark.unit


def test_ray_init_still_takes_the_node_ip_keyword():
    import ray._private.worker

    (key,) = ray_compat.init_kwargs("127.0.0.2")
    # ray.init (defined in ray._private.worker) takes it from **kwargs, and raises on one it does not read
    assert f'kwargs.pop("{key}"' in inspect.getsource(ray._private.worker.init)


def test_the_variant_generator_tracks_its_live_trials():
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    def fn(config):  # never runs: the generator only makes the trial objects
        pass

    search = BasicVariantGenerator()
    search.add_configurations({"exp": {"run": fn, "config": {"lr": tune.grid_search([1, 2])}, "num_samples": 1}})
    first, second = search.next_trial(), search.next_trial()
    assert ray_compat.live_trials(search) == {first.trial_id, second.trial_id}
    search.on_trial_complete(first.trial_id)
    assert ray_compat.live_trials(search) == {second.trial_id}


def test_the_actor_cache_limit_is_reached_through_the_schedulers_wrapper():
    from ray.tune.execution.tune_controller import TrialRunnerWrapper, TuneController
    from ray.tune.utils.object_cache import _ObjectCache

    assert "self._actor_cache = _ObjectCache(" in inspect.getsource(TuneController.__init__)
    controller = SimpleNamespace(_actor_cache=_ObjectCache(may_keep_one=True))
    wrapper = TrialRunnerWrapper(controller, trial_executor=None)  # what a scheduler is handed
    ray_compat.raise_actor_cache_limit(wrapper, "bundle-shape", by=4)
    assert controller._actor_cache.total_max_objects == 4


class _Trial:
    """What PBT's per-trial state reads of a trial (hashable, as Ray's Trial is)."""

    def __init__(self, tag: str):
        self.experiment_tag = tag


def test_synchronous_pbt_keeps_its_barrier_where_the_harness_moves_it():
    from ray.tune.schedulers import PopulationBasedTraining
    from ray.tune.schedulers.pbt import _PBTTrialState

    pbt = PopulationBasedTraining(time_attr="training_iteration", metric="eval_loss", mode="min",
                                  perturbation_interval=1, hyperparam_mutations={"lr": [1e-4, 2e-4]}, synch=True)
    barrier = ray_compat.SyncBarrier(pbt)
    assert barrier.synchronous and barrier.interval == 1 and barrier.next_sync >= 0
    trials = [_Trial(f"t{i}") for i in range(2)]
    for t, time in zip(trials, (3, 2)):
        pbt._trial_state[t] = _PBTTrialState(t)
        pbt._trial_state[t].last_train_time = time
    assert barrier.last_train_time(trials[1]) == 2 and barrier.last_train_time(_Trial("unknown")) is None
    barrier.move_to(trials)
    assert pbt._next_perturbation_sync == 4
    # and PBT's own scheduling still decides on that barrier
    assert "_next_perturbation_sync" in inspect.getsource(PopulationBasedTraining.choose_trial_to_run)


def test_asynchronous_pbt_has_no_barrier_to_move():
    from ray.tune.schedulers import PopulationBasedTraining

    pbt = PopulationBasedTraining(time_attr="training_iteration", metric="eval_loss", mode="min",
                                  perturbation_interval=1, hyperparam_mutations={"lr": [1e-4]}, synch=False)
    assert not ray_compat.SyncBarrier(pbt).synchronous


def test_the_session_folder_comes_from_the_global_node():
    import ray._private.node
    import ray._private.worker

    assert hasattr(ray._private.worker, "_global_node")
    assert callable(ray._private.node.Node.get_session_dir_path)
    if not ray.is_initialized():
        assert ray_compat.session_dir() is None


def test_pbt_decides_with_the_generator_the_harness_gives_it():
    from ray.tune.schedulers import pbt as ray_pbt

    mutations = {"lr": [1e-5, 2e-5, 5e-5, 1e-4, 2e-4], "weight_decay": [0.0, 0.01]}

    def explored(seed: int) -> list:
        rng = ray_compat.private_pbt_random(seed)
        assert ray_pbt.random is rng
        random.seed(12345 + seed)  # the process-wide generator must not matter
        return [ray_pbt._explore({"lr": 1e-4, "weight_decay": 0.0}, mutations, 1.0, (1.2, 0.8), None)[0]
                for _ in range(20)]

    assert explored(0) == explored(0)
    assert explored(0) != explored(1)


def test_a_tuner_pickle_without_a_saved_experiment_state_is_not_restorable(tmp_path):
    from ray.tune import Tuner
    from ray.tune.execution.tune_controller import TuneController

    experiment = tmp_path / "ray"
    experiment.mkdir()
    (experiment / "tuner.pkl").write_bytes(b"")  # what Tuner(...) writes before fit saves anything
    assert Tuner.can_restore(str(experiment)) and not ray_compat.tune_state_saved(experiment)
    (experiment / TuneController.CKPT_FILE_TMPL.format("2026-12-02_07-10-44")).write_text("{}")
    assert ray_compat.tune_state_saved(experiment)
    assert not ray_compat.tune_state_saved(tmp_path / "missing")
