"""harness bench: many runs in one driver; a stop (Ray Tune takes SIGUSR1 itself while it runs, so
the run's record is what says so) starts no further run."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from harness import tasks
from harness.cluster import stop
from harness.driver import bench, runner

pytestmark = pytest.mark.unit


def _configs(n: int) -> list:
    return [tasks.resolve("null_control", env={}, overrides={"strategy": "manual", "seed": seed}) for seed in range(n)]


def test_a_run_that_ended_stopped_ends_the_bench(monkeypatch):
    started = []

    def fake_run(cfg, **kw):
        started.append(cfg.seed)
        return SimpleNamespace(record=SimpleNamespace(stopped="SIGUSR1 (a time limit)" if cfg.seed == 1 else ""))

    monkeypatch.setattr(runner, "run", fake_run)
    stop.reset()
    runs = bench.bench(_configs(4))
    assert started == [0, 1] and [r.outcome is not None for r in runs] == [True, True, False, False]


def test_a_stop_before_a_run_starts_none(monkeypatch):
    monkeypatch.setattr(runner, "run", lambda cfg, **kw: pytest.fail("a run started after the stop"))
    monkeypatch.setattr(stop, "_reason", "SIGUSR1")
    try:
        assert [r.outcome for r in bench.bench(_configs(2))] == [None, None]
    finally:
        stop.reset()
