"""`make prepare`: one cache folder with model, tokenizer, dataset and tokenized data, filled once
and then read offline. A local model folder and a local SQuAD JSON (or dataset folder) stand in
for the hub, through the same code path (``from_pretrained``, ``load_dataset``)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.trial import data
from harness.config import ModelConfig
from harness.trial.model import build_tiny_bloom
from harness.trial.cache import slug

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--set", "model.max_length=512", "--set", "data.train_samples=16", "--set", "data.eval_samples=8"]


@pytest.fixture
def stand_ins(tmp_path, squad_sample):
    """A model folder and a SQuAD file where a hub id and a hub dataset would be."""
    model = build_tiny_bloom(ModelConfig(), seed=0, out_dir=tmp_path / "hub" / "model")
    squad = tmp_path / "hub" / "squad.json"
    shutil.copyfile(squad_sample, squad)
    return model, squad


def _prepare(cache: Path, *args: str, check: bool = False) -> tuple[int, str, str]:
    done = subprocess.run([sys.executable, "-m", "harness", "prepare", *(["--check"] if check else []),
                           "--preset", "smoke", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HARNESS_CACHE": str(cache)}, cwd=ROOT)
    return done.returncode, done.stdout, done.stderr


def test_prepare_fills_one_cache_and_a_run_offline_reads_only_from_it(stand_ins, tmp_path):
    model, squad = stand_ins
    cache = tmp_path / "cache"
    sets = ["--set", f"model.name={model}", "--set", f"data.source={squad}", *SMALL]
    rc, out, err = _prepare(cache, *sets)
    assert rc == 0, err
    assert "verified offline" in out
    sizes = dict(re.findall(r"^\s+(model|dataset|tokenized)\s+(\S+) \([\d.,]+ MiB\)$", out, re.M))
    assert set(sizes) == {"model", "dataset", "tokenized"}
    assert all(Path(p).is_relative_to(cache) and Path(p).exists() for p in sizes.values())
    fingerprint = re.search(r"fingerprint ([0-9a-f]{16})$", out, re.M).group(1)

    # The stand-ins are gone, as the hub is from a compute node: the run has only the cache.
    shutil.rmtree(model)
    squad.unlink()
    rc, out, err = _prepare(cache, *sets, check=True)
    assert rc == 0, err
    assert f"fingerprint {fingerprint}" in out
    results = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "harness", "run", "--strategy", "manual", "--preset", "smoke", *sets,
         "--set", "train.iterations=1", "--set", "budget.trial_iterations=2", "--bs-choices", "1", "--wd-choices", "0.0",
         "--results-dir", str(results)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
        env={**os.environ, "HARNESS_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (config,) = results.glob("manual-*/config.json")
    record = json.loads((config.parent / "run_record.json").read_text())
    assert [t["status"] for t in record["trials"]] == ["TERMINATED", "TERMINATED"]
    assert f"model: {sizes['model']}; tokenized data: {sizes['tokenized']}" in (config.parent / "harness.log").read_text()


def test_an_incomplete_cache_names_what_is_missing_and_the_command_that_fills_it(stand_ins, tmp_path):
    model, squad = stand_ins
    cache = tmp_path / "empty cache"
    rc, out, err = _prepare(cache, "--seed", "3", "--set", f"model.name={model}", "--set", f"data.source={squad}",
                            check=True)
    assert rc == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert line == (f"error: the cache {cache} has no model {str(model)!r} (expected {cache}/models/"
                    f"{slug(str(model))}); fill it where there is network: make prepare PRESET=smoke "
                    f"CACHE_DIR='{cache}' HARNESS_ARGS='--seed=3 --set=model.name={model} --set=data.source={squad}'")


def test_a_hub_dataset_is_saved_as_records_and_read_back_without_the_hub(tmp_path, tiny_tokenizer):
    """``hub:<folder>`` goes through ``datasets.load_dataset``, as ``hub:rajpurkar/squad`` does."""
    from harness.trial.cache import dataset_slot
    from harness.trial.prepare import fetch_dataset

    folder = tmp_path / "squad_hub"
    folder.mkdir()
    for split, n in (("train", 12), ("validation", 4)):
        rows = [next(data.synthetic_squad(5, split)) for _ in range(1)] * n
        (folder / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    source = f"hub:{folder}"
    saved = fetch_dataset(source, tmp_path / "cache")
    assert saved == dataset_slot(tmp_path / "cache", source)
    assert sorted(p.name for p in saved.iterdir()) == ["SOURCE", "train.jsonl", "validation.jsonl"]
    shutil.rmtree(folder)
    splits = data.load_squad(source, cache_dir=tmp_path / "cache")
    assert len(list(splits["train"])) == 12 and len(list(splits["validation"])) == 4


def test_the_exact_make_prepare_command_is_a_working_make_invocation(tmp_path, monkeypatch):
    """Only what decides the cache's contents travels: the seed and model/data settings that differ
    from the preset (a budget or a search-space override does not)."""
    from harness.config import resolve
    from harness.trial.cache import prepare_command

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "my cache"))
    cfg = resolve("seed", env={"LR_LOWER": "1e-5"}, overrides={"data.train_samples": "10", "budget.trial_iterations": "40"})
    cmd = prepare_command(cfg)
    assert cmd == f"make prepare PRESET=seed CACHE_DIR='{tmp_path}/my cache' HARNESS_ARGS=--set=data.train_samples=10"
    dry = subprocess.run(["bash", "-c", cmd.replace("make prepare", "make -n prepare", 1)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert f'HARNESS_CACHE="{tmp_path}/my cache"' in dry.stdout
    assert re.search(r"-m harness prepare --preset seed +--set=data.train_samples=10 ", dry.stdout)


def test_bench_cpu_without_its_cache_names_the_make_prepare_line_and_starts_nothing(tmp_path):
    """The cpu preset reads hub:rajpurkar/squad_v2 through the cache only; a clone without it is told
    what to run, before any run folder, Ray or MLflow exists."""
    results, cache = tmp_path / "results", tmp_path / "cache"
    done = subprocess.run(["make", "-s", "bench-cpu", f"PY={sys.executable}", "STAMP=", f"RESULTS_DIR={results}",
                           f"CACHE_DIR={cache}"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode != 0
    first = done.stderr.strip().splitlines()[0]  # make adds its own "*** Error 2" lines after it
    # bench-cpu runs seeds 0..5 (the first one decides the line): its tiny model is built per seed
    assert first == (f"error: the prepared cache {cache} has no dataset 'hub:rajpurkar/squad_v2', and runs read the "
                     f"hub only through it; fill it where there is network: make prepare PRESET=cpu CACHE_DIR={cache} "
                     "HARNESS_ARGS=--seed=0")
    assert not results.exists() and not cache.exists()


def test_the_cpu_preset_prepares_offline_from_a_local_squad_v2_file(squad_sample, tmp_path):
    """What a user without the hub does: point the preset at a SQuAD 2.0 file; make prepare caches
    it, and the run's pre-flight and --check find everything."""
    cache = tmp_path / "cache"
    sets = ["--set", f"data.source={squad_sample}"]
    done = subprocess.run([sys.executable, "-m", "harness", "prepare", "--preset", "cpu", *sets], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "HARNESS_CACHE": str(cache)}, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    sizes = dict(re.findall(r"^\s+(model|dataset|tokenized)\s+(\S+) \([\d.,]+ MiB\)$", done.stdout, re.M))
    assert set(sizes) == {"model", "dataset", "tokenized"}
    check = subprocess.run([sys.executable, "-m", "harness", "prepare", "--check", "--preset", "cpu", *sets],
                           capture_output=True, text=True, timeout=300, env={**os.environ, "HARNESS_CACHE": str(cache)},
                           cwd=ROOT)
    assert check.returncode == 0 and "cache complete for preset cpu" in check.stdout, check.stderr[-2000:]
