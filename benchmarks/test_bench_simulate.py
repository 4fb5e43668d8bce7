"""The simulator's speed: a 512-trial PBT population on 64 nodes of the seed's shape (256 slots,
2,560 trial-iterations), synchronous and asynchronous, in this one process (one core). Target:
<= 10 s each, reported in ``extra_info`` beside the figure, never asserted. The baseline, in the
same session: the exercise's 8 trials on 2 nodes, the smallest simulation of the same code."""

from __future__ import annotations

import time

import pytest

from harness import tasks
from harness.simulate.commands import SEED_SCALE_COSTS
from harness.simulate.costs import CostModel
from harness.simulate.policies import Curves
from harness.simulate.study import Cluster, simulate_what_if

TARGET_S = 10.0


def _simulate(population: int, nodes: int, synch: bool):
    cfg = tasks.resolve("seed").updated({"strategy": "pbt", "tune.synch": synch,
                                         "budget.trial_iterations": population * 5})
    costs = CostModel.load(SEED_SCALE_COSTS)
    return lambda: simulate_what_if(cfg, costs, Cluster(nodes, 20, 8, 2), Curves([]), seed=0)


@pytest.mark.parametrize("synch", [True, False], ids=["synchronous", "asynchronous"])
def test_a_512_trial_64_node_pbt_simulation(benchmark, synch):
    baseline = _simulate(8, 2, synch)
    started = time.perf_counter()
    baseline()
    baseline_s = time.perf_counter() - started
    record = benchmark.pedantic(_simulate(512, 64, synch), rounds=3, iterations=1)
    seconds = benchmark.stats.stats.median
    benchmark.extra_info.update(trials=len(record.trials), slots=record.slots, iterations=record.iterations_run,
                                median_s=round(seconds, 3), target_s=TARGET_S, within_target=seconds <= TARGET_S,
                                baseline_8_trials_s=round(baseline_s, 4), ratio_to_baseline=round(seconds / baseline_s, 1))
    assert len(record.trials) == 512 and record.slots == 256
