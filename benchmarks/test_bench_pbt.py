"""Smoke benchmarks, Ray start-up included. Figures go to the pytest-benchmark JSON as
``extra_info``; targets are reported beside them, never asserted.

* PBT (the smoke preset's full budget: a population of 12 on 4 slots, 3 synchronous rounds):
  wall time and peak memory of the whole process tree, against a baseline measured in the same
  session: a population of 2 (the smallest that can exploit) on a one-combination space, which
  costs the same start-up but trains 1/6 as much.
* The harness's own overhead, from the run records of the PBT run and of a FIFO run of the same
  budget: slot utilization (Σ trial runtime / (trial window x slots), target >= 0.85 for both),
  and the first iteration of a trial segment against a later iteration (target <= 2x). Synchronous
  PBT restarts every trial every round, so all its iterations start segments; a later iteration
  is measured where one exists on the same trial code and slots, in the FIFO run.
"""

from __future__ import annotations

import statistics

import pytest

from conftest import run_measured
from harness.reporting.analysis import segment_iteration_times, summarize
from harness.contract.record import RunRecord
from harness.contract.rundir import RunDir

MIB = 1024 * 1024
UTILIZATION_TARGET = 0.85
FIRST_ITERATION_TARGET = 2.0


def _smoke(tmp_path, *extra: str):
    results = tmp_path / "results"
    # a shared cache: tokenizer/model/data are built once, as in a user's second run
    return run_measured(["run", "--preset", "smoke", "--results-dir", str(results), *extra], tmp_path)


def _record(measured) -> RunRecord:
    line = next(line for line in measured.output.splitlines() if line.startswith("run folder: "))
    return RunDir(line.removeprefix("run folder: ")).record()


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory):
    """Build the tiny model and the tokenized data once so neither measured run pays for it."""
    path = tmp_path_factory.mktemp("bench")
    first = _smoke(path, "--set", "budget.trial_iterations=12", "--set", "train.iterations=1",
                   "--strategy", "manual")
    assert first.returncode == 0, first.output[-3000:]
    return path


def test_smoke_pbt_wall_time_memory_utilization_and_first_iteration(benchmark, warm_cache):
    baseline = _smoke(warm_cache, "--set", "budget.trial_iterations=6", "--set", "train.iterations=3",
                      "--set", "search.bs_choices=2", "--set", "search.wd_choices=0.0")
    assert baseline.returncode == 0, baseline.output[-3000:]
    measured = benchmark.pedantic(lambda: _smoke(warm_cache), rounds=1, iterations=1)
    assert measured.returncode == 0, measured.output[-3000:]
    fifo = _smoke(warm_cache, "--strategy", "fifo")
    assert fifo.returncode == 0, fifo.output[-3000:]

    pbt_record, fifo_record = _record(measured), _record(fifo)
    pbt, fifo_s = summarize(pbt_record), summarize(fifo_record)
    pbt_first, _ = segment_iteration_times(pbt_record)
    fifo_first, fifo_later = segment_iteration_times(fifo_record)
    later = statistics.median(fifo_later)
    ratio = statistics.median(pbt_first) / later
    figures = {
        "pbt_wall_s": round(measured.wall_s, 2),
        "pbt_peak_pss_mib": round(measured.peak_bytes / MIB, 1),
        "pbt_peak_processes": measured.peak_processes,
        "baseline_2trials_wall_s": round(baseline.wall_s, 2),
        "baseline_2trials_peak_pss_mib": round(baseline.peak_bytes / MIB, 1),
        "wall_ratio_vs_2trials": round(measured.wall_s / baseline.wall_s, 3),
        "memory_ratio_vs_2trials": round(measured.peak_bytes / baseline.peak_bytes, 3),
        "pbt_slot_utilization": round(pbt.slot_utilization, 3),
        "fifo_slot_utilization": round(fifo_s.slot_utilization, 3),
        "pbt_wall_utilization": round(pbt.wall_utilization, 3),
        "fifo_wall_utilization": round(fifo_s.wall_utilization, 3),
        "pbt_overhead_ratio": round(pbt.overhead_ratio, 3),
        "fifo_overhead_ratio": round(fifo_s.overhead_ratio, 3),
        "pbt_first_iteration_median_s": round(statistics.median(pbt_first), 3),
        "pbt_first_iteration_mean_s": round(statistics.mean(pbt_first), 3),
        "fifo_first_iteration_median_s": round(statistics.median(fifo_first), 3),
        "fifo_later_iteration_median_s": round(later, 3),
        "first_iteration_ratio": round(ratio, 3),
        "pbt_trial_processes": len({row.pid for t in pbt_record.trials for row in t.history}),
        "pbt_segments": len(pbt_first),
        "targets": f"slot utilization >= {UTILIZATION_TARGET} (pbt, fifo); first iteration <= "
                   f"{FIRST_ITERATION_TARGET} x a later one; wall < 90 s, peak < 3 GiB on 2 cores",
        "utilization_target_met": pbt.slot_utilization >= UTILIZATION_TARGET
        and fifo_s.slot_utilization >= UTILIZATION_TARGET,
        "first_iteration_target_met": ratio <= FIRST_ITERATION_TARGET,
    }
    benchmark.extra_info.update(figures)
    print("\n" + "\n".join(f"{k}: {v}" for k, v in figures.items()))
