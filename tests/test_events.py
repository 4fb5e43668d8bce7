"""The event log: a record a killed driver cannot lose, and the record derived from it."""

from __future__ import annotations

import json

import pytest

from harness.contract import events
from harness.contract.rundir import RunDir

pytestmark = pytest.mark.unit


def _log(path, *lines):
    log = RunDir(path).event_log()
    log.write("run_started", strategy="pbt", preset="smoke", seed=0, config={}, budget=6)
    for kind, data in lines:
        log.write(kind, **data)
    return log


def _row(iteration, t=1.0, **kw):
    return {"iteration": iteration, "eval_loss": 5.0 - iteration, "time_this_iter_s": t, **kw}


def test_a_run_is_rebuilt_from_its_events_and_a_torn_last_line_is_skipped(tmp_path):
    log = _log(tmp_path,
               ("mlflow_parent", {"run_id": "p1"}),
               ("trial_started", {"trial_id": "t_00000", "name": "a", "config": {"lr": 1e-4}}),
               ("trial_result", {"trial_id": "t_00000", "row": _row(1)}),
               ("trial_retried", {"trial_id": "t_00000", "error": "boom"}),
               ("trial_result", {"trial_id": "t_00000", "row": _row(2)}),
               ("trial_ended", {"trial_id": "t_00000", "status": "TERMINATED"}))
    with open(log.path, "a") as fh:
        fh.write('{"event": "trial_res')  # the event in flight when the driver was killed
    record = RunDir(tmp_path).replay()
    assert record.mlflow_run_id == "p1"
    (trial,) = record.trials
    assert (trial.status, trial.retries, [r.iteration for r in trial.history]) == ("TERMINATED", 1, [1, 2])
    assert not events.complete(record)  # no run_finished yet: resumable


def test_iterations_reported_again_after_a_resume_replace_the_old_ones_and_count_as_redone(tmp_path):
    _log(tmp_path,
         ("trial_started", {"trial_id": "t_00000", "name": "a", "config": {}}),
         ("trial_result", {"trial_id": "t_00000", "row": _row(1)}),
         ("trial_result", {"trial_id": "t_00000", "row": _row(2, t=2.5)}),
         ("resumed", {}),
         ("trial_started", {"trial_id": "t_00000", "name": "a", "config": {}}),
         # iteration 2 was not checkpointed; PBT exploited at the restored barrier
         ("trial_result", {"trial_id": "t_00000", "row": _row(2, t=2.0, exploited_from="t_00001")}),
         ("trial_result", {"trial_id": "t_00000", "row": _row(3)}),
         ("trial_ended", {"trial_id": "t_00000", "status": "TERMINATED"}),
         ("run_finished", {"slots": 2, "stopped": ""}))
    record = RunDir(tmp_path).replay()
    (trial,) = record.trials
    assert [r.iteration for r in trial.history] == [1, 2, 3]
    assert trial.history[1].time_this_iter_s == 2.0 and trial.history[1].exploited_from == "t_00001"
    (resume,) = record.resumes
    assert (resume["redone_iterations"], resume["redone_s"]) == (1, 2.5)
    assert resume["down_s"] >= 0 and record.slots == 2 and events.complete(record)
    # the first iteration 2 is kept beside the history, and counted: 4 iterations trained, 7.5 trial-s
    assert [r.time_this_iter_s for r in trial.superseded] == [2.5]
    assert (record.iterations_run, record.rerun_iterations, trial.runtime_s) == (4, 1, 6.5)


def test_an_iteration_run_twice_keeps_both_rows_each_with_the_checkpoint_it_started_from(tmp_path):
    _log(tmp_path,
         ("trial_started", {"trial_id": "t_00000", "name": "a", "config": {}}),
         ("trial_result", {"trial_id": "t_00000", "row": _row(1, started_from="base")}),
         ("trial_result", {"trial_id": "t_00000", "row": _row(2, started_from="t_00000@1")}),
         # an exploit that restored the donor's iteration 1: iteration 2 again, from another checkpoint
         ("trial_result", {"trial_id": "t_00000", "row": _row(2, exploited_from="t_00001", started_from="t_00001@1",
                                                              segment_start_iteration=1)}),
         ("trial_result", {"trial_id": "t_00000", "row": _row(3, started_from="t_00000@2")}))
    record = RunDir(tmp_path).replay()
    (trial,) = record.trials
    assert [(r.iteration, r.started_from) for r in trial.history] == [(1, "base"), (2, "t_00001@1"), (3, "t_00000@2")]
    assert [(r.iteration, r.started_from) for r in trial.superseded] == [(2, "t_00000@1")]
    assert (record.iterations_run, record.rerun_iterations, record.iterations_done) == (4, 1, 3)
    assert record.resumes == []  # not a fault: nothing counts as redone after a resume
    again = json.loads(RunDir(tmp_path).save_record(record).read_text())["trials"][0]["superseded"]
    assert [(r["iteration"], r["started_from"]) for r in again] == [(2, "t_00000@1")]


def test_a_resume_without_ray_tune_state_discards_the_trials_it_knew_and_counts_their_work(tmp_path):
    _log(tmp_path,
         ("trial_started", {"trial_id": "t_00000", "name": "a", "config": {}}),
         ("trial_started", {"trial_id": "t_00001", "name": "b", "config": {}}),
         ("trial_result", {"trial_id": "t_00000", "row": _row(1, t=3.0)}),
         ("resumed", {"tune_state": False}),
         ("trials_discarded", {"trial_ids": ["t_00000", "t_00001"], "iterations": 1}),
         ("trial_started", {"trial_id": "u_00000", "name": "a", "config": {}}),
         ("trial_result", {"trial_id": "u_00000", "row": _row(1)}))
    record = RunDir(tmp_path).replay()
    assert [t.trial_id for t in record.trials] == ["u_00000"]
    assert [t.trial_id for t in record.discarded] == ["t_00000", "t_00001"]
    assert (record.iterations_run, record.rerun_iterations) == (2, 1)
    assert (record.resumes[0]["redone_iterations"], record.resumes[0]["redone_s"]) == (1, 3.0)


def test_a_line_cut_off_by_a_kill_spoils_only_itself_not_the_next_drivers_first_event(tmp_path):
    log = _log(tmp_path, ("trial_started", {"trial_id": "t_00000", "name": "a", "config": {}}))
    with open(log.path, "a") as fh:
        fh.write('{"event": "trial_result", "trial_id": "t_0')  # the driver died writing this
    log.write("resumed", pid=1)
    assert [e["event"] for e in events.read(log.path)] == ["run_started", "trial_started", "resumed"]
    assert len(RunDir(tmp_path).replay().resumes) == 1


def test_the_record_saved_from_events_loads_back(tmp_path):
    _log(tmp_path, ("run_finished", {"slots": 1, "stopped": "SIGUSR1 (a time limit)"}))
    run_dir = RunDir(tmp_path)
    record = run_dir.replay()
    run_dir.save_record(record)
    again = run_dir.record()
    assert again.stopped == "SIGUSR1 (a time limit)" and again.resumes == [] and again.budget_trial_iterations == 6
    assert json.loads(run_dir.record_file.read_text())["stopped"] == "SIGUSR1 (a time limit)"
    assert not events.complete(again)  # stopped: resumable


def test_a_record_folded_event_by_event_equals_the_replay_of_the_log(tmp_path):
    log = _log(tmp_path, ("trial_started", {"trial_id": "t_00000", "name": "a", "config": {}}))
    held = RunDir(tmp_path).replay()
    held.apply(log.write("trial_result", trial_id="t_00000", row=_row(1)))
    held.apply(log.write("run_finished", slots=1, stopped=""))
    assert held.to_dict() == RunDir(tmp_path).replay().to_dict()


def test_a_log_without_its_start_is_refused(tmp_path):
    RunDir(tmp_path).event_log().write("trial_started", trial_id="x", name="x", config={})
    with pytest.raises(ValueError, match="does not begin with run_started"):
        RunDir(tmp_path).replay()
