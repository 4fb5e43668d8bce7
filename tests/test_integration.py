"""End to end at smoke scale: the real CLI, a local Ray, MLflow on sqlite, the tiny offline model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import only_run_dir, run_harness
from harness.contract.rundir import RunDir
from harness.reporting.tracking import runs_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def smoke(smoke_pbt):
    return smoke_pbt


def test_the_three_tables_are_printed_and_written(smoke):
    done, _, run_dir, record = smoke
    for title in ("### Job timing", "### Trials", "### Best trial"):
        assert title in done.stdout
    assert "| job start |" in done.stdout and "| total job time |" in done.stdout
    trial_rows = [line for line in done.stdout.splitlines() if re.match(r"\| c\d\d \|", line)]
    assert len(trial_rows) == 4
    for name in ("job.csv", "trials.csv", "best.csv", "results.md"):
        assert (run_dir / "tables" / name).is_file()
    best = record.best_trial()
    assert f"| best eval loss | {best.eval_loss:.4f} |" in done.stdout


def test_every_trial_reports_every_planned_iteration(smoke):
    _, _, _, record = smoke
    assert len(record.trials) == 4
    for trial in record.trials:
        assert trial.status == "TERMINATED"
        assert [row.iteration for row in trial.history] == [1, 2, 3]


def test_exploits_happen_and_the_optimizer_uses_the_new_lr(smoke):
    _, _, run_dir, record = smoke
    exploits = record.exploits()
    assert exploits, "synchronous PBT with quantile 0.5 exploits every round"
    for trial in record.trials:
        for row in trial.history:
            assert row.optimizer_lr == pytest.approx(row.lr, rel=1e-9), (trial.trial_id, row)
            assert row.optimizer_weight_decay == row.weight_decay
    # the exploit the trial saw is the one Ray logged
    ray_log = [json.loads(line) for line in (run_dir / "ray" / "pbt_global.txt").read_text().splitlines()]
    assert len(ray_log) == len(exploits)
    assert (run_dir / "strategy_artifacts" / "pbt_global.txt").is_file()
    exploited = next(t for t in record.trials if t.exploits)
    e = exploited.exploits[0]
    donor = next(t for t in record.trials if t.trial_id == e["donor"])
    # it resumed from the donor's checkpoint, at the donor's iteration
    assert any(row.iteration == e["from_iteration"] for row in donor.history)


def test_every_lr_stays_within_the_bounds(smoke):
    _, _, _, record = smoke
    lo, hi = record.config["search"]["lr_lower"], record.config["search"]["lr_upper"]
    for trial in record.trials:
        for row in trial.history:
            assert lo <= row.lr <= hi
            assert row.per_device_train_batch_size in record.config["search"]["bs_choices"]
            assert row.weight_decay in record.config["search"]["wd_choices"]


def test_mlflow_has_one_parent_and_a_child_per_trial_with_a_point_per_iteration(smoke):
    from mlflow.tracking import MlflowClient

    _, results, run_dir, record = smoke
    uri = f"sqlite:///{results / 'mlflow.db'}"
    runs = runs_of("hpo-smoke", uri)
    # (the comparison tests may have logged comparison runs into this store too)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags and r.data.tags.get("kind") != "comparison"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == record.mlflow_run_id]
    assert len(parents) == 1 and parents[0].info.run_id == record.mlflow_run_id
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    for tag in ("strategy", "preset", "seed", "git_sha", "git_dirty", "host", "device", "version.ray"):
        assert tag in parent.data.tags
    assert parent.data.metrics["exploits"] == len(record.exploits())
    assert parent.data.params["search.lr_upper"] == str(record.config["search"]["lr_upper"])
    assert len(children) == 4
    client = MlflowClient(uri)
    for child in children:
        assert child.info.status == "FINISHED"
        assert {"lr", "per_device_train_batch_size", "weight_decay"} <= set(child.data.params)
        history = client.get_metric_history(child.info.run_id, "eval_loss")
        assert sorted(m.step for m in history) == [1, 2, 3]
        lrs = client.get_metric_history(child.info.run_id, "lr")
        assert len(lrs) == 3
        # the trial's own use of the machine, in the UI's System metrics tab; no GPU: no GPU metric
        system = {k for k in child.data.metrics if k.startswith("system/")}
        assert {"system/trial_cpu_utilization_percentage", "system/trial_rss_megabytes"} <= system
        assert not any("gpu" in k for k in system)
        assert len(client.get_metric_history(child.info.run_id, "system/trial_cpu_utilization_percentage")) == 3
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"tables", "run_record.json", "config.json", "strategy_artifacts"} <= artifacts
    assert not (ROOT / "mlruns").exists(), "MLflow must not write outside the results folder"


@pytest.mark.xdist_group("ray-ranks")  # needs no shared run: any pytest-xdist worker takes it
def test_two_workers_per_trial_through_ray(tmp_path):
    """One trial of two torch.distributed ranks in the placement group Ray reserved for it."""
    done = run_harness(tmp_path, "--preset", "smoke", "--strategy", "fifo", "--set", "resources.workers_per_trial=2",
                       "--set", "budget.trial_iterations=2", "--set", "train.iterations=2",
                       "--set", "search.bs_choices=2", "--set", "search.wd_choices=0.0")
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-5000:])
    record = RunDir(only_run_dir(tmp_path)).record()
    assert len(record.trials) == 1
    for trial in record.trials:
        assert trial.status == "TERMINATED" and trial.iterations == 2
        assert all(row.world_size == 2 for row in trial.history)


def test_every_iteration_records_where_its_time_went(smoke):
    from harness.contract.iteration import ITERATION_PHASES, PHASES, SETUP_PHASES

    _, results, _, record = smoke
    for trial in record.trials:
        for i, row in enumerate(trial.history):
            assert all(row.phases[p] is not None and row.phases[p] >= 0 for p in PHASES), row
            inside = sum(row.phases[p] for p in PHASES if p != "process_up")  # process_up precedes Ray's clock
            assert inside == pytest.approx(row.time_this_iter_s, abs=0.1 + 0.05 * row.time_this_iter_s)
            assert row.phases["train"] > 0 and row.phases["eval"] > 0
        # the first iteration of a trial carries its set-up; a fresh trial process paid for its start
    fresh = [t.history[0] for t in record.trials if t.history[0].phases["process_up"] > 0]
    assert fresh, "the first trials start in new processes"
    assert all(row.phases["imports"] > 0 for row in fresh)
    assert SETUP_PHASES + ITERATION_PHASES == PHASES

    from mlflow.tracking import MlflowClient

    child = next(r for r in runs_of("hpo-smoke", f"sqlite:///{results / 'mlflow.db'}")
                 if r.data.tags.get("mlflow.parentRunId") == record.mlflow_run_id)
    history = MlflowClient(f"sqlite:///{results / 'mlflow.db'}").get_metric_history(child.info.run_id, "phase_train_s")
    assert sorted(m.step for m in history) == [1, 2, 3]


def test_the_console_shows_progress_and_the_tables_once_and_no_warning_a_user_cannot_act_on(smoke):
    done, _, run_dir, record = smoke
    console = done.stdout + done.stderr
    assert "accelerator to CPU" not in console and "tensorboard" not in console.lower()
    assert console.count("### Best trial") == 1 and console.count("### Trials") == 1
    progress = [line for line in console.splitlines() if "harness.progress" in line]
    assert len(progress) == sum(len(t.history) for t in record.trials) == 12
    assert progress[-1].split("harness.progress:")[1].split()[0] == "12/12"
    assert f"run folder: {run_dir}" in console
    # the rest went to the run folder
    assert "harness.progress" in (run_dir / "harness.log").read_text()
    assert any((run_dir / "logs" / "ray").glob("worker-*.err"))


def test_mlflow_runs_have_readable_names_descriptions_and_ui_urls(smoke):
    from harness.reporting.tracking import DESCRIPTION, ui_urls

    _, results, _, record = smoke
    runs = runs_of("hpo-smoke", f"sqlite:///{results / 'mlflow.db'}")
    parent = next(r for r in runs if r.info.run_id == record.mlflow_run_id)
    assert parent.info.run_name.startswith("pbt · smoke · seed 42 · ")
    assert "budget of 12 trial-iterations" in parent.data.tags[DESCRIPTION]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == record.mlflow_run_id]
    assert sorted(r.info.run_name for r in children) == ["c01", "c02", "c03", "c04"]
    for child in children:
        assert child.data.tags["ray_trial_id"].endswith(f"_{int(child.info.run_name[1:]) - 1:05d}")
        assert child.data.tags[DESCRIPTION].startswith(f"Trial {child.info.run_name} ")
    urls = dict(ui_urls(results, 5123))
    experiment = runs[0].info.experiment_id
    assert urls["hpo-smoke: training runs"] == \
        f"http://127.0.0.1:5123/#/experiments/{experiment}/runs?viewStateShareKey=harness-runs"
