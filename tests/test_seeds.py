"""What a comparison may claim from its seeds: paired exact tests, their arithmetic, Holm for the
exploratory pairs, intervals that say what they are, ranks and Friedman's test."""

from __future__ import annotations

import math

import pytest
from recordkit import Run
from recordkit import row as _row

from harness.reporting.analysis import summarize
from harness.reporting.report import comparison_table, pairwise_table, ranking_markdown
from harness.reporting.seeds import (
    aggregate,
    anytime_ranks,
    estimate,
    holm,
    pairwise,
    paired_p,
    ranking,
    seeds_to_decide,
    smallest_p,
)

pytestmark = pytest.mark.unit


def _runs(strategy: str, losses: list[float], walls: list[float] | None = None, slots: int = 4) -> list:
    """One run summary per seed (seed = position), each a single 3-iteration trial ending at ``loss``."""
    out = []
    for seed, loss in enumerate(losses):
        wall = (walls or [30.0] * len(losses))[seed]
        rows = [_row(i, wall * i / 3, wall / 3, loss + (3 - i) * 0.1) for i in (1, 2, 3)]
        run = Run(strategy, seed=seed, iterations=3)
        run.trial("t", rows, "TERMINATED")
        out.append(summarize(run.record(wall=wall, slots=slots)))
    return out


def _verdicts(runs: list) -> dict[tuple[str, str], object]:
    return {(t.a, t.b): t for t in pairwise(aggregate(runs))}


def test_an_exact_paired_test_cannot_decide_below_six_seeds():
    assert smallest_p(5) == 0.0625 and smallest_p(6) == 0.03125
    assert seeds_to_decide(0.05) == 6 and seeds_to_decide(0.01) == 8
    # the most extreme outcome there is: every seed favours one side
    assert paired_p([-1.0] * 5) == pytest.approx(0.0625)
    assert paired_p([-1.0] * 6) == pytest.approx(0.03125)
    assert paired_p([0.0, 0.0, -1, -1, -1, -1, -1, -1]) == pytest.approx(0.03125)  # ties decide nothing
    assert paired_p([1.0, -1.0, 2.0, -2.0]) == 1.0


def test_two_seeds_give_no_verdict_and_a_range_labelled_as_a_range():
    runs = _runs("manual", [2.0, 2.2], slots=1) + _runs("pbt", [1.0, 1.1])
    (test,) = pairwise(aggregate(runs))
    assert test.word() == "not distinguishable" and test.primary
    assert "cannot give p below 0.5" in test.verdict() and "6 is the least" in test.verdict()
    table = comparison_table(aggregate(runs)).markdown()
    assert "1.0500 (range 1.0000 to 1.1000)" in table and "95% CI 1." not in table
    assert "better" not in pairwise_table(aggregate(runs)).markdown().split("\n", 3)[3]


def test_six_of_six_seeds_flip_the_verdict_three_of_six_do_not():
    grid = [2.0, 2.1, 1.9, 2.05, 1.95, 2.0]
    everywhere = [v - 0.5 for v in grid]
    half = [v - 0.5 if i % 2 else v + 0.5 for i, v in enumerate(grid)]
    decided = _verdicts(_runs("manual", grid, slots=1) + _runs("pbt", everywhere))[("pbt", "manual")]
    assert decided.word() == "better" and decided.p == pytest.approx(2 / 64)  # told from PBT's side: primary
    assert decided.verdict().startswith("better (p = 0.0312 ≤ α = 0.05, 6 seeds)")
    undecided = _verdicts(_runs("manual", grid, slots=1) + _runs("pbt", half))[("pbt", "manual")]
    assert undecided.word() == "not distinguishable" and undecided.p > 0.05
    assert "p = 1 > α = 0.05" in undecided.verdict()


def test_the_primary_tests_are_pbt_against_each_baseline_and_the_rest_are_holm_adjusted():
    grid = [2.0, 2.1, 1.9, 2.05, 1.95, 2.0]
    runs = (_runs("manual", grid, slots=1) + _runs("fifo", [v + 0.01 for v in grid])
            + _runs("pbt", [v - 0.5 for v in grid]) + _runs("pb2", [v - 0.4 for v in grid]))
    tests = _verdicts(runs)
    assert tests[("pbt", "manual")].primary and tests[("pbt", "fifo")].primary
    assert not tests[("manual", "pb2")].primary and not tests[("pbt", "pb2")].primary
    exploratory = [t for t in tests.values() if not t.primary]
    assert [t.p_adjusted for t in exploratory] == holm([t.p for t in exploratory])
    # the same 6-of-6 effect is decided as a primary test, and not once four exploratory tests share α
    assert tests[("pbt", "manual")].word() == "better"
    assert tests[("manual", "pb2")].p == pytest.approx(2 / 64) and tests[("manual", "pb2")].word() == "not distinguishable"
    assert "α / 4 = 0.0125 (Holm, 4 tests) (8 is the least that can decide)" in tests[("manual", "pb2")].verdict()


def test_holm_is_step_down_and_monotone():
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([]) == []


def test_intervals_bootstrap_from_five_seeds_and_are_seeded():
    few, many = estimate([1.0, 2.0, 3.0, 4.0]), estimate([1.0, 2.0, 3.0, 4.0, 10.0], seed=1)
    assert (few.kind, few.low, few.high) == ("range", 1.0, 4.0)
    assert many.kind == "bootstrap" and many == estimate([1.0, 2.0, 3.0, 4.0, 10.0], seed=1)
    # with an outlier among nine, the median's bootstrap interval is narrower than the range, around the median
    wide = estimate([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 100.0], seed=1)
    assert wide.kind == "bootstrap" and 1.0 < wide.low <= wide.median == 5.0 <= wide.high < 100.0
    assert estimate([2.0]).kind == "single" and math.isnan(estimate([]).median)


def test_friedman_and_the_critical_difference_need_three_strategies_and_six_seeds():
    grid = [2.0, 2.1, 1.9, 2.05, 1.95, 2.0]
    three = _runs("manual", grid, slots=1) + _runs("fifo", [v + 0.01 for v in grid]) + _runs("pbt", [v - 0.5 for v in grid])
    r = ranking(aggregate(three))
    assert r.tested and r.mean_ranks == (2.0, 3.0, 1.0) and r.friedman_p < 0.01
    assert r.critical_difference == pytest.approx(2.343 * math.sqrt(3 * 4 / 36), abs=1e-3)  # Demšar's q for k=3
    assert "Friedman test: χ² = 12.00" in ranking_markdown(aggregate(three))
    five_seeds = [s for s in three if s.seed < 5]
    assert not ranking(aggregate(five_seeds)).tested
    assert "needs 6 or more seeds" in ranking_markdown(aggregate(five_seeds))


def test_anytime_ranks_follow_the_fraction_of_the_budget_spent():
    # a reaches 1.0 after a quarter of its budget; b is better (0.5) only once it spent all of it
    curves = {("a", 0): [(1, 1.0), (4, 1.0)], ("b", 0): [(2, 2.0), (4, 0.5)]}
    ranks = anytime_ranks(curves, {("a", 0): 4, ("b", 0): 4}, fractions=(0.25, 0.5, 1.0))
    assert ranks == {"a": [1.0, 1.0, 2.0], "b": [2.0, 2.0, 1.0]}


def test_an_exploratory_verdict_follows_holms_p_even_where_alpha_over_m_is_out_of_reach():
    # two exploratory pairs: manual vs pb2 on 10 seeds (p = 2/1024), pb2 vs pbt on 6 (p = 2/64);
    # Holm's second step holds the larger p to α itself, although 2/64 > α/2
    runs = (_runs("manual", [0.5] * 10, slots=1) + _runs("pb2", [0.6] * 10) + _runs("pbt", [0.7] * 6))
    tests = {(t.a, t.b): t for t in pairwise(aggregate(runs))}
    late = tests[("pb2", "pbt")]
    assert late.family == 2 and late.p_adjusted == pytest.approx(2 / 64) and late.word() == "better"
    assert late.verdict().startswith("better (p = 0.0312 Holm-adjusted ≤ α = 0.05, 6 seeds)")


def test_a_large_pool_is_tested_by_a_seeded_monte_carlo_in_well_under_a_second():
    import time

    started = time.time()
    p = paired_p([-1.0] * 30)
    assert p < 1e-3 and p == paired_p([-1.0] * 30)
    assert time.time() - started < 30  # exact enumeration of 2^30 patterns would take hours
