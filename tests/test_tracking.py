"""The MLflow sink against a real (sqlite) store: what a resume does to the runs of trials it had
to discard, and one value per step for an iteration that ran twice."""

from __future__ import annotations

import pytest

from harness.config import resolve
from harness.contract.iteration import HParams, Iteration
from harness.contract.rundir import RunDir

pytestmark = pytest.mark.unit

HP = HParams(lr=1e-4, per_device_train_batch_size=1, weight_decay=0.0)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """One sqlite store for the module (creating one costs seconds); each test its own run."""
    return tmp_path_factory.mktemp("results")


def _run_dir(tmp_path):
    cfg = resolve("smoke", env={}, overrides={"results_dir": str(tmp_path)})
    run_dir = RunDir.create(tmp_path, "pbt-smoke", config=cfg.to_json(),
                            first_event=dict(strategy="pbt", preset="smoke", seed=0, config=cfg.to_dict(), budget=6))
    return cfg, run_dir


def test_a_resume_without_ray_tune_state_deletes_empty_children_and_marks_the_ones_that_trained(results):
    from mlflow.tracking import MlflowClient

    from harness.reporting.tracking import Tracker, tracking_uri

    cfg, run_dir = _run_dir(results)
    log = run_dir.event_log()
    with Tracker(cfg, run_dir, tags={}, events=log) as first:
        for trial_id in ("t_00000", "t_00001"):
            log.trial_started(trial_id, trial_id, HP)
            first.trial_started(trial_id, trial_id, HP)
        row = Iteration(iteration=1, eval_loss=5.0, lr=1e-4, time_this_iter_s=1.0)
        log.trial_result("t_00000", row)
        first.trial_result("t_00000", row)
    children = dict(first.children)
    previous = run_dir.replay()
    previous.apply(log.write("resumed", tune_state=False))
    previous.apply(log.write("trials_discarded", trial_ids=["t_00000", "t_00001"], iterations=1))
    with Tracker(cfg, run_dir, tags={}, events=log, previous=previous) as again:
        assert again.children == {}
    client = MlflowClient(tracking_uri=tracking_uri(results))
    trained, empty = client.get_run(children["t_00000"]), client.get_run(children["t_00001"])
    assert trained.info.status == "KILLED" and "discarded" in trained.data.tags
    assert empty.info.lifecycle_stage == "deleted"
    assert run_dir.replay().mlflow_run_id == first.parent_id  # one parent: the resume continued it


def test_an_iteration_run_twice_is_two_steps_with_one_value_each(results):
    from mlflow.tracking import MlflowClient

    from harness.reporting.tracking import Tracker, tracking_uri

    cfg, run_dir = _run_dir(results)
    with Tracker(cfg, run_dir, tags={}, events=run_dir.event_log()) as tracker:
        tracker.trial_started("t_00000", "a", HP)
        for iteration, loss in ((1, 5.0), (2, 4.0), (2, 3.5), (3, 3.0)):
            tracker.trial_result("t_00000", Iteration(iteration=iteration, eval_loss=loss, lr=1e-4))
    client = MlflowClient(tracking_uri=tracking_uri(results))
    run_id = tracker.children["t_00000"]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "iteration")] == [
        (1, 1.0), (2, 2.0), (3, 2.0), (4, 3.0)]
    assert [m.value for m in client.get_metric_history(run_id, "eval_loss")] == [5.0, 4.0, 3.5, 3.0]


def test_a_result_the_killed_driver_wrote_to_the_event_log_but_not_to_mlflow_is_sent_by_the_resume(results):
    from mlflow.tracking import MlflowClient

    from harness.reporting.tracking import Tracker, tracking_uri

    cfg, run_dir = _run_dir(results)
    log = run_dir.event_log()
    first = Tracker(cfg, run_dir, tags={}, events=log).__enter__()  # killed: never exits
    log.trial_started("t_00000", "a", HP)
    first.trial_started("t_00000", "a", HP)
    for iteration in (1, 2):
        row = Iteration(iteration=iteration, eval_loss=5.0 - iteration, lr=1e-4, received_at=1_000.0 + iteration)
        log.trial_result("t_00000", row)
        if iteration == 1:  # the kill came between the event log and MLflow for iteration 2
            first.trial_result("t_00000", row)
    previous = run_dir.replay()
    previous.apply(log.write("resumed"))
    with Tracker(cfg, run_dir, tags={}, events=log, previous=previous, resumed=True):
        pass
    client = MlflowClient(tracking_uri=tracking_uri(results))
    history = client.get_metric_history(first.children["t_00000"], "eval_loss")
    assert [(m.step, m.value) for m in history] == [(1, 4.0), (2, 3.0)]
    assert client.get_run(first.parent_id).data.tags["resumes"] == "1"


def test_a_child_the_killed_driver_made_but_never_wrote_down_is_continued_not_made_twice(results):
    from harness.reporting.tracking import Tracker, runs_of, tracking_uri

    cfg, run_dir = _run_dir(results)
    log = run_dir.event_log()
    first = Tracker(cfg, run_dir, tags={}, events=None).__enter__()  # its event log never learns the child's id
    log.write("mlflow_parent", run_id=first.parent_id)
    log.trial_started("t_00000", "a", HP)
    first.trial_started("t_00000", "a", HP)
    previous = run_dir.replay()
    assert previous.mlflow_children == {}
    previous.apply(log.write("resumed"))
    with Tracker(cfg, run_dir, tags={}, events=log, previous=previous, resumed=True) as again:
        again.trial_started("t_00000", "a", HP)
    children = [r for r in runs_of("hpo-smoke", tracking_uri(results))
                if r.data.tags.get("mlflow.parentRunId") == first.parent_id]
    assert [c.info.run_id for c in children] == [first.children["t_00000"]]
    assert run_dir.replay().mlflow_children == {"t_00000": first.children["t_00000"]}


def test_a_child_run_gets_the_trials_own_system_metrics_and_no_gpu_metric_without_a_gpu(results):
    from mlflow.tracking import MlflowClient

    from harness.reporting.tracking import Tracker, tracking_uri

    cfg, run_dir = _run_dir(results)
    with Tracker(cfg, run_dir, tags={}, events=run_dir.event_log()) as tracker:
        tracker.trial_started("t_00000", "a", HP)
        for iteration, cpu in ((1, 40.0), (2, 45.0)):
            tracker.trial_result("t_00000", Iteration(iteration=iteration, eval_loss=5.0, cpu_percent=cpu,
                                                      cpus_reserved=0.5, rss_peak_mib=600.0, gpus=0, monitor_s=0.01))
    client = MlflowClient(tracking_uri=tracking_uri(results))
    run_id = tracker.children["t_00000"]
    metrics = client.get_run(run_id).data.metrics
    assert sorted(k for k in metrics if k.startswith("system/")) == [
        "system/trial_cpu_cores", "system/trial_cpu_utilization_percentage", "system/trial_rss_megabytes"]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "system/trial_cpu_utilization_percentage")] \
        == [(1, 80.0), (2, 90.0)]
