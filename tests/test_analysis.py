"""Analysis functions on hand-made records with known answers."""

from __future__ import annotations

import math

import pytest

from harness.analysis import (
    compare, concurrency, distinct_configs, early_stop_savings, exploit_inheritance, merge, q1_decomposition,
    quiz_q1, quiz_q2, slot_seconds_to_reach, summarize, trial_intervals,
)
from harness.records import RunRecord

T0 = 1_000.0


def _row(it, end, dur, loss, lr=1e-4, bs=2, wd=0.0, donor="", start_it=0):
    return {"iteration": it, "received_at": T0 + end, "time_this_iter_s": dur, "eval_loss": loss, "lr": lr,
            "per_device_train_batch_size": bs, "weight_decay": wd, "exploited_from": donor,
            "segment_start_iteration": start_it}


def _record(strategy, trials, *, wall, iterations=3, slots=2) -> RunRecord:
    rec = RunRecord(strategy=strategy, preset="smoke", seed=0, config={"train": {"iterations": iterations}},
                    started_at=T0, finished_at=T0 + wall, slots=slots)
    for tid, rows, status in trials:
        rec.trial_started(tid, tid, {"lr": rows[0]["lr"], "per_device_train_batch_size": rows[0]["per_device_train_batch_size"],
                                     "weight_decay": rows[0]["weight_decay"]})
        rec.trials[-1].history = list(rows)
        rec.trial_ended(tid, status)
    return rec


def test_two_overlapping_trials():
    # a: busy 0-30, b: busy 10-40 (three 10 s iterations each), wall 40 s
    a = [_row(1, 10, 10, 3.0), _row(2, 20, 10, 2.0), _row(3, 30, 10, 1.0)]
    b = [_row(1, 20, 10, 3.5), _row(2, 30, 10, 2.5), _row(3, 40, 10, 1.5)]
    rec = _record("fifo", [("a", a, "TERMINATED"), ("b", b, "TERMINATED")], wall=40)
    s = summarize(rec)
    assert s.sum_runtime_s == 60 and s.wall_s == 40 and s.speedup == 1.5
    assert s.mean_concurrency == pytest.approx(1.5) and s.peak_concurrency == 2
    assert s.utilization == pytest.approx(60 / 80)
    assert s.trial_window_s == 40 and s.completed_all_iterations == 2
    assert s.best_eval_loss == 1.0 and s.best_final_eval_loss == 1.0
    d = q1_decomposition(s)
    assert d["saved_by_concurrency_s"] == 20 and d["manual_equivalent_s"] == 60


def test_a_single_trial_has_concurrency_one_and_no_savings():
    rows = [_row(1, 5, 5, 3.0), _row(2, 10, 5, 2.0), _row(3, 15, 5, 1.0)]
    rec = _record("manual", [("only", rows, "TERMINATED")], wall=15, slots=1)
    s = summarize(rec)
    assert (s.mean_concurrency, s.peak_concurrency, s.speedup, s.utilization) == (1.0, 1, 1.0, 1.0)
    verdicts, conclusion = quiz_q1(s)
    assert conclusion.startswith("none: trials ran one at a time")
    assert {v.option: v.holds for v in verdicts}["C"] == "no"


def test_an_errored_trial_counts_its_runtime_but_saves_nothing():
    ok = [_row(1, 10, 10, 2.0), _row(2, 20, 10, 1.5), _row(3, 30, 10, 1.0)]
    bad = [_row(1, 8, 8, 0.5)]  # errored after one iteration with a (meaningless) low loss
    rec = _record("asha", [("ok", ok, "TERMINATED"), ("bad", bad, "ERROR")], wall=30)
    s = summarize(rec)
    assert s.errored == 1 and s.sum_runtime_s == 38
    assert early_stop_savings(rec) == (0, 0.0)
    assert s.best_final_eval_loss == 1.0  # the errored trial is never the best


def test_early_stopped_trials_save_their_missing_iterations():
    full = [_row(1, 10, 10, 2.0), _row(2, 20, 10, 1.5), _row(3, 30, 10, 1.0)]
    stopped = [_row(1, 6, 6, 5.0)]
    rec = _record("asha", [("full", full, "TERMINATED"), ("stopped", stopped, "TERMINATED")], wall=30)
    assert early_stop_savings(rec) == (1, 12.0)  # 2 missing iterations x 6 s
    s = summarize(rec)
    verdicts, conclusion = quiz_q1(s)
    assert conclusion.startswith("C: concurrency saved")
    assert {v.option: v.holds for v in verdicts}["C"] == "yes"


def test_clock_skew_between_records_cannot_create_time():
    # b's stamps run 3 s ahead of the job window and its first iteration claims more time than elapsed
    a = [_row(1, 10, 10, 3.0)]
    b = [_row(1, 13, 20, 3.0)]
    rec = _record("fifo", [("a", a, "TERMINATED"), ("b", b, "TERMINATED")], wall=10)
    ivs = [trial_intervals(t, T0, T0 + 10) for t in rec.trials]
    assert ivs == [[(T0, T0 + 10)], [(T0, T0 + 10)]]
    mean, peak = concurrency(ivs, (T0, T0 + 10))
    assert peak == 2 and mean == pytest.approx(2.0)
    assert all(end >= start for trial in ivs for start, end in trial)


def test_merge_joins_touching_intervals():
    assert merge([(5, 6), (0, 2), (2, 3)]) == [(0, 3), (5, 6)]


def test_pbt_exploits_inherit_the_donors_training_and_count_mutations():
    donor = [_row(1, 10, 10, 2.0), _row(2, 20, 10, 1.5), _row(3, 30, 10, 1.0)]
    receiver = [_row(1, 12, 12, 4.0, lr=1e-5), _row(2, 20, 8, 1.4, lr=1.2e-4, donor="d", start_it=1),
                _row(3, 28, 8, 1.1, lr=1.2e-4)]
    rec = _record("pbt", [("d", donor, "TERMINATED"), ("r", receiver, "TERMINATED")], wall=30)
    assert exploit_inheritance(rec) == (1, 10.0)  # 1 iteration of the donor's, 10 s each
    assert distinct_configs(rec) == 3  # 1e-4, 1e-5 and the mutated 1.2e-4
    s = summarize(rec)
    verdicts, conclusion = quiz_q1(s)
    assert "only its first half" in conclusion and "inheriting 10 s" in conclusion


def test_slot_seconds_to_reach_a_target_in_arrival_order():
    a = [_row(1, 10, 10, 3.0), _row(2, 20, 10, 2.0)]
    b = [_row(1, 15, 15, 2.5), _row(2, 30, 15, 0.9)]
    rec = _record("fifo", [("a", a, "TERMINATED"), ("b", b, "TERMINATED")], wall=30, iterations=2)
    assert slot_seconds_to_reach(rec, 2.5) == 25  # a@10 (10 s) then b@15 (15 s) reaches 2.5
    assert slot_seconds_to_reach(rec, 0.95) == 50
    assert slot_seconds_to_reach(rec, 0.1) is None


def test_compare_and_q2_follow_the_numbers():
    manual = _record("manual", [(f"m{i}", [_row(1, 10 * (i + 1), 10, 2.0 - i * 0.1)], "TERMINATED") for i in range(4)],
                     wall=40, iterations=1, slots=1)
    pbt_rows = [[_row(1, 10, 10, 1.9, lr=1e-4 * (i + 1))] for i in range(4)]
    pbt = _record("pbt", [(f"p{i}", rows, "TERMINATED") for i, rows in enumerate(pbt_rows)], wall=12, iterations=1,
                  slots=4)
    summaries = compare({"manual": manual, "pbt": pbt})
    by = {s.strategy: s for s in summaries}
    assert by["manual"].slot_s_to_manual_best == 40 and by["pbt"].slot_s_to_manual_best is None
    q2 = {v.option: v.holds for v in quiz_q2(by["pbt"], by["manual"], [by["manual"]])}
    assert q2["A"] == "partly"  # shorter, but no trial stopped early
    assert q2["B"] == "yes" and q2["C"] == "no" and q2["D"] == "yes"
    assert not math.isnan(by["pbt"].utilization)
