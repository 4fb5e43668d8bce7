"""Smoke PBT (population 4 x 3 iterations, Ray start-up included): wall time and peak memory of
the whole process tree, against a baseline measured in the same session: the same command with a
single trial, which costs the same start-up (Ray, model, data cache) but trains 1/4 as much."""

from __future__ import annotations

import pytest

from conftest import run_measured

MIB = 1024 * 1024


def _smoke(tmp_path, *extra: str):
    results = tmp_path / "results"
    # a shared cache: tokenizer/model/data are built once, as in a user's second run
    return run_measured(["run", "--preset", "smoke", "--results-dir", str(results), *extra], tmp_path)


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory):
    """Build the tiny model and the tokenized data once so neither measured run pays for it."""
    path = tmp_path_factory.mktemp("bench")
    first = _smoke(path, "--set", "tune.num_samples=1", "--set", "train.iterations=1")
    assert first.returncode == 0, first.output[-3000:]
    return path


def test_smoke_pbt_wall_time_and_peak_memory(benchmark, warm_cache):
    baseline = _smoke(warm_cache, "--set", "tune.num_samples=1")
    assert baseline.returncode == 0, baseline.output[-3000:]
    measured = benchmark.pedantic(lambda: _smoke(warm_cache), rounds=1, iterations=1)
    assert measured.returncode == 0, measured.output[-3000:]
    benchmark.extra_info.update(
        {
            "pbt_wall_s": round(measured.wall_s, 2),
            "pbt_peak_pss_mib": round(measured.peak_bytes / MIB, 1),
            "pbt_peak_processes": measured.peak_processes,
            "baseline_1trial_wall_s": round(baseline.wall_s, 2),
            "baseline_1trial_peak_pss_mib": round(baseline.peak_bytes / MIB, 1),
            "wall_ratio_vs_1trial": round(measured.wall_s / baseline.wall_s, 3),
            "memory_ratio_vs_1trial": round(measured.peak_bytes / baseline.peak_bytes, 3),
            "targets": "wall < 90 s, peak < 3 GiB on 2 cores",
        }
    )
    print(f"\nsmoke PBT 4x3: {measured.wall_s:.1f} s wall, {measured.peak_bytes / MIB:.0f} MiB peak PSS "
          f"({measured.peak_processes} processes); 1-trial baseline: {baseline.wall_s:.1f} s, "
          f"{baseline.peak_bytes / MIB:.0f} MiB")
