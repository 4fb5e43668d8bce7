"""A fault soak: smoke runs, one after another, under faults sent at random moments.

    python tools/soak.py --seed 1 --faults 20          (make soak SEED=1 FAULTS=20)

Against a real ``mlflow server`` on 127.0.0.1 (its own sqlite store in the soak's folder), the
soak starts ``python -m harness run`` and sends, at random moments (``--gap`` seconds apart,
the first within the first seconds of a start), one of:

* ``driver_kill``   SIGKILL to the driver;
* ``usr1``          SIGUSR1 to the driver (what SLURM's ``--signal`` sends before a time limit);
* ``term``          SIGTERM to the driver (what ``scancel`` and a time limit send);
* ``trial_kill``    SIGKILL to one trial process (``ray::ImplicitFunc``);
* ``mlflow_kill``   SIGKILL to the MLflow server, brought back a few seconds later (and always
                    before the next start).

Every driver exit is followed by ``--resume`` of its run, a completed run by a new one, until
the faults are spent and the last run has completed. Then it checks what an operator would:

* every run completed, and every trial holds each of its iterations once in its lineage; an
  iteration that ran twice is kept and marked (``started_from``, the superseded row);
* MLflow: one parent per run, one child per trial, none RUNNING, one value per step;
* no process of a killed driver (found by an environment mark the soak gives each driver, which
  every process it starts inherits) is alive 10 s after the kill, and none at the end;
* no exit by SIGUSR1's default action (138), no refused resume, no traceback.

It prints the figures (the README's soak table) and writes them to ``<out>/soak.json``; exit 1
when a check fails. A developer tool: not part of the harness package.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's harness, for the checks (the drivers run from ROOT too)

from harness.cluster import watchdog  # noqa: E402

KINDS = ("driver_kill", "usr1", "term", "trial_kill", "mlflow_kill")
#: The soak's own mark in each driver's environment (not the harness's: the check stays independent of it).
MARK = "HARNESS_SOAK_MARK"
#: A killed driver's processes must be gone this long after the kill.
LEFTOVER_S = 10.0
EXIT_STOPPED = 75


@dataclass
class Figures:
    seed: int
    faults_planned: int
    faults_sent: dict[str, int] = field(default_factory=dict)
    faults_skipped: int = 0  # trial_kills that found no trial process alive, sent as another kind
    wall_s: float = 0.0
    launches: int = 0
    exits: dict[str, int] = field(default_factory=dict)
    runs_started: int = 0
    runs_completed: int = 0
    resumes_refused: int = 0
    usr1_exit_138: int = 0
    tracebacks: int = 0
    kills_with_leftovers: int = 0
    left_at_end: int = 0
    mlflow_running_left: int = 0
    mlflow_parent_problems: int = 0
    mlflow_child_problems: int = 0
    mlflow_steps_twice: int = 0
    iterations_missing: int = 0
    syncs: int = 0  # runs whose MLflow events waited in their spool at the end (sent by harness sync)
    rows_lost: int = 0  # results in the event log that the record does not hold (or the other way)
    mlflow_points_lost: int = 0  # results in the event log that a trial's MLflow child does not show
    iterations_run_twice: int = 0
    iterations_twice_unmarked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 over a sqlite ``store`` (on ``port``, or a free one): started
    and waited for until it answers, killed with SIGKILL, brought back on the same port. The tests'
    ``serve_mlflow`` fixture runs the same one."""

    def __init__(self, store: Path, *, port: int = 0, artifacts: Path | None = None, workers: int = 0,
                 log: Any = subprocess.DEVNULL):
        self.store, self.artifacts, self.workers, self.log = store, artifacts, workers, log
        if not port:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        self.port = port
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.up():
            return
        args = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
                f"sqlite:///{self.store}", "--host", "127.0.0.1", "--port", str(self.port)]
        args += ["--artifacts-destination", str(self.artifacts)] if self.artifacts else []
        args += ["--workers", str(self.workers)] if self.workers else []
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=self.log, start_new_session=True,
                                     env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server did not answer on port {self.port}") from None
                time.sleep(0.3)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """End the server and its workers (its own process group); SIGTERM for an orderly stop."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:  # an orderly stop that hangs (a loaded machine: 20 s seen)
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(15)


def lineage_whole(history: list[Any], planned: int) -> bool:
    """Each iteration once, from 1 to ``planned``: every row follows the one before it, or starts
    where an exploit restored its donor's checkpoint (the donor trained the iterations before)."""
    previous = 0
    for row in history:
        start = int(row.segment_start_iteration or 0) if row.exploited_from else previous
        if row.iteration != start + 1 or (not row.exploited_from and row.iteration != previous + 1):
            return False
        previous = row.iteration
    return previous == planned


def trial_process(driver: psutil.Process) -> psutil.Process | None:
    try:
        kids = driver.children(recursive=True)
    except psutil.Error:
        return None
    trials = []
    for proc in kids:
        try:
            if (proc.cmdline() or [""])[0].startswith("ray::ImplicitFunc"):
                trials.append(proc)
        except psutil.Error:
            continue
    return random.choice(trials) if trials else None


class Soak:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.rng = random.Random(args.seed)
        self.out = Path(args.out).resolve()
        self.results = self.out / "results"
        self.results.mkdir(parents=True, exist_ok=True)
        self.server = MlflowServer(self.out / "mlflow.db", artifacts=self.out / "mlartifacts", workers=1,
                                   log=open(self.out / "mlflow-server.log", "a"))
        self.fig = Figures(seed=args.seed, faults_planned=args.faults)
        self.mark = uuid.uuid4().hex
        self.launch_no = 0
        self.run_dir: Path | None = None  # the run being driven (None: the next launch starts a new one)
        self.server_back_at: float | None = None
        self.started_new = False
        self.failures = 0  # consecutive exits 1 or 2 of the run being driven
        self.journal = open(self.out / "soak.log", "a")

    def say(self, text: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {text}"
        print(line, flush=True)
        self.journal.write(line + "\n")
        self.journal.flush()

    # -- the driver --------------------------------------------------------------------------

    def launch(self) -> tuple[subprocess.Popen, Path]:
        self.server.start()  # before each start the server is back
        self.server_back_at = None
        self.launch_no += 1
        self.fig.launches += 1
        if self.run_dir is None:
            args = ["--preset", self.args.preset, "--strategy", self.args.strategy, "--results-dir", str(self.results),
                    "--seed", str(self.args.run_seed), *[f"--set={item}" for item in self.args.sets]]
            self.before = set(self.results.iterdir())
        else:
            args = ["--resume", str(self.run_dir)]
        logs = self.out / "drivers"
        logs.mkdir(exist_ok=True)
        stderr = logs / f"{self.launch_no:03d}.err"
        env = {**os.environ, MARK: self.mark, "MLFLOW_TRACKING_URI": self.server.uri, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}
        proc = subprocess.Popen([sys.executable, "-m", "harness", "run", *args], cwd=ROOT, env=env,
                                stdout=open(logs / f"{self.launch_no:03d}.out", "w"), stderr=open(stderr, "w"),
                                start_new_session=True)
        self.say(f"launch {self.launch_no}: pid {proc.pid} {' '.join(args[:2])}")
        return proc, stderr

    def new_run_dir(self) -> Path | None:
        made = [p for p in set(self.results.iterdir()) - self.before
                if (p / "config.json").is_file() and not p.name.startswith(".")]  # not a staging folder
        return max(made, key=lambda p: p.stat().st_mtime) if made else None

    def ended(self, proc: subprocess.Popen, stderr: Path) -> None:
        rc = proc.returncode
        text = stderr.read_text(errors="replace")
        key = str(rc) if rc >= 0 else f"signal {signal.Signals(-rc).name}"
        self.fig.exits[key] = self.fig.exits.get(key, 0) + 1
        if rc == -signal.SIGUSR1:
            self.fig.usr1_exit_138 += 1
            self.fig.problems.append(f"launch {self.launch_no}: SIGUSR1's default action ended the driver (138)")
        if "Traceback (most recent call last)" in text:
            self.fig.tracebacks += 1
            self.fig.problems.append(f"launch {self.launch_no}: a traceback in {stderr}")
        self.started_new = self.run_dir is None
        if self.run_dir is None:
            self.run_dir = self.new_run_dir()
            if self.run_dir is not None:
                self.fig.runs_started += 1
        resumed = self.run_dir is not None and not self.started_new
        if rc == 2 and resumed:  # a resume that said no: whatever the reason, the run cannot go on
            self.fig.resumes_refused += 1
            self.fig.problems.append(f"launch {self.launch_no}: resume refused: {(text.strip().splitlines() or [''])[-1]}")
            self.run_dir = None
        elif rc == 0:
            self.fig.runs_completed += 1
            self.say(f"  run complete: {self.run_dir}")
            self.run_dir = None
        elif rc in (1, 2):
            self.fig.problems.append(f"launch {self.launch_no}: exit {rc}: {(text.strip().splitlines() or [''])[-1]}")
            self.failures += 1
            if self.failures >= 3 or self.run_dir is None:  # the same run failing again and again: give it up
                self.run_dir = None
        if rc not in (1, 2):
            self.failures = 0
        self.say(f"  exit {key}")

    def after_kill(self, driver_pid: int) -> None:
        """The killed driver's processes must be gone within LEFTOVER_S."""
        deadline = time.monotonic() + LEFTOVER_S
        left = watchdog.marked(self.mark, variable=MARK)
        while left and time.monotonic() < deadline:
            time.sleep(0.5)
            left = watchdog.marked(self.mark, variable=MARK)
        if left:
            self.fig.kills_with_leftovers += 1
            names = sorted({" ".join(p.cmdline()[:2])[:60] for p in left if p.is_running()})
            self.fig.problems.append(f"driver {driver_pid} killed: {len(left)} process(es) alive {LEFTOVER_S:.0f} s "
                                     f"later: {names}")
            for p in left:
                try:
                    p.kill()
                except psutil.Error:
                    pass

    # -- faults ------------------------------------------------------------------------------

    def fault(self, proc: subprocess.Popen) -> bool:
        """Send the next fault; True when it ended the driver by SIGKILL (already waited for). A
        trial_kill with no trial process alive (start-up, a barrier) becomes another kind."""
        kind = self.rng.choice(self.args.kinds)
        victim = None
        if kind == "trial_kill":
            victim = trial_process(psutil.Process(proc.pid))
            others = [k for k in self.args.kinds if k != "trial_kill"]
            if victim is None and others:
                self.fig.faults_skipped += 1
                kind = self.rng.choice(others)
        self.say(f"  fault: {kind} ({sum(self.fig.faults_sent.values()) + 1}/{self.args.faults})")
        if kind == "trial_kill":
            if victim is None:
                self.say("    no trial process alive")
                return False
            victim.kill()
        elif kind == "mlflow_kill":
            self.server.kill()
            self.server_back_at = time.monotonic() + self.rng.uniform(2, 10)
        elif kind == "driver_kill":
            proc.kill()
            proc.wait()
        else:
            proc.send_signal(signal.SIGUSR1 if kind == "usr1" else signal.SIGTERM)
        self.fig.faults_sent[kind] = self.fig.faults_sent.get(kind, 0) + 1
        return kind == "driver_kill"

    def run(self) -> Figures:
        started = time.monotonic()
        gap_lo, gap_hi = self.args.gap
        sent = 0
        deadline = started + self.args.max_minutes * 60
        try:
            while time.monotonic() < deadline:
                if sent >= self.args.faults and self.run_dir is None and self.fig.runs_completed:
                    break
                proc, stderr = self.launch()
                launched = time.monotonic()
                # the first fault of a launch can come in its first seconds
                next_fault = launched + (self.rng.uniform(0.5, gap_hi) if sent < self.args.faults else float("inf"))
                while proc.poll() is None and time.monotonic() < deadline:
                    now = time.monotonic()
                    if self.server_back_at is not None and now >= self.server_back_at:
                        self.server.start()
                        self.server_back_at = None
                        self.say("  mlflow server back")
                    if now >= next_fault and sent < self.args.faults:
                        killed = self.fault(proc)
                        sent += 1
                        if killed:
                            self.after_kill(proc.pid)
                            break
                        next_fault = now + self.rng.uniform(gap_lo, gap_hi)
                    time.sleep(0.1)
                if proc.poll() is None:  # the soak's own deadline
                    proc.kill()
                    proc.wait()
                    self.fig.problems.append("the soak ran out of time (--max-minutes) before the last run completed")
                    break
                self.ended(proc, stderr)
                if proc.returncode not in (0, -signal.SIGKILL):
                    self.after_kill(proc.pid)  # a driver that exited on its own leaves nothing either
        finally:
            self.fig.wall_s = round(time.monotonic() - started, 1)
            self.server.start()
        self.check()
        self.server.kill()
        return self.fig

    # -- the checks at the end -----------------------------------------------------------------

    def check(self) -> None:
        from mlflow.tracking import MlflowClient

        from harness.contract.rundir import RunDir

        deadline = time.monotonic() + LEFTOVER_S  # the last driver's watchdog exits just after it
        left = watchdog.marked(self.mark, variable=MARK)
        while left and time.monotonic() < deadline:
            time.sleep(0.5)
            left = watchdog.marked(self.mark, variable=MARK)
        self.fig.left_at_end = len(left)
        if left:
            self.fig.problems.append(f"{len(left)} process(es) of the soak's drivers alive at the end")
        for folder in sorted(self.results.iterdir()):  # what an operator does after an outage: harness sync
            spool = folder / "mlflow_spool.jsonl"
            if not folder.name.startswith(".") and spool.is_file() and spool.read_text().strip():
                done = subprocess.run([sys.executable, "-m", "harness", "sync", str(folder)], cwd=ROOT,
                                      capture_output=True, text=True, timeout=300,
                                      env={**os.environ, "MLFLOW_TRACKING_URI": self.server.uri,
                                           "PYTHONPATH": str(ROOT)})
                self.fig.syncs += 1
                self.say(f"  harness sync {folder.name}: exit {done.returncode}")
                if done.returncode != 0 or "Traceback" in done.stderr:
                    self.fig.problems.append(f"harness sync {folder.name}: exit {done.returncode}: "
                                             f"{(done.stderr.strip().splitlines() or [''])[-1]}")
        client = MlflowClient(tracking_uri=self.server.uri)
        experiments = client.search_experiments()
        runs = [r for e in experiments for r in client.search_runs([e.experiment_id], max_results=10000)]
        self.fig.mlflow_running_left = sum(r.info.status == "RUNNING" for r in runs)
        if self.fig.mlflow_running_left:
            self.fig.problems.append(f"{self.fig.mlflow_running_left} MLflow run(s) left RUNNING")
        folders = sorted(p for p in self.results.iterdir() if (p / "config.json").is_file() and not p.name.startswith("."))
        strays = [p.name for p in self.results.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and p not in folders]
        if strays:
            self.fig.problems.append(f"run folders without config.json (no --resume takes them): {strays}")
        for folder in folders:
            run_dir = RunDir(folder)
            record = run_dir.replay()
            if not record.finished_at or record.stopped or record.open_trials:
                self.fig.problems.append(f"{folder.name}: not complete")
                continue
            planned = int(record.config["train"]["iterations"])
            # what the trials reported, read from the event log itself (not through the harness's fold)
            reported: dict[str, list[int]] = {}
            for line in run_dir.events_file.read_text().splitlines():
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if event.get("event") == "trial_result":
                    reported.setdefault(event["trial_id"], []).append(int(event["row"].get("iteration") or 0))
            unmarked_here = 0
            for trial in record.trials:
                if not lineage_whole(trial.history, planned):
                    self.fig.iterations_missing += 1
                    self.fig.problems.append(f"{folder.name} {trial.label}: lineage "
                                             f"{[(r.iteration, r.exploited_from[-5:]) for r in trial.history]}")
                again = list(getattr(trial, "superseded", []))  # the harness's mark: kept beside the history
                got = reported.get(trial.trial_id, [])
                twice = len(got) - len(set(got))  # iterations this trial reported more than once
                self.fig.iterations_run_twice += twice
                kept = len(trial.history) + len(again)
                if kept != len(got):
                    self.fig.rows_lost += abs(len(got) - kept)
                    self.fig.problems.append(f"{folder.name} {trial.label}: {len(got)} results reported, "
                                             f"{kept} in the record")
                for iteration, count in Counter(got).items():  # each rerun: kept apart, each row with its start
                    rows = [r for r in trial.history + again if r.iteration == iteration]
                    apart = sum(r.iteration == iteration for r in again)
                    if count > 1 and (apart != count - 1 or not all(getattr(r, "started_from", "") for r in rows)):
                        unmarked_here += count - 1
            self.fig.iterations_twice_unmarked += unmarked_here
            if unmarked_here:
                self.fig.problems.append(f"{folder.name}: {unmarked_here} iteration(s) run twice without their mark "
                                         "(not kept apart, or no started_from)")
            parents = [r for r in runs if r.data.tags.get("run_dir") == str(run_dir.path)]
            if len(parents) != 1:
                self.fig.mlflow_parent_problems += 1
                self.fig.problems.append(f"{folder.name}: {len(parents)} MLflow parent runs")
                continue
            children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
            # a trial discarded by a resume without Ray Tune state keeps its child only if it logged iterations
            expected = [t.trial_id for t in record.trials + [d for d in getattr(record, "discarded", []) if d.rows_run]]
            if sorted(c.data.tags.get("trial_id") for c in children) != sorted(expected):
                self.fig.mlflow_child_problems += 1
                self.fig.problems.append(f"{folder.name}: {len(children)} MLflow children for {len(record.trials)} "
                                         "trials")
            for child in children:
                points = client.get_metric_history(child.info.run_id, "eval_loss")
                sent = len(reported.get(child.data.tags.get("trial_id", ""), []))
                if len(points) != sent and "discarded" not in child.data.tags:
                    self.fig.mlflow_points_lost += abs(sent - len(points))
                    self.fig.problems.append(f"{folder.name} {child.info.run_name}: {len(points)} eval_loss points "
                                             f"for {sent} results")
                for key in ("eval_loss", "iteration"):
                    steps = [m.step for m in client.get_metric_history(child.info.run_id, key)]
                    if len(steps) != len(set(steps)):
                        self.fig.mlflow_steps_twice += 1
                        self.fig.problems.append(f"{folder.name} {child.info.run_name}: {key} has a step twice")
                        break
        if not folders:
            self.fig.problems.append("no run folder was made")


def report(fig: Figures) -> str:
    rows = [
        ("faults sent", ", ".join(f"{k} {v}" for k, v in sorted(fig.faults_sent.items()))
         + (f" ({fig.faults_skipped} trial_kill with no trial alive sent as another kind)" if fig.faults_skipped
            else "")),
        ("wall, launches", f"{fig.wall_s:.0f} s, {fig.launches}"),
        ("driver exits", ", ".join(f"{k}: {v}" for k, v in sorted(fig.exits.items()))),
        ("runs started / completed", f"{fig.runs_started} / {fig.runs_completed}"),
        ("runs that needed `harness sync` at the end", fig.syncs),
        ("resumes refused", fig.resumes_refused),
        ("USR1 that ended in exit 138", fig.usr1_exit_138),
        ("driver tracebacks", fig.tracebacks),
        (f"driver kills after which processes lived {LEFTOVER_S:.0f} s on", fig.kills_with_leftovers),
        ("processes left at the end", fig.left_at_end),
        ("MLflow runs left RUNNING", fig.mlflow_running_left),
        ("MLflow parents/children wrong, steps logged twice",
         f"{fig.mlflow_parent_problems} / {fig.mlflow_child_problems}, {fig.mlflow_steps_twice}"),
        ("trials missing iterations", fig.iterations_missing),
        ("results lost: record, MLflow", f"{fig.rows_lost}, {fig.mlflow_points_lost}"),
        ("iterations run twice (marked / unmarked)",
         f"{fig.iterations_run_twice - fig.iterations_twice_unmarked} / {fig.iterations_twice_unmarked}"),
    ]
    lines = [f"soak seed {fig.seed}: {'OK' if fig.ok else 'FAILED'}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    lines += [f"- {p}" for p in fig.problems]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0, help="the fault schedule's seed")
    p.add_argument("--faults", type=int, default=20)
    p.add_argument("--gap", type=float, nargs=2, default=(4.0, 13.0), metavar=("MIN_S", "MAX_S"),
                   help="seconds between faults (uniform)")
    p.add_argument("--kinds", type=lambda s: s.split(","), default=list(KINDS), help=",".join(KINDS))
    p.add_argument("--preset", default="smoke")
    p.add_argument("--strategy", default="pbt")
    p.add_argument("--run-seed", type=int, default=0, help="the runs' own --seed")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for the runs, as `harness run --set` (repeatable)")
    p.add_argument("--out", default=None, help="the soak's folder (default results/soak-<seed>-<time>)")
    p.add_argument("--max-minutes", type=float, default=30.0)
    args = p.parse_args(argv)
    bad = [k for k in args.kinds if k not in KINDS]
    if bad:
        p.exit(2, f"error: --kinds {','.join(bad)}: not a fault kind; known: {','.join(KINDS)}\n")
    args.out = args.out or str(ROOT / "results" / f"soak-{args.seed}-{time.strftime('%Y%m%d-%H%M%S')}")
    fig = Soak(args).run()
    text = report(fig)
    print(text)
    Path(args.out, "soak.json").write_text(json.dumps({**asdict(fig), "ok": fig.ok}, indent=2))
    Path(args.out, "soak.md").write_text(text + "\n")
    return 0 if fig.ok else 1


if __name__ == "__main__":
    sys.exit(main())
