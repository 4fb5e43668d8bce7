from __future__ import annotations

import pytest

from harness.reporting.collect import collect, parse_log
from harness.config import ConfigError
from harness.contract.rundir import RunDir
from test_report import _record

pytestmark = pytest.mark.unit

LOG = """===== JOB 42 START : 2026-11-28 10:43:17 +0000 =====
2026-11-28 10:43:18 [head 42] starting Ray head on 127.0.0.2:37539
run folder: {run_dir}
| trainable_x | TERMINATED | console tables are never parsed |
===== JOB 42 FINISH : 2026-11-28 10:45:09 +0000 =====
"""


def test_job_times_come_from_the_banners(tmp_path):
    job = parse_log(LOG.format(run_dir=tmp_path))
    assert job.job_id == "42" and job.total_s == 112.0 and job.run_dir == tmp_path


def test_collect_writes_the_three_tables_from_the_run_record(tmp_path):
    RunDir(tmp_path).save_record(_record())
    log = tmp_path / "hpo-pbt-smoke-42.out"
    log.write_text(LOG.format(run_dir=tmp_path))
    text, folder = collect(log)
    assert "| total job time | 112.0 s (0:01:52) |" in text
    assert "| c01 |" in text and "| c02 |" in text and "console tables" not in text
    assert folder == tmp_path / "hpo-pbt-smoke-42.tables"
    assert sorted(p.name for p in folder.iterdir()) == ["best.csv", "job.csv", "results.md", "trials.csv"]


def test_a_job_that_never_started_the_driver_still_gets_its_timing(tmp_path):
    log = tmp_path / "h-1.out"
    log.write_text("===== JOB 1 START : 2026-11-28 10:00:00 +0000 =====\nerror: LR_LOWER=...\n"
                   "===== JOB 1 FINISH : 2026-11-28 10:00:02 +0000 =====\n")
    text, _ = collect(log)
    assert "2.0 s" in text and "did not get as far as a run record" in text


def test_not_a_head_log(tmp_path):
    log = tmp_path / "x.out"
    log.write_text("hello\n")
    with pytest.raises(ConfigError, match="no '===== JOB <id> START"):
        collect(log)
