from __future__ import annotations

import subprocess
import sys

import pytest

from harness.config import ConfigError, ExperimentConfig, known_keys, resolve

pytestmark = pytest.mark.unit

SEED_SPACE = dict(lr_lower=5e-6, lr_upper=2e-4, bs_choices=(1, 2), wd_choices=(0.0, 0.01))


def test_search_space_defaults_to_the_seed_exercise():
    for preset in ("smoke", "seed"):
        space = resolve(preset, env={}).search
        assert (space.lr_lower, space.lr_upper, space.bs_choices, space.wd_choices) == tuple(SEED_SPACE.values())


def test_seed_preset_matches_the_exercise():
    cfg = resolve("seed", env={})
    assert cfg.model.name == "bigscience/bloom-560m"
    assert (cfg.data.train_samples, cfg.data.eval_samples, cfg.train.iterations) == (1000, 100, 5)
    assert cfg.train.fp16 and cfg.train.deepspeed
    r = cfg.resources
    assert (r.workers_per_trial, r.cpus_per_worker, r.gpus_per_worker) == (2, 2, 1)


def test_smoke_preset_is_tiny_and_offline():
    cfg = resolve("smoke", env={})
    assert cfg.model.name == "tiny-bloom" and cfg.data.source == "synthetic"
    assert cfg.budget_iterations() == 36 and cfg.budget.slots == 4 and cfg.train.iterations >= 3
    assert cfg.resources.gpus_per_worker == 0 and not cfg.train.fp16


def test_precedence_preset_then_env_then_cli():
    env = {"LR_LOWER": "1e-5", "LR_UPPER": "2e-4", "BS_CHOICES": "1 2 4", "WD_CHOICES": "0.0 0.1"}
    cfg = resolve("smoke", env=env, overrides={"search.lr_upper": "3e-4", "budget.trial_iterations": "24"})
    assert cfg.search.lr_lower == 1e-5  # env
    assert cfg.search.lr_upper == 3e-4  # CLI beats env
    assert cfg.search.bs_choices == (1, 2, 4)
    assert cfg.search.wd_choices == (0.0, 0.1)
    assert cfg.budget.trial_iterations == 24  # CLI beats preset


def test_round_trip_through_dict():
    cfg = resolve("seed", env={"BS_CHOICES": "2 4"})
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "env, needle",
    [
        ({"LR_LOWER": "abc"}, "LR_LOWER='abc' is not a number"),
        ({"LR_LOWER": "-1e-5"}, "LR_LOWER='-1e-5' must be > 0: a positive learning rate"),
        ({"LR_UPPER": "0"}, "LR_UPPER='0' must be > 0: a positive learning rate"),
        ({"LR_LOWER": "2e-4", "LR_UPPER": "1e-5"}, "LR_LOWER=0.0002 must be below LR_UPPER=1e-05"),
        ({"LR_LOWER": "1e-4", "LR_UPPER": "1e-4"}, "must be below LR_UPPER"),
        ({"BS_CHOICES": ""}, "BS_CHOICES='' is empty"),
        ({"BS_CHOICES": "1 1"}, "BS_CHOICES='1 1' has duplicate values"),
        ({"BS_CHOICES": "0 2"}, "BS_CHOICES='0 2' has '0', which must be >= 1: batch sizes are whole numbers"),
        ({"BS_CHOICES": "1.5"}, "BS_CHOICES='1.5' has '1.5', which is not an integer"),
        ({"WD_CHOICES": "x"}, "WD_CHOICES='x' has 'x', which is not a number"),
        ({"WD_CHOICES": "0.0 0.0"}, "has duplicate values"),
        ({"LR_UPPER": "nan"}, "is not a finite number"),
    ],
)
def test_bad_environment_values_name_the_variable(env, needle):
    with pytest.raises(ConfigError) as err:
        resolve("smoke", env=env)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_preset_and_key():
    with pytest.raises(ConfigError, match="preset='nope' is unknown; choose one of cpu, seed, smoke"):
        resolve("nope", env={})
    with pytest.raises(ConfigError, match="unknown key 'train.epochs'"):
        resolve("smoke", env={}, overrides={"train.epochs": "3"})


def test_known_keys_are_documented_fields():
    keys = known_keys()
    assert "search.lr_lower" in keys and "tune.synch" in keys and "resources.workers_per_trial" in keys
    from harness.config.settings import SECTIONS

    undocumented = [f"{section}.{name}" for section, model in SECTIONS.items()
                    for name, info in model.model_fields.items() if not info.description]
    undocumented += [name for name, info in ExperimentConfig.model_fields.items()
                     if name not in SECTIONS and not info.description]
    assert undocumented == [], "every field has a docstring under it"


@pytest.mark.parametrize("key, value, needle", [
    ("resources.cpus_per_worker", "0", "must be > 0: Ray cannot place a trial with 0 CPUs; use e.g. 0.5"),
    ("train.deepspeed_stage", "4", "must be <= 3: a ZeRO stage: 1, 2 or 3"),
    ("data.unanswerable", "maybe", "is not allowed; use skip or target"),
    ("tune.metric", "accuracy", "is not allowed; use eval_loss or train_loss"),
    ("train.fp16", "perhaps", "is not a boolean; use true or false"),
    ("tune.quantile_fraction", "0.9", "must be <= 0.5"),
])
def test_a_constraint_lives_on_its_field_and_its_message_names_the_flag(key, value, needle):
    with pytest.raises(ConfigError) as err:
        resolve("smoke", env={}, overrides={key: value}, override_origins={key: f"--set {key}"})
    assert str(err.value) == f"--set {key}={value!r} {needle}"


def test_a_rule_between_fields_names_both_and_where_each_came_from():
    with pytest.raises(ConfigError) as err:
        resolve("smoke", env={}, overrides={"model.tiny_heads": "5"}, override_origins={"model.tiny_heads": "--set h"})
    assert str(err.value) == "model.tiny_hidden_size=64 must be divisible by --set h=5"  # a default: its own name


def test_a_trial_gets_the_validated_object_and_it_survives_pickling():
    import pickle

    cfg = resolve("seed", env={})
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    assert cfg.updated({"train.iterations": 1}).train.iterations == 1 and cfg.train.iterations == 5
    with pytest.raises(ConfigError, match="train.iterations='0' must be >= 1"):
        cfg.updated({"train.iterations": "0"})


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, env=full_env,
                          timeout=120)


@pytest.mark.parametrize(
    "args, env, needle",
    [
        (["run"], {"LR_LOWER": "abc"}, "LR_LOWER='abc' is not a number"),
        (["run"], {"LR_LOWER": "2e-4", "LR_UPPER": "1e-5"}, "must be below LR_UPPER"),
        (["run", "--bs-choices", "0"], {}, "--bs-choices='0' has '0', which must be >= 1"),
        (["run", "--preset", "bogus"], {}, "preset='bogus' is unknown"),
        (["run", "--set", "train.bogus=1"], {}, "--set 'train.bogus' is not a config key"),
        (["run", "--strategy", "hyperband"], {}, "strategy='hyperband' is unknown; choose one of manual, fifo, asha, pbt, pb2"),
        (["run", "--preset", "seed"], {}, "train.fp16=true needs a CUDA GPU"),
        (["run", "--set", "resources.cpus_per_worker=64"], {}, "no trial fits on any node"),
        (["run", "--frobnicate"], {}, "unrecognized arguments: --frobnicate"),
        (["run", "--set", "data.source=hub:squad"], {}, "--set data.source='hub:squad' is a bare hub name"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(args, env, needle, tmp_path):
    results = tmp_path / "results"
    done = _cli(*args, "--results-dir", str(results), env=env)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], done.stderr
    assert not results.exists(), f"a rejected run left {list(results.rglob('*'))}"


def test_cli_config_prints_resolved_values():
    done = _cli("config", "--preset", "smoke", "--lr-upper", "1e-3", env={"BS_CHOICES": "2 4"})
    assert done.returncode == 0, done.stderr
    import json

    cfg = json.loads(done.stdout)
    assert cfg["search"]["lr_upper"] == 1e-3 and cfg["search"]["bs_choices"] == [2, 4]
