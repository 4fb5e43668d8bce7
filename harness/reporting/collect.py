"""Fill the seed's tables after a SLURM job: job timing from the head log's START/FINISH banners,
trials and best trial from the run record the driver wrote (the console table is not a stable
format, so it is never parsed)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from harness.config import ConfigError
from harness.contract.rundir import RunDir
from harness.reporting.report import Table, best_table, duration, trials_table

BANNER = re.compile(r"^===== JOB (\S+) (START|FINISH) : (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}) =====$")
RUN_FOLDER = re.compile(r"^run folder: (.+)$")


@dataclass(frozen=True)
class JobLog:
    job_id: str
    start: datetime
    finish: datetime | None
    run_dir: Path | None

    @property
    def total_s(self) -> float | None:
        return (self.finish - self.start).total_seconds() if self.finish else None


def parse_log(text: str, path: str = "log") -> JobLog:
    starts, finishes, run_dir, job_id = [], [], None, ""
    for line in text.splitlines():
        banner = BANNER.match(line.strip())
        if banner:
            job_id = banner.group(1)
            stamp = datetime.strptime(banner.group(3), "%Y-%m-%d %H:%M:%S %z")
            (starts if banner.group(2) == "START" else finishes).append(stamp)
            continue
        folder = RUN_FOLDER.match(line.strip())
        if folder:
            run_dir = Path(folder.group(1))
    if not starts:
        raise ConfigError(f"{path} has no '===== JOB <id> START : <time> =====' line; give a head job's log")
    return JobLog(job_id=job_id, start=starts[0], finish=finishes[-1] if finishes else None, run_dir=run_dir)


def job_table(job: JobLog) -> Table:
    fmt = "%Y-%m-%d %H:%M:%S %z"
    return Table(
        "job", f"Job {job.job_id} timing", ["field", "value"],
        [["job start", job.start.strftime(fmt)],
         ["job finish", job.finish.strftime(fmt) if job.finish else "not finished (no FINISH line)"],
         ["total job time", duration(job.total_s) if job.total_s is not None else ""]],
    )


def collect(log_path: str | Path) -> tuple[str, Path]:
    """Write ``<log>.tables/`` (markdown + CSV) beside the log; returns (markdown, folder)."""
    log_path = Path(log_path)
    if not log_path.is_file():
        raise ConfigError(f"{str(log_path)!r} does not exist; give a head job log such as logs/hpo-pbt-seed-<id>.out")
    job = parse_log(log_path.read_text(errors="replace"), str(log_path))
    tables = [job_table(job)]
    run_dir = RunDir(job.run_dir) if job.run_dir is not None else None
    if run_dir is None or not run_dir.record_file.is_file():
        note = "the driver did not get as far as a run record (see the log)"
        tables.append(Table("trials", "Trials", ["note"], [[note]]))
    else:
        record = run_dir.record()
        tables += [trials_table(record), best_table(record)]
    out = log_path.with_name(log_path.stem + ".tables")
    out.mkdir(exist_ok=True)
    for table in tables:
        (out / f"{table.name}.csv").write_text(table.csv())
    text = "\n".join(t.markdown() for t in tables)
    (out / "results.md").write_text(text)
    return text, out
