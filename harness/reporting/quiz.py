"""The exercise's two questions, and the numeric rule behind each option's verdict.

Nothing here is a constant answer: every verdict is computed from the aggregated measurements
(:mod:`harness.reporting.analysis`) by the rule printed beside it, so other numbers give another verdict.
The exercise has no answer key and none is cited.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from harness.reporting.analysis import PARALLEL_THRESHOLD, UNDER_USED
from harness.reporting.seeds import Aggregate, PairedTest, is_primary, paired

Q1 = ("Eight PBT trials each take about 20 minutes, yet the whole job ends after about 25. Why is the job "
      "so much shorter than the sum of the trials' runtimes?")
Q1_OPTIONS = {
    "A": "Ray skips some trials.",
    "B": "The cluster was under-used.",
    "C": "The trials ran in parallel and the bad ones were stopped early.",
    "D": "Ray compresses time by batching trial steps.",
}
Q2 = "What does PBT offer over manual tuning? (several may apply)"
Q2_OPTIONS = {
    "A": "Shorter total runtime, because trials run concurrently and weak ones stop early.",
    "B": "More hyperparameter combinations explored in the same window of time.",
    "C": "A guarantee of finding the globally best configuration.",
    "D": "Every trial is trained for the full number of epochs.",
}


@dataclass(frozen=True)
class Verdict:
    option: str
    text: str
    holds: str  # yes / partly / no / not distinguishable / not refuted
    rule: str
    evidence: str


def _n(a: Aggregate) -> str:
    return f"{len(a.runs)} seed{'s' * (len(a.runs) != 1)}"


def _device(a: Aggregate) -> str:
    """CPU and GPU utilization of what the trials held, or why a figure is missing."""
    cpu, gpu, gpus = a["cpu_utilization"], a["gpu_utilization"], a["gpus_per_trial"]
    out = "CPU not recorded" if math.isnan(cpu) else f"CPU {cpu:.0%} of the CPUs reserved"
    if not math.isnan(gpu):
        return f"{out}, GPU {gpu:.0%}"
    return f"{out}, no GPU" if gpus == 0 else f"{out}, GPU not recorded"


def q1(a: Aggregate) -> tuple[list[Verdict], str]:
    """Why one strategy's job is shorter than Σ of its trials' runtimes (medians across seeds)."""
    wall, total, window = a["wall_s"], a["sum_runtime_s"], a["trial_window_s"]
    concurrency, slots = a["mean_concurrency"], a["slots"]
    avoided_it, avoided_s = a["early_stop_avoided_iterations"], a["early_stop_avoided_s"]
    parallel, stopped = concurrency > PARALLEL_THRESHOLD, avoided_it > 0
    verdicts = [
        Verdict("A", Q1_OPTIONS["A"], "yes" if a["trials_without_result"] > 0 else "no",
                "yes if a trial that was started never reported an iteration",
                f"{a['trials_without_result']:.0f} of {a['trials']:.0f} trials reported nothing; "
                f"{a['completed_all_iterations']:.0f} reported every planned iteration"),
        Verdict("B", Q1_OPTIONS["B"], "yes" if a["slot_utilization"] < UNDER_USED else "no",
                f"yes if slot utilization (Σ trial runtime / (trial window x slots)) < {UNDER_USED:.0%}; "
                "an idle slot lengthens a job, it never shortens it",
                f"slot utilization {a['slot_utilization']:.0%} of {slots:.0f} slots (how long the trials held "
                f"them); device utilization while held (how busy the trials kept what they held): "
                f"{_device(a)}"),
        Verdict("C", Q1_OPTIONS["C"], "yes" if parallel and stopped else ("partly" if parallel or stopped else "no"),
                f"parallel if mean trials at once (Σ / trial window) > {PARALLEL_THRESHOLD}; stopped early if "
                "a scheduler ended trials before their planned iterations; yes for both, partly for one",
                f"{concurrency:.2f} trials at once on average; {avoided_it:.0f} iterations avoided by early "
                f"stopping ({avoided_s:.1f} trial-s)"),
        Verdict("D", Q1_OPTIONS["D"], "yes" if a["peak_concurrency"] > slots else "no",
                "yes if more trials progressed at once than there were slots (steps batched across trials)",
                f"peak {a['peak_concurrency']:.0f} trials at once with {slots:.0f} slots"),
    ]
    gap = total - wall
    if gap > 0 and parallel:
        conclusion = (f"the job is {gap:.1f} s shorter than Σ {total:.1f} s because {concurrency:.2f} trials ran at "
                      f"once: the trial window is Σ / {concurrency:.2f} = {window:.1f} s, and wall = set-up "
                      f"{a['setup_s']:.1f} s + window {window:.1f} s + teardown {a['teardown_s']:.1f} s")
        conclusion += (f"; early stopping shrank Σ itself by {avoided_s:.1f} trial-s" if stopped else
                       "; no trial was stopped early")
        if a["discarded_iterations"]:
            conclusion += (f"; exploits discarded {a['discarded_iterations']:.0f} iterations ({a['discarded_s']:.1f} "
                           "trial-s of waste, not of savings)")
    else:
        conclusion = (f"the job is not shorter than Σ of its trials ({wall:.1f} s wall, Σ {total:.1f} s): "
                      f"{concurrency:.2f} trials at once on average")
    return verdicts, conclusion


def _alone(test: PairedTest) -> PairedTest:
    """A pair outside the primary ones (PB2 against the grid) asked here on its own, the one test
    of its question: its unadjusted p decides, and the verdict prints it as such."""
    return replace(test, primary=True)


def q2(candidate: Aggregate, manual: Aggregate, everyone: list[Aggregate]) -> list[Verdict]:
    """What a population-based ``candidate`` offers over the sequential grid ``manual``."""
    primary = is_primary(candidate.strategy, manual.strategy)
    wall = paired(candidate, manual, "wall_s", primary=primary)
    wall = wall if primary else _alone(wall)
    stopped = candidate["early_stop_avoided_iterations"] > 0
    a_holds = {-1: "yes" if stopped else "partly", 1: "no"}.get(wall.side, "not distinguishable")
    cw, mw = candidate.estimates["wall_s"], manual.estimates["wall_s"]

    def rate(s: Any) -> float:
        return s.distinct_configs / (s.wall_s / 60) if s.wall_s > 0 else math.nan

    def per_minute(a: Aggregate) -> float:
        return a["distinct_configs"] / (a["wall_s"] / 60) if a["wall_s"] > 0 else math.nan

    rates = paired(candidate, manual, rate, name="configs per wall-minute", primary=primary, lower_is_better=False)
    rates = rates if primary else _alone(rates)
    b_holds = {-1: "yes", 1: "no"}.get(rates.side, "not distinguishable")

    beaten = []
    for s in candidate.runs:
        rivals = [r for other in everyone if other is not candidate for r in other.runs
                  if r.seed == s.seed and not math.isnan(r.best_eval_loss)]
        better_rivals = [r for r in rivals if (r.best_eval_loss < s.best_eval_loss if candidate.mode == "min"
                                               else r.best_eval_loss > s.best_eval_loss)]
        if better_rivals:
            best = min(better_rivals, key=lambda r: r.best_eval_loss if candidate.mode == "min" else -r.best_eval_loss)
            beaten.append(f"seed {s.seed}: {best.strategy} {best.best_eval_loss:.4f} vs {s.best_eval_loss:.4f}")
    full = all(s.completed_all_iterations == s.trials and s.trials > 0 for s in candidate.runs)
    manual_full = all(s.completed_all_iterations == s.trials for s in manual.runs)
    return [
        Verdict("A", Q2_OPTIONS["A"], a_holds,
                f"the exact paired test on per-seed wall times at α = {wall.alpha:g}: yes if the candidate is shorter "
                "and stopped trials early; partly if only shorter; no if longer; otherwise not distinguishable",
                f"{candidate.strategy} wall {cw.median:.1f} s vs {manual.strategy} {mw.median:.1f} s (medians): "
                f"{wall.verdict()}; {candidate['mean_concurrency']:.2f} trials at once; "
                f"{candidate['early_stop_avoided_iterations']:.0f} iterations stopped early"),
        Verdict("B", Q2_OPTIONS["B"], b_holds,
                f"the exact paired test on per-seed distinct configurations per wall-minute at α = {rates.alpha:g}: "
                "yes if the candidate's are higher, no if lower, otherwise not distinguishable",
                f"{candidate.strategy} {candidate['distinct_configs']:.0f} distinct configs, "
                f"{per_minute(candidate):.1f}/min; {manual.strategy} {manual['distinct_configs']:.0f}, "
                f"{per_minute(manual):.1f}/min (medians of {_n(candidate)}): {rates.verdict()}"),
        Verdict("C", Q2_OPTIONS["C"], "no" if beaten else "not refuted",
                "no if in any seed another strategy found a better value; a finite run can refute a guarantee, "
                "never prove one",
                "; ".join(beaten) if beaten else f"no strategy beat {candidate.strategy} in {_n(candidate)}"),
        Verdict("D", Q2_OPTIONS["D"], "yes" if full else "no",
                "yes if every trial of every seed reported all its planned iterations",
                f"{candidate['completed_all_iterations']:.0f} of {candidate['trials']:.0f} trials did (median); "
                + ("the grid's trials do too, so it is no advantage over manual tuning" if manual_full else
                   "the grid's trials did not all")),
    ]
