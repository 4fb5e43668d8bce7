from __future__ import annotations

import csv
import io
import math

from harness.contract.record import RunRecord
from harness.reporting.report import best_table, job_table, trials_table, write_tables


def _record() -> RunRecord:
    rec = RunRecord(strategy="pbt", preset="smoke", seed=1, config={}, started_at=1_700_000_000.0)
    rec.trial_started("a", "trial_a", {"lr": 1e-4, "per_device_train_batch_size": 2, "weight_decay": 0.0})
    rec.trial_started("b", "trial_b", {"lr": 1e-5, "per_device_train_batch_size": 1, "weight_decay": 0.01})
    for it, (la, lb) in enumerate([(5.0, 6.0), (4.0, 5.5)], start=1):
        rec.trial_result("a", {"iteration": it, "eval_loss": la, "lr": 1e-4, "per_device_train_batch_size": 2,
                               "weight_decay": 0.0, "time_this_iter_s": 10.0, "epoch": float(it),
                               "exploited_from": "", "segment_start_iteration": 0})
        rec.trial_result("b", {"iteration": it, "eval_loss": lb, "lr": 1e-5 if it == 1 else 1.2e-4,
                               "per_device_train_batch_size": 1 if it == 1 else 2, "weight_decay": 0.01,
                               "time_this_iter_s": 7.5, "epoch": float(it),
                               "exploited_from": "a" if it == 2 else "", "segment_start_iteration": it - 1})
    rec.trial_ended("a", "TERMINATED")
    rec.trial_ended("b", "TERMINATED")
    rec.finished_at = rec.started_at + 125.0
    return rec


def test_job_table_has_start_finish_and_total():
    rows = dict(job_table(_record()).rows)
    assert rows["total job time"] == "125.0 s (0:02:05)"
    assert len(rows["job start"]) == len("2023-11-14 22:13:20 +0000")


def test_trial_rows_show_final_hyperparameters_runtime_and_exploits():
    table = trials_table(_record())
    by_name = {row[0]: row for row in table.rows}
    assert by_name["trial_b"][2:9] == [1.2e-4, 2, 0.01, 2, 15.0, 5.5, 1]
    assert by_name["trial_a"][5:8] == [2, 20.0, 4.0]


def test_best_trial_is_the_lowest_final_eval_loss():
    rows = dict(best_table(_record()).rows)
    assert rows["trial"] == "trial_a" and rows["best eval loss"] == 4.0 and rows["epochs"] == 2.0
    assert rows["total runtime (s)"] == 20.0 and rows["best lr"] == 1e-4


def test_errored_trial_is_never_best_and_empty_record_has_no_best():
    rec = _record()
    rec.trial_started("c", "trial_c", {"lr": 1e-4, "per_device_train_batch_size": 2, "weight_decay": 0.0})
    rec.trial_result("c", {"iteration": 1, "eval_loss": 0.1, "lr": 1e-4, "per_device_train_batch_size": 2,
                           "weight_decay": 0.0, "time_this_iter_s": 1.0})
    rec.trial_ended("c", "ERROR", "boom")
    assert rec.best_trial().trial_id == "a"
    empty = RunRecord(strategy="pbt", preset="smoke", seed=1, config={}, started_at=0.0, finished_at=1.0)
    assert "none" in dict(best_table(empty).rows)["best trial"]


def test_tables_are_written_as_markdown_and_csv_and_the_record_round_trips(tmp_path):
    rec = _record()
    rec.save(tmp_path)
    loaded = RunRecord.load(tmp_path)
    assert loaded.to_dict() == rec.to_dict()
    text, folder = write_tables(loaded, tmp_path)
    assert "| trial_b | TERMINATED | 1.200e-04 | 2 | 0.0100 | 2 | 15.0000 | 5.5000 | 1 |" in text
    rows = list(csv.DictReader(io.StringIO((folder / "trials.csv").read_text())))
    assert {r["trial"] for r in rows} == {"trial_a", "trial_b"}
    assert float(rows[0]["lr"]) in (1e-4, 1.2e-4)  # csv keeps full precision
    assert (folder / "job.csv").is_file() and (folder / "best.csv").is_file()
    assert rec.exploits() == [{"trial": "b", "donor": "a", "from_iteration": 1,
                               "config": {"lr": 1.2e-4, "per_device_train_batch_size": 2, "weight_decay": 0.01}}]
    assert not math.isnan(rec.trials[0].eval_loss)


def test_short_ids_number_the_trials_of_a_run_from_c01():
    from harness.contract.record import short_id

    assert [short_id(t) for t in ("trainable_3e890_00000", "trainable_3e890_00011", "manual_00002")] == \
        ["c01", "c12", "c03"]
    assert short_id("odd-name") == "odd-name"
