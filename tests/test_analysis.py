"""Analysis and quiz rules on hand-made records with known answers."""

from __future__ import annotations

import pytest
from recordkit import T0, Run
from recordkit import row as _row

from harness.reporting import quiz
from harness.reporting.analysis import (
    anytime,
    concurrency,
    early_stopping,
    lineage_waste,
    merge,
    segment_iteration_times,
    summarize,
    trial_intervals,
)
from harness.reporting.report import comparison_rows
from harness.reporting.seeds import aggregate, pairwise

pytestmark = pytest.mark.unit


def _record(strategy, trials, *, wall, iterations=3, slots=2, seed=0, budget=0):
    run = Run(strategy, seed=seed, iterations=iterations, budget=budget)
    for tid, rows, status in trials:
        run.trial(tid, rows, status)
    return run.record(wall=wall, slots=slots)


def test_two_overlapping_trials():
    # a: busy 0-30, b: busy 10-40 (three 10 s iterations each, 8 s of them training), wall 50 s
    a = [_row(1, 10, 10, 3.0, train=8), _row(2, 20, 10, 2.0, train=8), _row(3, 30, 10, 1.0, train=8)]
    b = [_row(1, 20, 10, 3.5, train=8), _row(2, 30, 10, 2.5, train=8), _row(3, 40, 10, 1.5, train=8)]
    s = summarize(_record("fifo", [("a", a, "TERMINATED"), ("b", b, "TERMINATED")], wall=50))
    assert (s.sum_runtime_s, s.wall_s, s.trial_window_s, s.setup_s, s.teardown_s) == (60, 50, 40, 0, 10)
    assert s.mean_concurrency == pytest.approx(1.5) and s.peak_concurrency == 2
    assert s.slot_utilization == pytest.approx(60 / 80) and s.wall_utilization == pytest.approx(60 / 100)
    assert s.pure_s == 48 and s.overhead_s == 12 and s.overhead_ratio == pytest.approx(50 / (48 / 2))
    assert s.iterations_run == 6 and s.completed_all_iterations == 2 and s.best_eval_loss == 1.0


def test_a_single_trial_runs_one_at_a_time_and_q1_says_so():
    rows = [_row(1, 5, 5, 3.0), _row(2, 10, 5, 2.0), _row(3, 15, 5, 1.0)]
    s = summarize(_record("manual", [("only", rows, "TERMINATED")], wall=15, slots=1))
    assert (s.mean_concurrency, s.peak_concurrency, s.slot_utilization) == (1.0, 1, 1.0)
    verdicts, conclusion = quiz.q1(aggregate([s])[0])
    assert conclusion.startswith("the job is not shorter than Σ")
    assert {v.option: v.holds for v in verdicts} == {"A": "no", "B": "no", "C": "no", "D": "no"}


def test_errored_trials_avoid_nothing_and_a_trial_without_result_counts_as_skipped():
    ok = [_row(1, 10, 10, 2.0), _row(2, 20, 10, 1.5), _row(3, 30, 10, 1.0)]
    bad = [_row(1, 8, 8, 0.5)]
    rec = _record("asha", [("ok", ok, "TERMINATED"), ("bad", bad, "ERROR"), ("never", [], "TERMINATED")], wall=30)
    s = summarize(rec)
    assert s.errored == 1 and s.sum_runtime_s == 38 and early_stopping(rec) == (0, 0, 0.0)
    verdicts, _ = quiz.q1(aggregate([s])[0])
    assert {v.option: v.holds for v in verdicts}["A"] == "yes"


def test_early_stopped_trials_avoid_their_missing_iterations():
    full = [_row(1, 10, 10, 2.0), _row(2, 20, 10, 1.5), _row(3, 30, 10, 1.0)]
    stopped = [_row(1, 6, 6, 5.0)]
    rec = _record("asha", [("full", full, "TERMINATED"), ("stopped", stopped, "TERMINATED")], wall=30)
    assert early_stopping(rec) == (1, 2, 12.0)  # 2 missing iterations x 6 s
    verdicts, conclusion = quiz.q1(aggregate([summarize(rec)])[0])
    assert {v.option: v.holds for v in verdicts}["C"] == "yes"
    assert "early stopping shrank Σ itself by 12.0 trial-s" in conclusion


def test_clock_skew_between_records_cannot_create_time():
    a = [_row(1, 10, 10, 3.0)]
    b = [_row(1, 13, 20, 3.0)]  # 3 s after the job's end, and longer than the job
    rec = _record("fifo", [("a", a, "TERMINATED"), ("b", b, "TERMINATED")], wall=10)
    ivs = [trial_intervals(t, T0, T0 + 10) for t in rec.trials]
    assert ivs == [[(T0, T0 + 10)], [(T0, T0 + 10)]]
    assert concurrency(ivs, (T0, T0 + 10)) == (pytest.approx(2.0), 2)


def test_merge_joins_touching_intervals():
    assert merge([(5, 6), (0, 2), (2, 3)]) == [(0, 3), (5, 6)]


def test_an_exploit_discards_the_receivers_own_iterations_as_waste():
    donor = [_row(1, 10, 10, 2.0), _row(2, 20, 10, 1.5), _row(3, 30, 10, 1.0)]
    receiver = [_row(1, 12, 12, 4.0, lr=1e-5), _row(2, 20, 8, 1.4, lr=1.2e-4, donor="d", start_it=1),
                _row(3, 28, 8, 1.1, lr=1.2e-4, start_it=1)]
    rec = _record("pbt", [("d", donor, "TERMINATED"), ("r", receiver, "TERMINATED")], wall=30)
    assert lineage_waste(rec) == (1, 12.0)  # r's first iteration lives in no final model
    s = summarize(rec)
    assert s.exploits == 1 and s.discarded_iterations == 1 and s.early_stop_avoided_s == 0
    assert s.distinct_configs == 3 and s.iterations_run == 6
    _, conclusion = quiz.q1(aggregate([s])[0])
    assert "waste, not of savings" in conclusion and "no trial was stopped early" in conclusion


def test_iterations_that_a_clone_carries_on_are_not_waste():
    # x trains 1; y clones x at 1 and carries on; then x is overwritten by z's checkpoint at 2
    x = [_row(1, 10, 10, 2.0), _row(2, 20, 10, 1.9), _row(3, 30, 10, 1.2, donor="z", start_it=2)]
    y = [_row(1, 10, 10, 3.0), _row(2, 21, 10, 1.8, donor="x", start_it=1), _row(3, 31, 10, 1.7, start_it=1)]
    z = [_row(1, 10, 10, 2.5), _row(2, 19, 9, 1.5), _row(3, 29, 10, 1.1)]
    rec = _record("pbt", [("x", x, "TERMINATED"), ("y", y, "TERMINATED"), ("z", z, "TERMINATED")], wall=31)
    # lost: y's own iteration 1 (overwritten by x's) and x's iteration 2 (x restarted from z's 2);
    # x's iteration 1 lives on in y
    assert lineage_waste(rec) == (2, 20.0)


def test_an_iteration_run_twice_counts_in_the_budget_the_time_and_the_waste():
    # b's iteration 2 at 20 s is lost (a fault); b trains iteration 2 again from its checkpoint at 1
    a = [_row(1, 10, 10, 2.0), _row(2, 20, 10, 1.5), _row(3, 30, 10, 1.0)]
    b = [_row(1, 10, 10, 2.2, started_from="b@0"), _row(2, 20, 10, 1.8, started_from="b@1"),
         _row(2, 31, 9, 1.7, started_from="b@1"), _row(3, 40, 9, 1.6, started_from="b@2")]
    rec = _record("fifo", [("a", a, "TERMINATED"), ("b", b, "TERMINATED")], wall=40)
    (trial_b,) = [t for t in rec.trials if t.trial_id == "b"]
    assert [r.iteration for r in trial_b.history] == [1, 2, 3] and len(trial_b.superseded) == 1
    s = summarize(rec)
    assert (s.iterations_run, s.rerun_iterations, s.sum_runtime_s) == (7, 1, 68.0)
    assert lineage_waste(rec) == (0, 0.0)  # the first iteration 2 is a rerun, counted as one, not as exploit waste
    (agg,) = aggregate([s])
    assert comparison_rows([agg])[0]["rerun_iterations"] == 1


def test_segments_start_where_a_trial_restarts():
    rows = [_row(1, 10, 9, 2.0), _row(2, 12, 2, 1.9), _row(3, 20, 4, 1.5, start_it=2)]
    rec = _record("pbt", [("a", rows, "TERMINATED")], wall=20)
    assert segment_iteration_times(rec) == ([9.0, 4.0], [2.0])
    assert summarize(rec).first_iteration_ratio == pytest.approx(6.5 / 2)


def test_anytime_curve_is_the_best_so_far_in_arrival_order():
    a = [_row(1, 10, 10, 3.0), _row(2, 20, 10, 2.0)]
    b = [_row(1, 15, 15, 2.5), _row(2, 30, 15, 2.2)]
    rec = _record("fifo", [("a", a, "TERMINATED"), ("b", b, "TERMINATED")], wall=30, iterations=2)
    assert anytime(rec) == [(10, 10, 3.0), (15, 25, 2.5), (20, 35, 2.0), (30, 50, 2.0)]


def _seeds(strategy, losses, walls, *, iters=12, slots=4, exploits=False):
    """One summary per seed: ``iters`` one-second iterations spread over ``wall`` seconds."""
    out = []
    for seed, (loss, wall) in enumerate(zip(losses, walls)):
        rows = [_row(i + 1, wall * (i + 1) / iters, 1.0, loss + (iters - i) * 0.01, train=0.8) for i in range(iters)]
        rows[3]["exploited_from"] = "t" if exploits else ""
        rec = _record(strategy, [("t", rows, "TERMINATED")], wall=wall, iterations=iters, slots=slots, seed=seed)
        out.append(summarize(rec))
    return out


def test_aggregate_ranks_comparable_budgets_and_marks_the_rest():
    runs = (_seeds("manual", [2.0, 2.1, 2.2], [40, 41, 42], slots=1) + _seeds("pbt", [1.0, 1.1, 1.2], [20, 21, 22])
            + _seeds("asha", [0.5, 0.5, 0.5], [10, 10, 10], iters=6))
    by = {a.strategy: a for a in aggregate(runs)}
    assert by["manual"].comparable and by["pbt"].comparable and not by["asha"].comparable
    assert by["pbt"].ranks == {0: 1, 1: 1, 2: 1} and by["manual"].ranks == {0: 2, 1: 2, 2: 2}
    assert by["asha"].ranks == {}
    assert by["pbt"].estimates["best_eval_loss"].median == pytest.approx(1.11)  # last rows: loss + 0.01
    (test,) = pairwise(list(by.values()))
    assert (test.a, test.b, test.word()) == ("pbt", "manual", "not distinguishable")  # 3 seeds cannot decide


def test_one_seed_never_separates_however_far_apart():
    runs = _seeds("manual", [5.0], [40]) + _seeds("pbt", [1.0], [10])
    (test,) = pairwise(aggregate(runs))
    assert test.verdict().startswith("not distinguishable with 1 seed:")
    by = {a.strategy: a for a in aggregate(runs)}
    q2 = {v.option: v.holds for v in quiz.q2(by["pbt"], by["manual"], list(by.values()))}
    assert q2["A"] == q2["B"] == "not distinguishable"


def test_q2_a_follows_the_paired_wall_times_and_flips_when_the_grid_is_ten_times_slower():
    pbt = _seeds("pbt", [1.0, 1.1, 1.0, 1.1, 1.0, 1.1], [20, 21, 22, 20, 21, 22], exploits=True)
    fast_grid = _seeds("manual", [1.2, 1.3] * 3, [12, 13, 12, 13, 12, 13], slots=1)
    slow_grid = _seeds("manual", [1.2, 1.3] * 3, [120, 130, 120, 130, 120, 130], slots=1)
    for grid, expected in ((fast_grid, "no"), (slow_grid, "partly")):
        by = {a.strategy: a for a in aggregate(pbt + grid)}
        q2 = {v.option: v for v in quiz.q2(by["pbt"], by["manual"], list(by.values()))}
        assert q2["A"].holds == expected and "p = 0.0312" in q2["A"].evidence
        assert q2["D"].holds == "yes" and q2["C"].holds == "not refuted"
    by = {a.strategy: a for a in aggregate(pbt[:2] + slow_grid[:2])}  # the same effect on two seeds: undecided
    assert quiz.q2(by["pbt"], by["manual"], list(by.values()))[0].holds == "not distinguishable"


def test_q2_c_is_refuted_by_any_seed_where_another_strategy_did_better():
    pbt = _seeds("pbt", [1.0, 1.5], [20, 21])
    grid = _seeds("manual", [1.2, 1.3], [40, 41], slots=1)
    by = {a.strategy: a for a in aggregate(pbt + grid)}
    c = next(v for v in quiz.q2(by["pbt"], by["manual"], list(by.values())) if v.option == "C")
    assert c.holds == "no" and "seed 1: manual 1.3100 vs 1.5100" in c.evidence


def test_q1_d_holds_only_when_more_trials_progress_than_slots():
    a = [_row(1, 10, 10, 3.0)]
    b = [_row(1, 10, 10, 3.0)]
    rec = _record("fifo", [("a", a, "TERMINATED"), ("b", b, "TERMINATED")], wall=10, iterations=1, slots=1)
    verdicts, _ = quiz.q1(aggregate([summarize(rec)])[0])
    assert {v.option: v.holds for v in verdicts}["D"] == "yes"
