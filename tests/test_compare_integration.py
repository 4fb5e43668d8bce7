"""The four strategies on the same trial at smoke scale, the comparison over their records, and
the reproducibility of the manual grid and of synchronous PBT's exploit decisions."""

from __future__ import annotations

import json
import re

import pytest

from conftest import only_run_dir, run_harness
from harness.analysis import summarize
from harness.records import RunRecord
from harness.tracking import runs_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# One learning rate in the grid keeps the manual and FIFO runs at 4 combinations (2 bs x 2 wd).
SMALL_GRID = ("--set", "tune.grid_lrs=1")


def _run(tmp_path_factory, name: str, *args: str):
    results = tmp_path_factory.mktemp(name)
    done = run_harness(results, "--preset", "smoke", *args)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-5000:])
    run_dir = only_run_dir(results)
    return run_dir, RunRecord.load(run_dir)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, smoke_pbt):
    return {
        "manual": _run(tmp_path_factory, "manual", "--strategy", "manual", *SMALL_GRID),
        "fifo": _run(tmp_path_factory, "fifo", "--strategy", "fifo", *SMALL_GRID),
        "asha": _run(tmp_path_factory, "asha", "--strategy", "asha"),
        "pbt": (smoke_pbt[2], smoke_pbt[3]),
    }


def test_manual_runs_one_trial_at_a_time_for_the_full_grid(runs):
    _, record = runs["manual"]
    s = summarize(record)
    assert s.trials == 4 and s.completed_all_iterations == 4
    assert s.peak_concurrency == 1
    # sequential: the trials' busy time fills their window (the rest is loading between combos)
    assert 0.85 <= s.sum_runtime_s / s.trial_window_s <= 1.0 + 1e-6
    assert len({(t.initial_config["per_device_train_batch_size"], t.initial_config["weight_decay"])
                for t in record.trials}) == 4


def test_fifo_runs_the_same_grid_concurrently(runs):
    _, manual = runs["manual"]
    _, record = runs["fifo"]
    s = summarize(record)
    assert {tuple(sorted(t.initial_config.items())) for t in record.trials} == \
        {tuple(sorted(t.initial_config.items())) for t in manual.trials}
    assert s.completed_all_iterations == 4 and s.early_stopped == 0 and s.exploits == 0
    assert s.peak_concurrency >= 2 and s.speedup > 1.3
    assert s.speedup == pytest.approx(s.mean_concurrency, rel=0.05)


def test_asha_stops_trials_early_and_reports_the_saving(runs):
    _, record = runs["asha"]
    s = summarize(record)
    assert s.trials == 8
    assert s.early_stopped > 0 and s.early_stop_saved_s > 0
    assert min(t.iterations for t in record.trials) < 3 <= max(t.iterations for t in record.trials)


def test_compare_writes_report_csv_plots_and_mlflow_summaries(runs, tmp_path):
    out = tmp_path / "comparison"
    dirs = [str(runs[name][0]) for name in ("manual", "fifo", "asha", "pbt")]
    done = run_harness(tmp_path, *dirs, "--out", str(out), command="compare")
    assert done.returncode == 0, done.stderr[-3000:]
    text = (out / "comparison.md").read_text()
    for name in ("manual", "fifo", "asha", "pbt"):
        assert re.search(rf"^\| {name} \| \d+ \|", text, re.M), name
    assert "### Q1" in text and "### Q2" in text and "**pbt**:" in text
    for png in ("gantt.png", "eval_loss.png", "pbt_lineage.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv_lines = (out / "comparison.csv").read_text().splitlines()
    assert len(csv_lines) == 5 and csv_lines[0].startswith("strategy,trials,wall (s)")
    # MLflow (the store of the first run's results folder): one summary run per strategy
    uri = f"sqlite:///{runs['manual'][0].parent / 'mlflow.db'}"
    summaries = [r for r in runs_of("hpo-smoke", uri) if r.data.tags.get("kind") == "strategy-summary"]
    assert sorted(r.data.tags["strategy"] for r in summaries) == ["asha", "fifo", "manual", "pbt"]
    for r in summaries:
        assert {"wall_s", "sum_trial_runtime_s", "speedup", "best_eval_loss"} <= set(r.data.metrics)
    pbt = next(r for r in summaries if r.data.tags["strategy"] == "pbt")
    assert pbt.data.metrics["exploits"] > 0


def test_two_manual_runs_give_identical_eval_loss_per_combo(runs, tmp_path_factory):
    _, first = runs["manual"]
    _, second = _run(tmp_path_factory, "manual-again", "--strategy", "manual", *SMALL_GRID)

    def losses(record):
        return {t.trial_id: [row["eval_loss"] for row in t.history] for t in record.trials}

    assert losses(first) == losses(second)


def _decisions(run_dir):
    """PBT's exploit decisions from Ray's policy log, with trial indices instead of random ids:
    (receiver, donor, the mutated config), in order. Ray's two iteration columns are left out:
    they are its bookkeeping at log time and vary with the order in which the driver processed a
    round's results (0 or 1 in runs that were otherwise identical); the iteration of the
    checkpoint that was really restored is compared from the run records below."""
    out = []
    for line in (run_dir / "ray" / "pbt_global.txt").read_text().splitlines():
        target, clone, _target_it, _clone_it, _old, new = json.loads(line)
        out.append((target.split("_")[0], clone.split("_")[0],
                    {k: round(v, 12) if isinstance(v, float) else v for k, v in new.items()}))
    return out


def _restored(run_dir):
    """Exploits as the trials saw them: receiver, donor, the donor checkpoint's iteration, and the
    eval_loss that followed (trial indices instead of random ids)."""
    record = RunRecord.load(run_dir)
    return sorted(
        (t.trial_id[-5:], row["exploited_from"][-5:], row["segment_start_iteration"], round(row["eval_loss"], 6))
        for t in record.trials for row in t.history if row.get("exploited_from")
    )


def test_synchronous_pbt_with_a_fixed_seed_repeats_its_exploit_decisions(smoke_pbt, tmp_path_factory):
    first_dir = smoke_pbt[2]
    second_dir, _ = _run(tmp_path_factory, "pbt-again", "--strategy", "pbt")
    first, second = _decisions(first_dir), _decisions(second_dir)
    assert first, "the smoke PBT run exploited nothing"
    assert first == second
    assert _restored(first_dir) == _restored(second_dir)
