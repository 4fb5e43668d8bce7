"""One experiment configuration, resolved once in the driver and handed to every trial.

Precedence, lowest to highest: the dataclass defaults below < the TOML preset
(``harness/config/presets/<name>.toml`` or a path) < the environment overrides of the seed
exercise (``LR_LOWER``, ``LR_UPPER``, ``BS_CHOICES``, ``WD_CHOICES``) < CLI flags
(``--lr-lower`` ... and ``--set section.key=value``).

Every bad value raises :class:`ConfigError` whose message is one line naming where the
value came from, the value, and what is allowed; the CLI turns it into exit code 2
before Ray, MLflow or a model is touched.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRESET_DIR = Path(__file__).resolve().parent / "presets"

#: Environment variables of the seed exercise, mapped to the search-space field they set.
ENV_OVERRIDES: dict[str, str] = {
    "LR_LOWER": "search.lr_lower",
    "LR_UPPER": "search.lr_upper",
    "BS_CHOICES": "search.bs_choices",
    "WD_CHOICES": "search.wd_choices",
}


class ConfigError(ValueError):
    """A configuration value is unusable; the message says which, why and how to fix it."""


#: Legacy bare hub dataset names and their canonical ``namespace/name`` ids.
CANONICAL_DATASETS = {full.split("/")[1]: full for full in ("rajpurkar/squad", "rajpurkar/squad_v2")}


def hub_dataset_problem(source: str, origin: str = "data.source") -> str:
    """Why a ``hub:<name>`` source cannot load, or "" when it can be tried.

    The pinned datasets 5.2 with its huggingface_hub refuses a name without a namespace
    (``HfUriError: Repository id must be 'namespace/name'``, huggingface/datasets#8612), and on
    SLURM that surfaced only in the driver, after Ray was up. A local dataset folder is fine.
    """
    name = source.removeprefix("hub:")
    if not name:
        return f"{origin}='hub:' names no dataset; use hub:rajpurkar/squad or hub:<local dataset folder>"
    if "/" in name or Path(name).exists():
        return ""
    fix = CANONICAL_DATASETS.get(name, f"<namespace>/{name}")
    return (f"{origin}={source!r} is a bare hub name, which the pinned datasets library refuses "
            f"(huggingface/datasets#8612); write hub:{fix}")


@dataclass(frozen=True)
class SearchSpace:
    """What the strategies search over (and PBT mutates). It owns every form the space takes: the
    Ray sampling space, the manual grid, PBT's mutations and the clipping of explored values."""

    lr_lower: float = 5e-6
    """Lowest learning rate, inclusive (log-uniform sampling). ``LR_LOWER``."""
    lr_upper: float = 2e-4
    """Highest learning rate, inclusive. ``LR_UPPER``."""
    bs_choices: tuple[int, ...] = (1, 2)
    """Per-device train batch sizes. ``BS_CHOICES="1 2"``."""
    wd_choices: tuple[float, ...] = (0.0, 0.01)
    """Weight decays. ``WD_CHOICES="0.0 0.01"``."""

    def grid_lrs(self, n_lrs: int) -> list[float]:
        """``n_lrs`` learning rates log-spaced over [lr_lower, lr_upper], both ends exactly included."""
        if n_lrs == 1:
            return [math.sqrt(self.lr_lower * self.lr_upper)]
        step = (math.log(self.lr_upper) - math.log(self.lr_lower)) / (n_lrs - 1)
        lrs = [math.exp(math.log(self.lr_lower) + i * step) for i in range(n_lrs)]
        lrs[0], lrs[-1] = self.lr_lower, self.lr_upper
        return lrs

    def grid(self, n_lrs: int) -> list[dict[str, Any]]:
        """The seed's manual grid: :meth:`grid_lrs` x batch sizes x weight decays, in a fixed order."""
        return [
            {"lr": lr, "per_device_train_batch_size": bs, "weight_decay": wd}
            for lr in self.grid_lrs(n_lrs) for bs in self.bs_choices for wd in self.wd_choices
        ]

    def ray_grid(self, n_lrs: int) -> dict[str, Any]:
        """The grid as Ray Tune grid searches (Ray runs their cartesian product)."""
        from ray import tune

        return {
            "lr": tune.grid_search(self.grid_lrs(n_lrs)),
            "per_device_train_batch_size": tune.grid_search(list(self.bs_choices)),
            "weight_decay": tune.grid_search(list(self.wd_choices)),
        }

    def ray_space(self) -> dict[str, Any]:
        """Initial sampling: lr log-uniform, batch size and weight decay from their choices."""
        from ray import tune

        return {
            "lr": tune.loguniform(self.lr_lower, self.lr_upper),
            "per_device_train_batch_size": tune.choice(list(self.bs_choices)),
            "weight_decay": tune.choice(list(self.wd_choices)),
        }

    def mutations(self, rng: Any) -> dict[str, Any]:
        """PBT's ``hyperparam_mutations``; lr is resampled log-uniformly from ``rng`` (a
        ``tune.loguniform`` Domain would resample from numpy's process-wide state)."""
        log_lo, log_hi = math.log(self.lr_lower), math.log(self.lr_upper)
        return {
            "lr": lambda: math.exp(rng.uniform(log_lo, log_hi)),
            "per_device_train_batch_size": list(self.bs_choices),
            "weight_decay": list(self.wd_choices),
        }

    def bounds(self) -> dict[str, list[float]]:
        """Continuous bounds of every dimension (PB2 models the space as a box)."""
        return {
            "lr": [self.lr_lower, self.lr_upper],
            "per_device_train_batch_size": [float(min(self.bs_choices)), float(max(self.bs_choices))],
            "weight_decay": [float(min(self.wd_choices)), float(max(self.wd_choices))],
        }

    def clip(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """Keep an explored config inside the user's bounds and choices.

        Ray's explore step multiplies a continuous value by 0.8 or 1.2 and does not clip, so an
        lr near LR_UPPER would leave the range the user asked for; PB2 proposes continuous batch
        sizes. Values off the choices snap to the nearest allowed one.
        """
        out = dict(config)
        out["lr"] = min(max(float(out["lr"]), self.lr_lower), self.lr_upper)
        for key, choices in (("per_device_train_batch_size", self.bs_choices), ("weight_decay", self.wd_choices)):
            if out[key] not in choices:
                out[key] = min(choices, key=lambda c: abs(c - float(out[key])))
        return out


@dataclass(frozen=True)
class ModelConfig:
    name: str = "tiny-bloom"
    """``tiny-bloom`` (built offline), a hub id such as ``bigscience/bloom-560m``, or a local
    model directory. ``make prepare`` saves it into the harness cache, where runs find it first."""
    max_length: int = 128
    """Tokens per example (question + context + answer); longer examples are dropped and counted."""
    tiny_vocab_size: int = 2000
    """tiny-bloom only: size of the byte-level BPE vocabulary trained locally."""
    tiny_hidden_size: int = 64
    """tiny-bloom only: hidden size of the BloomConfig."""
    tiny_layers: int = 2
    """tiny-bloom only: number of transformer blocks."""
    tiny_heads: int = 4
    """tiny-bloom only: attention heads."""


@dataclass(frozen=True)
class DataConfig:
    source: str = "synthetic"
    """``synthetic`` (deterministic offline generator), ``hub:<dataset name or local dataset
    folder>`` (through ``datasets.load_dataset``, e.g. ``hub:rajpurkar/squad``), or a path to a SQuAD
    JSON file in the official v1.1/v2.0 layout."""
    train_samples: int = 1000
    """Training examples kept after preprocessing."""
    eval_samples: int = 100
    """Validation examples kept after preprocessing."""
    unanswerable: str = "skip"
    """SQuAD 2.0 questions without an answer: ``skip`` them (counted) or train them toward
    the literal answer ``unanswerable`` (``target``)."""


@dataclass(frozen=True)
class TrainConfig:
    iterations: int = 5
    """Ray Tune iterations per trial: one evaluation + checkpoint + ``eval_loss`` report each."""
    steps_per_iteration: int = 0
    """Optimizer steps per iteration; 0 means one epoch per iteration (the seed's choice)."""
    lr_scheduler: str = "constant"
    """HF scheduler type. ``constant`` keeps the optimizer's lr equal to the trial's lr, which
    is what PBT mutates; a decaying schedule would restart at every exploit."""
    warmup_steps: int = 0
    """Warm-up steps of every training segment."""
    eval_batch_size: int = 8
    """Per-device evaluation batch size (not searched)."""
    fp16: bool = False
    """Mixed precision on CUDA; refused on a machine without a GPU."""
    bf16: bool = False
    """bfloat16 mixed precision (Ampere and newer GPUs; CPUs that support it)."""
    deepspeed: bool = False
    """Train through DeepSpeed ZeRO (config generated by the harness); needs the package."""
    deepspeed_stage: int = 2
    """ZeRO stage when ``deepspeed`` is on (1, 2 or 3)."""


@dataclass(frozen=True)
class ResourcesConfig:
    """Per-trial resources: one placement-group bundle of W*Cw CPUs and W*Gw GPUs on one node."""

    workers_per_trial: int = 1
    """W: torch.distributed processes a trial launches (DDP/DeepSpeed ranks)."""
    cpus_per_worker: float = 1.0
    """Cw: CPUs reserved per worker (fractions allowed, e.g. 0.5 to pack trials on a laptop)."""
    gpus_per_worker: float = 0.0
    """Gw: GPUs reserved per worker."""


@dataclass(frozen=True)
class BudgetConfig:
    """What every strategy of one comparison may spend, so that their results can be compared.

    The grid strategies train ``trial_iterations / iterations`` combinations, PBT and PB2 a
    population of that size, ASHA samples configurations until the iterations are spent.
    """

    trial_iterations: int = 0
    """Training iterations (epochs) summed over all trials; 0 means the grid's: ``tune.grid_lrs``
    x |bs_choices| x |wd_choices| x ``train.iterations``. An explicit budget sets the grid's number
    of learning rates instead (rounded down to whole combinations)."""
    slots: int = 0
    """Trials that may run at once; 0 means as many as the resources fit. A local Ray is started
    with just enough CPUs/GPUs for that many trials; on a cluster the cluster's size decides (the
    slots a run really had are recorded). The sequential grid always uses one."""


@dataclass(frozen=True)
class TuneSettings:
    """Ray Tune settings shared by the Ray strategies."""

    metric: str = "eval_loss"
    """The metric every strategy optimizes and every report ranks by."""
    mode: str = "min"
    """``min`` or ``max``: the direction in which ``metric`` is better."""
    grid_lrs: int = 3
    """manual / fifo: learning rates log-spaced over [lr_lower, lr_upper] in the grid (x bs x wd),
    when ``budget.trial_iterations`` is 0."""
    asha_grace_period: int = 1
    """ASHA: iterations every trial gets before it can be stopped."""
    asha_reduction_factor: int = 2
    """ASHA: keep the top 1/reduction_factor at each rung."""
    synch: bool = False
    """PBT: synchronous rounds (every trial waits for the others at each perturbation)."""
    quantile_fraction: float = 0.25
    """PBT: fraction of the population that is exploited (bottom) and cloned from (top)."""
    resample_probability: float = 0.25
    """PBT: probability of resampling a value instead of perturbing it by 0.8/1.2."""
    num_to_keep: int = 3
    """Checkpoints kept per trial: enough for exploits (Ray warns at <= 2), bounded for disk."""
    reuse_actors: bool = True
    """Reuse Ray actors between trial segments (an iteration took ~12 s without, ~2 s with)."""
    max_failures: int = 2
    """Times a failed trial is restarted from its last checkpoint before it counts as errored
    (Ray Tune's ``FailureConfig``; the manual grid does the same)."""


@dataclass(frozen=True)
class ExperimentConfig:
    strategy: str = ""
    """Registered strategy name (``python -m harness strategies`` lists them); the presets run PBT."""
    preset: str = "smoke"
    """Preset the values were loaded from (recorded with the run)."""
    seed: int = 42
    """Seeds data generation, model init, trial sampling and training."""
    results_dir: str = "results"
    """Where run folders and the default MLflow store go (made absolute on resolve)."""
    run_name: str = ""
    """Folder name under ``results_dir``; empty means ``<strategy>-<preset>-<timestamp>``."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchSpace = field(default_factory=SearchSpace)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    tune: TuneSettings = field(default_factory=TuneSettings)
    budget: BudgetConfig = field(default_factory=BudgetConfig)

    def grid_lrs(self) -> int:
        """Learning rates in the grid: ``tune.grid_lrs``, or as many as an explicit budget pays for."""
        if not self.budget.trial_iterations:
            return self.tune.grid_lrs
        per_lr = self.train.iterations * len(self.search.bs_choices) * len(self.search.wd_choices)
        return self.budget.trial_iterations // per_lr

    def budget_iterations(self) -> int:
        """The comparison's budget in trial-iterations (see :class:`BudgetConfig`)."""
        if self.budget.trial_iterations:
            return self.budget.trial_iterations
        return self.tune.grid_lrs * len(self.search.bs_choices) * len(self.search.wd_choices) * self.train.iterations

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """``section.key`` -> value, e.g. for MLflow params."""
        out: dict[str, Any] = {}
        for key, value in self.to_dict().items():
            if isinstance(value, dict):
                out.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                out[key] = value
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExperimentConfig:
        """Inverse of :meth:`to_dict` (values are validated again)."""
        return _build(data, origin="config")


# --------------------------------------------------------------------------- field parsing

_SECTIONS: dict[str, type] = {
    f.name: f.default_factory  # type: ignore[misc]
    for f in dataclasses.fields(ExperimentConfig)
    if f.default_factory is not dataclasses.MISSING
}


def known_keys() -> list[str]:
    keys = [f.name for f in dataclasses.fields(ExperimentConfig) if f.name not in _SECTIONS]
    for section, klass in _SECTIONS.items():
        keys += [f"{section}.{f.name}" for f in dataclasses.fields(klass)]
    return keys


def _field_type(key: str) -> Any:
    section, _, name = key.rpartition(".")
    klass = _SECTIONS[section] if section else ExperimentConfig
    hints = typing.get_type_hints(klass)
    return hints[name]


def _parse_scalar(kind: type, raw: Any, origin: str) -> Any:
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{origin}={raw!r} is not a boolean; use true or false")
    if kind is int:
        if isinstance(raw, bool):
            raise ConfigError(f"{origin}={raw!r} is not an integer; use a whole number such as 2")
        try:
            value = float(str(raw).strip())
        except ValueError:
            raise ConfigError(f"{origin}={raw!r} is not an integer; use a whole number such as 2") from None
        if not value.is_integer():
            raise ConfigError(f"{origin}={raw!r} is not an integer; use a whole number such as 2")
        return int(value)
    if kind is float:
        try:
            value = float(str(raw).strip())
        except ValueError:
            raise ConfigError(f"{origin}={raw!r} is not a number; use a decimal such as 1e-4") from None
        if not math.isfinite(value):
            raise ConfigError(f"{origin}={raw!r} is not a finite number; use a decimal such as 1e-4")
        return value
    return str(raw)


def parse_value(key: str, raw: Any, origin: str | None = None) -> Any:
    """Coerce ``raw`` (string from env/CLI, or a TOML value) to the type of field ``key``."""
    origin = origin or key
    kind = _field_type(key)
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        if isinstance(raw, str):
            parts = raw.replace(",", " ").split()
        elif isinstance(raw, (list, tuple)):
            parts = list(raw)
        else:
            parts = [raw]
        if not parts:
            raise ConfigError(f"{origin}={raw!r} is empty; give at least one value, e.g. {origin}=\"1 2\"")
        values = tuple(_parse_scalar(item, p, origin) for p in parts)
        if len(set(values)) != len(values):
            raise ConfigError(f"{origin}={raw!r} has duplicate values; list each choice once")
        return values
    if isinstance(kind, types.UnionType):  # pragma: no cover - no optional fields today
        kind = typing.get_args(kind)[0]
    return _parse_scalar(kind, raw, origin)


# --------------------------------------------------------------------------- validation

def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def validate(cfg: ExperimentConfig, origins: Mapping[str, str] | None = None) -> ExperimentConfig:
    """Check cross-field rules; ``origins`` maps a key to the name the user set it by."""
    o = {k: k for k in known_keys()}
    o.update(origins or {})
    s = cfg.search
    _check(s.lr_lower > 0, f"{o['search.lr_lower']}={s.lr_lower!r} must be a positive learning rate, e.g. 5e-6")
    _check(s.lr_upper > 0, f"{o['search.lr_upper']}={s.lr_upper!r} must be a positive learning rate, e.g. 2e-4")
    _check(
        s.lr_lower < s.lr_upper,
        f"{o['search.lr_lower']}={s.lr_lower!r} must be below {o['search.lr_upper']}={s.lr_upper!r}; "
        "swap them or widen the range",
    )
    _check(bool(s.bs_choices), f"{o['search.bs_choices']} is empty; give batch sizes such as \"1 2\"")
    _check(
        all(b >= 1 for b in s.bs_choices),
        f"{o['search.bs_choices']}={' '.join(map(str, s.bs_choices))!r} has a batch size below 1; "
        "use whole numbers >= 1",
    )
    _check(bool(s.wd_choices), f"{o['search.wd_choices']} is empty; give weight decays such as \"0.0 0.01\"")
    _check(
        all(w >= 0 for w in s.wd_choices),
        f"{o['search.wd_choices']}={' '.join(map(str, s.wd_choices))!r} has a negative weight decay; "
        "use values >= 0",
    )
    positive_ints = [
        "seed", "model.max_length", "model.tiny_vocab_size", "model.tiny_hidden_size",
        "model.tiny_layers", "model.tiny_heads", "data.train_samples", "data.eval_samples",
        "train.iterations", "train.eval_batch_size", "resources.workers_per_trial",
        "tune.num_to_keep", "tune.grid_lrs", "tune.asha_grace_period",
    ]
    flat = cfg.flat()
    for key in positive_ints:
        minimum = 0 if key == "seed" else 1
        _check(flat[key] >= minimum, f"{o[key]}={flat[key]!r} must be >= {minimum}")
    for key in ["train.steps_per_iteration", "train.warmup_steps", "budget.trial_iterations", "budget.slots",
                "resources.gpus_per_worker"]:
        _check(flat[key] >= 0, f"{o[key]}={flat[key]!r} must be >= 0")
    _check(
        cfg.resources.cpus_per_worker > 0,
        f"{o['resources.cpus_per_worker']}={cfg.resources.cpus_per_worker!r} must be > 0 "
        "(Ray cannot place a trial with 0 CPUs; use e.g. 0.5)",
    )
    _check(
        cfg.model.tiny_hidden_size % cfg.model.tiny_heads == 0,
        f"{o['model.tiny_hidden_size']}={cfg.model.tiny_hidden_size} must be divisible by "
        f"{o['model.tiny_heads']}={cfg.model.tiny_heads}",
    )
    _check(
        cfg.data.unanswerable in {"skip", "target"},
        f"{o['data.unanswerable']}={cfg.data.unanswerable!r} is not allowed; use skip or target",
    )
    _check(
        cfg.train.deepspeed_stage in {1, 2, 3},
        f"{o['train.deepspeed_stage']}={cfg.train.deepspeed_stage!r} is not a ZeRO stage; use 1, 2 or 3",
    )
    _check(
        not (cfg.train.fp16 and cfg.train.bf16),
        f"{o['train.fp16']} and {o['train.bf16']} are both true; choose one mixed precision",
    )
    _check(
        0 < cfg.tune.quantile_fraction <= 0.5,
        f"{o['tune.quantile_fraction']}={cfg.tune.quantile_fraction!r} must be in (0, 0.5]",
    )
    _check(
        0 <= cfg.tune.resample_probability <= 1,
        f"{o['tune.resample_probability']}={cfg.tune.resample_probability!r} must be in [0, 1]",
    )
    _check(
        cfg.tune.asha_reduction_factor >= 2,
        f"{o['tune.asha_reduction_factor']}={cfg.tune.asha_reduction_factor!r} must be >= 2",
    )
    _check(cfg.tune.mode in {"min", "max"}, f"{o['tune.mode']}={cfg.tune.mode!r} is not allowed; use min or max")
    _check(bool(cfg.tune.metric), f"{o['tune.metric']} is empty; name the reported metric, e.g. eval_loss")
    per_lr = cfg.train.iterations * len(s.bs_choices) * len(s.wd_choices)
    _check(
        cfg.budget.trial_iterations == 0 or cfg.budget.trial_iterations >= per_lr,
        f"{o['budget.trial_iterations']}={cfg.budget.trial_iterations} cannot pay for one learning rate of the "
        f"grid ({len(s.bs_choices)} batch sizes x {len(s.wd_choices)} weight decays x {cfg.train.iterations} "
        f"iterations = {per_lr}); use 0 (the grid's budget) or a multiple of {per_lr}",
    )
    if cfg.data.source.startswith("hub:"):
        problem = hub_dataset_problem(cfg.data.source, o["data.source"])
        _check(not problem, problem)
    _check(bool(cfg.strategy), f"{o['strategy']} is empty; name one with --strategy (python -m harness strategies)")
    return cfg


# --------------------------------------------------------------------------- resolution

def preset_path(preset: str) -> Path:
    """A preset name (``smoke``) or a path to a TOML file."""
    candidate = Path(preset)
    if candidate.suffix == ".toml":
        if not candidate.is_file():
            raise ConfigError(f"preset file {preset!r} does not exist; give an existing .toml file")
        return candidate
    path = PRESET_DIR / f"{preset}.toml"
    if not path.is_file():
        raise ConfigError(
            f"preset={preset!r} is unknown; choose one of {', '.join(available_presets())} "
            "or give a path to a .toml file"
        )
    return path


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def _flatten_toml(data: Mapping[str, Any], origin: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            if key not in _SECTIONS:
                raise ConfigError(
                    f"{origin}: unknown section [{key}]; known sections: {', '.join(_SECTIONS)}"
                )
            for sub, subvalue in value.items():
                flat[f"{key}.{sub}"] = subvalue
        else:
            flat[key] = value
    return flat


def _build(values: Mapping[str, Any], origin: str, origins: Mapping[str, str] | None = None) -> ExperimentConfig:
    flat = _flatten_toml(values, origin) if any(isinstance(v, dict) for v in values.values()) else dict(values)
    keys = set(known_keys())
    sections: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    top: dict[str, Any] = {}
    origins = dict(origins or {})
    for key, raw in flat.items():
        if key not in keys:
            raise ConfigError(f"{origin}: unknown key {key!r}; known keys: {', '.join(sorted(keys))}")
        value = parse_value(key, raw, origins.get(key, key))
        section, _, name = key.rpartition(".")
        (sections[section] if section else top)[name] = value
    cfg = ExperimentConfig(**top, **{name: _SECTIONS[name](**kw) for name, kw in sections.items()})
    return validate(cfg, origins)


def resolve(
    preset: str = "smoke",
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    override_origins: Mapping[str, str] | None = None,
) -> ExperimentConfig:
    """defaults < preset < environment (LR_LOWER ...) < ``overrides`` (CLI)."""
    env = os.environ if env is None else env
    path = preset_path(preset)
    try:
        with path.open("rb") as fh:
            preset_values = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"preset file {str(path)!r} is not valid TOML ({exc}); fix the file") from None
    merged = _flatten_toml(preset_values, f"preset {path.name}")
    merged["preset"] = preset if path.parent == PRESET_DIR else str(path)
    origins: dict[str, str] = {k: f"{k} (preset {path.name})" for k in merged}
    for var, key in ENV_OVERRIDES.items():
        if var in env:
            merged[key] = env[var]
            origins[key] = var
    for key, value in (overrides or {}).items():
        merged[key] = value
        origins[key] = (override_origins or {}).get(key, key)
    return _build(merged, origin="configuration", origins=origins)
