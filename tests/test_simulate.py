"""The schedule simulator: its engine on costs whose answer is known, each strategy's rules, the
cost model's file, replays of measured runs (records kept in tests/data/simulate), and the
command line."""

from __future__ import annotations

import gzip
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness import tasks
from harness.config import ConfigError
from harness.contract.rundir import RunDir
from harness.reporting.analysis import summarize
from harness.simulate.commands import SEED_SCALE_COSTS
from harness.simulate.costs import Contention, CostModel, Dist, fit, outside_load
from harness.simulate.engine import Simulation
from harness.simulate.policies import Asha, Curves, Grid, Pbt
from harness.simulate.study import (Cluster, replay, simulate_what_if, typical_error, validate, validation_summary,
                                   validation_table)
from harness.simulate.outputs import measured_runs
from recordkit import T0, Run, row

pytestmark = pytest.mark.unit

DATA = Path(__file__).parent / "data" / "simulate"
ROOT = Path(__file__).resolve().parents[1]


def fixed(seconds: float) -> Dist:
    return Dist(median=seconds)


def costs(**kw: float) -> CostModel:
    values = {"driver_setup": 5.0, "teardown": 2.0, "start_gap": 0.0, "cold_start": 20.0, "warm_start": 1.0,
              "restore": 0.5, "train": 10.0, "checkpoint": 0.0, **kw}
    return CostModel(source="test", **{k: fixed(v) for k, v in values.items()})


def meta(strategy: str, iterations: int = 3, **tune: object) -> dict:
    return {"strategy": strategy, "preset": "test", "seed": 0, "budget": 0,
            "config": {"train": {"iterations": iterations}, "tune": {"metric": "eval_loss", "mode": "min", **tune}}}


CURVES = Curves([])  # every trial reports 1.0


def grid(trials: int, iterations: int = 3) -> Grid:
    return Grid(trials=trials, iterations=iterations, curves=CURVES, rng=np.random.default_rng(0))


def test_fifo_on_fixed_costs_gives_the_wall_one_can_work_out_by_hand():
    # 12 trials x 3 iterations on 4 slots: each slot runs 3 trials, a cold start then two warm ones
    record = Simulation(costs=costs(), per_node=[4], policy=grid(12), seed=0, meta=meta("fifo")).run()
    s = summarize(record)
    window = 20 + 3 * 10 + 2 * (1 + 3 * 10)
    assert s.trial_window_s == pytest.approx(window)
    assert s.wall_s == pytest.approx(5 + window + 2)
    assert s.sum_runtime_s == pytest.approx(4 * 20 + 8 * 1 + 36 * 10)
    assert s.peak_concurrency == 4 and s.mean_concurrency == pytest.approx(s.sum_runtime_s / window)
    assert s.iterations_run == 36 and record.slots == 4


def test_without_reused_processes_every_segment_starts_cold():
    record = Simulation(costs=costs(), per_node=[4], policy=grid(8), seed=0, meta=meta("fifo"), reuse=False).run()
    assert summarize(record).sum_runtime_s == pytest.approx(8 * 20 + 24 * 10)


def test_the_sequential_grid_runs_in_the_driver_one_trial_at_a_time_and_never_starts_cold():
    record = Simulation(costs=costs(), per_node=[1], policy=grid(4), seed=0, meta=meta("manual"), in_driver=True).run()
    s = summarize(record)
    assert s.peak_concurrency == 1 and s.sum_runtime_s == pytest.approx(4 * 1 + 12 * 10)


def test_cpu_contention_slows_trials_that_share_cores():
    shared = costs(cold_start=0.0, warm_start=0.0).model_copy(update={"contention": Contention(cores_per_node=2)})
    alone = Simulation(costs=shared, per_node=[2], policy=grid(2, 1), seed=0, meta=meta("fifo", 1)).run()
    crowded = Simulation(costs=shared, per_node=[4], policy=grid(4, 1), seed=0, meta=meta("fifo", 1)).run()
    assert summarize(alone).trial_window_s == pytest.approx(10)
    assert summarize(crowded).trial_window_s == pytest.approx(20)  # 4 busy trials on 2 cores: each at half speed


def test_a_run_slowed_from_outside_is_named_disturbed_by_its_trials_cpu_time(tmp_path):
    """FIFO, 2 trials x 3 iterations on 2 slots and 2 cores: each trial keeps its core busy (95%)
    and trains an iteration in 10 s, except b's second, which shared its core with a job outside
    the run: 30 s at a third of 95%. The run's own contention (2 busy trials on 2 cores) does not
    explain it; the trial's CPU time does, and the validation says so beside the replay's verdict."""
    cpu = {"resources": {"workers_per_trial": 1, "cpus_per_worker": 1}, "train": {"iterations": 3}}
    run = Run("fifo", config=cpu)
    run.trial("a", [row(i, 10 * i, 10, 3.0, train=10, cpu_percent=95, node_ip="n", pid=1) for i in (1, 2, 3)])
    run.trial("b", [row(1, 10, 10, 3.0, train=10, cpu_percent=95, node_ip="n", pid=2),
                    row(2, 40, 30, 3.0, train=30, cpu_percent=95 / 3, node_ip="n", pid=2),
                    row(3, 50, 10, 3.0, train=10, cpu_percent=95, node_ip="n", pid=2)])
    record = run.record(wall=52, slots=2)
    assert outside_load(record, Contention(cores_per_node=2)) == {("b", T0 + 40): pytest.approx(3.0)}
    assert outside_load(record, Contention()) == {}  # trials with their own devices: no CPU model
    quiet = Run("fifo", config=cpu)
    for trial, pid in (("a", 1), ("b", 2)):
        quiet.trial(trial, [row(i, 10 * i, 10, 3.0, train=10, cpu_percent=95, node_ip="n", pid=pid) for i in (1, 2, 3)])
    assert outside_load(quiet.record(wall=32, slots=2), Contention(cores_per_node=2)) == {}
    mild = Run("fifo", config=cpu)
    mild.trial("a", [row(i, 10 * i, 10, 3.0, train=10, cpu_percent=95, node_ip="n", pid=1) for i in (1, 2, 3)])
    mild.trial("b", [row(1, 10, 10, 3.0, train=10, cpu_percent=95, node_ip="n", pid=2),
                     row(2, 25, 15, 3.0, train=15, cpu_percent=95 / 1.5, node_ip="n", pid=2)])
    assert outside_load(mild.record(wall=27, slots=2), Contention(cores_per_node=2)) == {}  # 1.5x: the run's own noise
    (check,) = validate([(RunDir(tmp_path), record)], cores_per_node=2, reps=3)
    assert check.outside == [pytest.approx(3.0)]
    assert validation_table([check]).rows[0][-1].endswith(
        "; disturbed from outside the run: 1 iteration(s) got 3.0x less CPU than the run's own contention leaves")
    assert any(line.startswith("1 of 1 measured runs were disturbed from outside") for line in validation_summary([check]))


def test_synchronous_pbt_holds_every_trial_at_each_barrier_and_exploits_the_bottom_quantile():
    policy = Pbt(synch=True, quantile=0.5, trials=6, iterations=3, rng=np.random.default_rng(1),
                 curves=Curves([]))
    policy.curves.curves = [({"lr": 1e-4}, [3.0, 2.0, 1.5]), ({"lr": 1e-3}, [2.0, 1.0, 0.5])]
    record = Simulation(costs=costs(), per_node=[4], policy=policy, seed=0, meta=meta("pbt", synch=True)).run()
    rows = [r for t in record.trials for r in t.all_rows]
    for it in (1, 2):  # nothing of iteration it+1 started before the last trial reported iteration it
        barrier = max(r.received_at for r in rows if r.iteration == it)
        assert min(r.received_at - r.seconds for r in rows if r.iteration == it + 1) >= barrier
    assert record.exploits() and len(record.exploits()) == policy.exploits == 6  # 3 per round, 2 rounds
    later = [r for r in rows if r.iteration > 1]
    assert all(r.phases.get("restore") for r in later if r.segment_start_iteration == r.iteration - 1)


def test_asynchronous_pbt_never_waits_for_a_barrier():
    curves = Curves([])
    curves.curves = [({"lr": 1e-4}, [3.0, 2.0, 1.5]), ({"lr": 1e-3}, [2.0, 1.0, 0.5])]
    policy = Pbt(synch=False, quantile=0.25, trials=4, iterations=3, rng=np.random.default_rng(0), curves=curves)
    record = Simulation(costs=costs(train=10.0), per_node=[4], policy=policy, seed=0, meta=meta("pbt")).run()
    assert policy.exploits > 0
    for trial in record.trials:  # a trial that reports goes on (or restarts from a donor) at once
        rows = trial.all_rows
        for before, after in zip(rows, rows[1:]):
            assert after.received_at - after.seconds == pytest.approx(before.received_at)


def test_asha_stops_trials_at_its_rungs_and_keeps_to_the_budget():
    curves = Curves([])
    curves.curves = [({"lr": 1e-4}, [3.0, 2.5, 2.0]), ({"lr": 1e-3}, [2.0, 1.5, 1.0]), ({"lr": 1e-5}, [4.0, 3.9, 3.8])]
    policy = Asha(grace=1, reduction_factor=2, trials=36, iterations=3, budget=36, curves=curves,
                  rng=np.random.default_rng(0))
    record = Simulation(costs=costs(), per_node=[4], policy=policy, seed=0, meta=meta("asha")).run()
    s = summarize(record)
    assert s.early_stopped > 0 and s.trials > 12
    assert max(t.iterations for t in record.trials) == 3  # the best are promoted to the end
    assert s.peak_concurrency <= 4  # no more trials alive than slots, as Ray's searcher allows
    assert 36 <= s.iterations_run <= 36 + 4  # the budget, and at most one iteration in flight per slot


def test_a_larger_asynchronous_population_takes_turns_least_advanced_first():
    policy = Pbt(synch=False, quantile=0.25, trials=8, iterations=3, rng=np.random.default_rng(0), curves=CURVES)
    record = Simulation(costs=costs(), per_node=[4], policy=policy, seed=0, meta=meta("pbt")).run()
    s = summarize(record)
    assert s.trials == 8 and s.iterations_run == 24 and s.peak_concurrency == 4
    first_rounds = sorted((r.received_at, r.iteration) for t in record.trials for r in t.all_rows)[:8]
    assert [it for _, it in first_rounds] == [1] * 8  # every trial's first iteration before anyone's second


def test_curves_continue_from_the_donor_after_an_exploit():
    curve = [3.0, 2.0, 1.5]
    assert Curves.step(curve, 1, math.nan) == 3.0
    assert Curves.step(curve, 2, 1.0) == pytest.approx(0.0)  # the donor's 1.0, then this curve's -1.0
    assert Curves.step(curve, 4, 1.5) == pytest.approx(1.25)  # past the end: the last step, halved


def test_the_seed_scale_cost_file_loads_and_a_bad_one_is_named():
    model = CostModel.load(SEED_SCALE_COSTS)
    assert model.train.median == 210 and "assumption" in model.source
    with pytest.raises(ConfigError, match="does not exist"):
        CostModel.load("/nonexistent/costs.json")


def test_a_cost_file_with_an_unknown_field_is_refused(tmp_path):
    bad = tmp_path / "costs.toml"
    bad.write_text("[trian]\nmedian = 3\n")
    with pytest.raises(ConfigError, match="not a cost model"):
        CostModel.load(bad)


# -- measured runs (records kept from real smoke runs on the 2-core machine) --------------------------


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """The kept records as run folders (tests/data/simulate/README.md says what they are)."""
    root = tmp_path_factory.mktemp("measured")
    for path in sorted(DATA.glob("*.json.gz")):
        folder = root / path.name.removesuffix(".json.gz")
        folder.mkdir()
        (folder / "run_record.json").write_bytes(gzip.decompress(path.read_bytes()))
    return measured_runs([root])


def test_a_fitted_model_saves_and_loads(tmp_path, measured):
    model = fit([measured[0][1]], cores_per_node=2)
    assert CostModel.load(model.save(tmp_path / "c.json")) == model
    assert model.train.samples and model.cold_start.median > model.warm_start.median


def test_a_replay_makes_the_runs_own_decisions(measured):
    for _, record in measured:
        simulated = replay(record, fit([record]))
        assert sorted(t.trial_id for t in simulated.trials) == sorted(t.trial_id for t in record.trials)
        assert {t.trial_id: t.iterations for t in simulated.trials} == {t.trial_id: t.iterations for t in record.trials}
        assert sorted((e["trial"], e["donor"], e["from_iteration"]) for e in simulated.exploits()) == \
            sorted((e["trial"], e["donor"], e["from_iteration"]) for e in record.exploits())
        assert simulated.config["simulated"]["mode"] == "replay"


def test_replays_reproduce_the_measured_runs(measured):
    """Every run from its own record within 10% on wall, Σ, concurrency and slot utilization; a
    run at the other slot count, from its strategy's runs at this one (CPU contention undone on 2
    cores), typically within 15%."""
    checks = validate(measured, cores_per_node=2, reps=5)
    own = [c for c in checks if c.basis == "own record"]
    assert len(own) == len(measured) == 18
    assert [(c.strategy, c.slots, c.seed) for c in own if not c.ok] == []
    cross = [c for c in checks if c.basis == "other slots"]
    assert len(cross) == 16  # the sequential grid has one slot whatever the budget says
    assert typical_error(cross) <= 0.15 and typical_error(cross, "sum_runtime_s") <= 0.15


def test_what_if_at_the_seeds_scale_answers_q1_from_the_same_rules():
    cfg = tasks.resolve("seed").updated({"strategy": "pbt", "budget.trial_iterations": 40})
    record = simulate_what_if(cfg, CostModel.load(SEED_SCALE_COSTS), Cluster(2, 20, 8, 2), CURVES)
    s = summarize(record)
    assert s.slots == 8 and s.trials == 8 and s.iterations_run == 40
    assert s.sum_runtime_s > 5 * s.wall_s and s.mean_concurrency > 6  # the exercise's Q1: concurrency
    assert record.config["simulated"]["mode"] == "what-if"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", "simulate", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_a_bad_cluster_is_one_line_and_exit_2(tmp_path):
    done = _cli("what-if", "--preset", "seed", "--nodes", "0", "--out", str(tmp_path / "x"), cwd=ROOT)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--nodes 0" in done.stderr
    assert not (tmp_path / "x").exists()
    done = _cli("scaling", "--preset", "seed", "--strategies", "pbt", "--out", str(tmp_path / "x"), cwd=ROOT)
    assert done.returncode == 2 and "--strategies applies only to what-if" in done.stderr
    assert not (tmp_path / "x").exists()


def test_the_seed_scale_what_if_prints_q1_marked_simulated(tmp_path):
    out = tmp_path / "seed"
    done = _cli("what-if", "--preset", "seed", "--set", "budget.trial_iterations=40", "--strategies", "manual pbt",
                "--seeds", "0 1", "--no-mlflow", "--out", str(out), cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "SIMULATED (what-if mode)" in done.stdout and "### Q1" in done.stdout
    report = (out / "comparison" / "comparison.md").read_text()
    assert report.count("SIMULATED") >= 1 and (out / "comparison" / "gantt.png").is_file()
    saved = json.loads(next((out / "runs").glob("pbt-*/run_record.json")).read_text())
    assert saved["config"]["simulated"]["cluster"].startswith("2 node(s)")
