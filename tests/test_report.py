from __future__ import annotations

import csv
import io
import math

import pytest

from harness.contract.rundir import RunDir
from harness.reporting.report import best_table, job_table, trials_table, write_tables
from recordkit import Run, row

pytestmark = pytest.mark.unit


def _run() -> Run:
    """c01 trains two 10 s iterations; c02 two of 7.5 s, and restarts from c01's first checkpoint."""
    return (Run("pbt", seed=1, config={}, t0=1_700_000_000.0)
            .trial("t_00000", [row(1, 10, 10, 5.0, epoch=1.0), row(2, 20, 10, 4.0, epoch=2.0)], name="trainable_00000")
            .trial("t_00001", [row(1, 7.5, 7.5, 6.0, lr=1e-5, bs=1, wd=0.01, epoch=1.0),
                               row(2, 15, 7.5, 5.5, lr=1.2e-4, bs=2, wd=0.01, donor="t_00000", start_it=1, epoch=2.0)],
                   name="trainable_00001"))


def _record():
    return _run().record(wall=125.0)


def test_job_table_has_start_finish_and_total():
    rows = dict(job_table(_record()).rows)
    assert rows["total job time"] == "125.0 s (0:02:05)"
    assert len(rows["job start"]) == len("2023-11-14 22:13:20 +0000")


def test_trial_rows_show_final_hyperparameters_runtime_and_exploits():
    table = trials_table(_record())
    by_name = {r[0]: r for r in table.rows}
    assert by_name["c02"][2:9] == [1.2e-4, 2, 0.01, 2, 15.0, 5.5, 1]
    assert by_name["c01"][5:8] == [2, 20.0, 4.0]


def test_best_trial_is_the_lowest_final_eval_loss():
    rows = dict(best_table(_record()).rows)
    assert rows["trial"] == "c01" and rows["best eval loss"] == 4.0 and rows["epochs"] == 2.0
    assert rows["total runtime (s)"] == 20.0 and rows["best lr"] == 1e-4


def test_errored_trial_is_never_best_and_empty_record_has_no_best():
    rec = _run().trial("t_00002", [row(1, 21, 1, 0.1)], "ERROR", error="boom").record(wall=125.0)
    assert rec.best_trial().label == "c01"
    assert "none" in dict(best_table(Run().record(wall=1.0)).rows)["best trial"]


def test_tables_are_written_as_markdown_and_csv_and_the_record_round_trips(tmp_path):
    rec = _record()
    run_dir = RunDir(tmp_path)
    run_dir.save_record(rec)
    loaded = run_dir.record()
    assert loaded.to_dict() == rec.to_dict()
    text, folder = write_tables(loaded, run_dir.tables_dir)
    assert "| c02 | TERMINATED | 1.200e-04 | 2 | 0.0100 | 2 | 15.0000 | 5.5000 | 1 | 0 |" in text
    rows = list(csv.DictReader(io.StringIO((folder / "trials.csv").read_text())))
    assert {r["trial"] for r in rows} == {"c01", "c02"}
    assert float(rows[0]["lr"]) in (1e-4, 1.2e-4)  # csv keeps full precision
    assert (folder / "job.csv").is_file() and (folder / "best.csv").is_file()
    assert rec.exploits() == [{"trial": "t_00001", "donor": "t_00000", "from_iteration": 1,
                               "config": {"lr": 1.2e-4, "per_device_train_batch_size": 2, "weight_decay": 0.01}}]
    assert not math.isnan(rec.trials[0].eval_loss)


def test_short_ids_number_the_trials_of_a_run_from_c01():
    from harness.contract.record import short_id

    assert [short_id(t) for t in ("trainable_3e890_00000", "trainable_3e890_00011", "manual_00002")] == \
        ["c01", "c12", "c03"]
    assert short_id("odd-name") == "odd-name"
