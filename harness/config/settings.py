"""The experiment's settings: small frozen pydantic models whose fields carry their own types,
constraints, documentation (the docstring under each field) and, where a bare constraint would
not say it, the fix (``fix=...``). :mod:`harness.config.sources` resolves them from defaults,
a preset, the environment and the command line, and turns a violation into one line naming
where the value came from.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError

from harness.config.messages import message
from harness.contract.errors import InputError
from harness.contract.iteration import METRICS


class ConfigError(InputError):
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


def fix(text: str) -> dict[str, Any]:
    """``Field(**fix("..."))``: what to do when the field's constraint is violated, for the message."""
    return {"json_schema_extra": {"fix": text}}


def _origin(info: ValidationInfo, key: str) -> str:
    """How the user named ``key`` (``LR_LOWER``, ``--set train.fp16``, ``search.lr_lower (preset
    smoke.toml)``), from the validation context :mod:`~harness.config.sources` passes."""
    return ((info.context or {}).get("origins") or {}).get(key, key)


def cross_field(message: str) -> PydanticCustomError:
    """A rule between fields: its message is the whole line (it names both fields)."""
    return PydanticCustomError("cross_field", message)


def _words(value: Any) -> Any:
    """A list written as text (``"1 2"``, ``"1,2"``, from the environment or ``--set``) as its items."""
    return value.replace(",", " ").split() if isinstance(value, str) else value


def _choices(values: tuple[Any, ...]) -> tuple[Any, ...]:
    if not values:
        raise PydanticCustomError("empty", 'is empty; give at least one value, e.g. "1 2"')
    if len(set(values)) != len(values):
        raise PydanticCustomError("duplicates", "has duplicate values; list each choice once")
    return values


FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Positive = Annotated[int, Field(ge=1)]
Choices = Annotated[tuple[Any, ...], BeforeValidator(_words), AfterValidator(_choices)]


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True, validate_default=True)


class SearchSpace(Section):
    """What the strategies search over (and PBT mutates). It owns every form the space takes: the
    Ray sampling space, the manual grid, PBT's mutations and the clipping of explored values."""

    lr_lower: Annotated[FiniteFloat, Field(gt=0, **fix("a positive learning rate, e.g. 5e-6"))] = 5e-6
    """Lowest learning rate, inclusive (log-uniform sampling). ``LR_LOWER``."""
    lr_upper: Annotated[FiniteFloat, Field(gt=0, **fix("a positive learning rate, e.g. 2e-4"))] = 2e-4
    """Highest learning rate, inclusive. ``LR_UPPER``."""
    bs_choices: Annotated[tuple[Annotated[int, Field(ge=1, **fix("batch sizes are whole numbers >= 1"))], ...],
                          BeforeValidator(_words), AfterValidator(_choices)] = (1, 2)
    """Per-device train batch sizes. ``BS_CHOICES="1 2"``."""
    wd_choices: Annotated[tuple[Annotated[FiniteFloat, Field(ge=0, **fix("weight decays are >= 0"))], ...],
                          BeforeValidator(_words), AfterValidator(_choices)] = (0.0, 0.01)
    """Weight decays. ``WD_CHOICES="0.0 0.01"``."""

    @model_validator(mode="after")
    def _ordered(self, info: ValidationInfo) -> SearchSpace:
        if not self.lr_lower < self.lr_upper:
            raise cross_field(f"{_origin(info, 'search.lr_lower')}={self.lr_lower!r} must be below "
                              f"{_origin(info, 'search.lr_upper')}={self.lr_upper!r}; swap them or widen the range")
        return self

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


class ModelConfig(Section):
    name: Annotated[str, Field(min_length=1)] = "tiny-bloom"
    """``tiny-bloom`` (built offline), a hub id such as ``bigscience/bloom-560m``, or a local
    model directory. ``make prepare`` saves it into the harness cache, where runs find it first."""
    max_length: Positive = 128
    """Tokens per example (question + context + answer); longer examples are dropped and counted."""
    tiny_vocab_size: Positive = 2000
    """tiny-bloom only: size of the byte-level BPE vocabulary trained locally."""
    tiny_hidden_size: Positive = 64
    """tiny-bloom only: hidden size of the BloomConfig."""
    tiny_layers: Positive = 2
    """tiny-bloom only: number of transformer blocks."""
    tiny_heads: Positive = 4
    """tiny-bloom only: attention heads."""

    @model_validator(mode="after")
    def _heads_divide_hidden(self, info: ValidationInfo) -> ModelConfig:
        if self.tiny_hidden_size % self.tiny_heads:
            raise cross_field(f"{_origin(info, 'model.tiny_hidden_size')}={self.tiny_hidden_size} must be divisible "
                              f"by {_origin(info, 'model.tiny_heads')}={self.tiny_heads}")
        return self


class DataConfig(Section):
    source: Annotated[str, Field(min_length=1)] = "synthetic"
    """``synthetic`` (deterministic offline generator), ``hub:<dataset id or local dataset folder>``
    (through ``datasets.load_dataset``, e.g. ``hub:rajpurkar/squad``; ``make prepare`` caches it),
    or a path to a SQuAD JSON file in the official v1.1/v2.0 layout."""
    train_samples: Positive = 1000
    """Training examples kept after preprocessing."""
    eval_samples: Positive = 100
    """Validation examples kept after preprocessing."""
    unanswerable: Literal["skip", "target"] = "skip"
    """SQuAD 2.0 questions without an answer: ``skip`` them (counted) or train them toward
    the literal answer ``unanswerable`` (``target``)."""

    @model_validator(mode="after")
    def _hub_name(self, info: ValidationInfo) -> DataConfig:
        if self.source.startswith("hub:"):
            problem = hub_dataset_problem(self.source, _origin(info, "data.source"))
            if problem:
                raise cross_field(problem)
        return self


class TrainConfig(Section):
    iterations: Positive = 5
    """Ray Tune iterations per trial: one evaluation + checkpoint + ``eval_loss`` report each."""
    steps_per_iteration: Annotated[int, Field(ge=0)] = 0
    """Optimizer steps per iteration; 0 means one epoch per iteration (the seed's choice)."""
    lr_scheduler: str = "constant"
    """HF scheduler type. ``constant`` keeps the optimizer's lr equal to the trial's lr, which
    is what PBT mutates; a decaying schedule would restart at every exploit."""
    warmup_steps: Annotated[int, Field(ge=0)] = 0
    """Warm-up steps of every training segment."""
    eval_batch_size: Positive = 8
    """Per-device evaluation batch size (not searched)."""
    fp16: bool = False
    """Mixed precision on CUDA; refused on a machine without a GPU."""
    bf16: bool = False
    """bfloat16 mixed precision (Ampere and newer GPUs; CPUs that support it)."""
    deepspeed: bool = False
    """Train through DeepSpeed ZeRO (config generated by the harness); needs the package."""
    deepspeed_stage: Annotated[int, Field(ge=1, le=3, **fix("a ZeRO stage: 1, 2 or 3"))] = 2
    """ZeRO stage when ``deepspeed`` is on (1, 2 or 3)."""

    @model_validator(mode="after")
    def _one_precision(self, info: ValidationInfo) -> TrainConfig:
        if self.fp16 and self.bf16:
            raise cross_field(f"{_origin(info, 'train.fp16')} and {_origin(info, 'train.bf16')} are both true; "
                              "choose one mixed precision")
        return self


class ResourcesConfig(Section):
    """Per-trial resources: one placement-group bundle of W*Cw CPUs and W*Gw GPUs on one node."""

    workers_per_trial: Positive = 1
    """W: torch.distributed processes a trial launches (DDP/DeepSpeed ranks)."""
    cpus_per_worker: Annotated[FiniteFloat, Field(gt=0, **fix("Ray cannot place a trial with 0 CPUs; use e.g. 0.5"))] = 1.0
    """Cw: CPUs reserved per worker (fractions allowed, e.g. 0.5 to pack trials on a laptop)."""
    gpus_per_worker: Annotated[FiniteFloat, Field(ge=0)] = 0.0
    """Gw: GPUs reserved per worker."""


class BudgetConfig(Section):
    """What every strategy of one comparison may spend, so that their results can be compared.

    The grid strategies train ``trial_iterations / iterations`` combinations, PBT and PB2 a
    population of that size, ASHA samples configurations until the iterations are spent.
    """

    trial_iterations: Annotated[int, Field(ge=0)] = 0
    """Training iterations (epochs) summed over all trials; 0 means the grid's: ``tune.grid_lrs``
    x |bs_choices| x |wd_choices| x ``train.iterations``. An explicit budget sets the grid's number
    of learning rates instead (rounded down to whole combinations)."""
    slots: Annotated[int, Field(ge=0)] = 0
    """Trials that may run at once; 0 means as many as the resources fit. A local Ray is started
    with just enough CPUs/GPUs for that many trials; on a cluster the cluster's size decides (the
    slots a run really had are recorded). The sequential grid always uses one."""


class TuneSettings(Section):
    """Ray Tune settings shared by the Ray strategies."""

    metric: Literal[METRICS] = "eval_loss"  # type: ignore[valid-type]
    """The reported metric every strategy optimizes and every report ranks by."""
    mode: Literal["min", "max"] = "min"
    """``min`` or ``max``: the direction in which ``metric`` is better."""
    grid_lrs: Positive = 3
    """manual / fifo: learning rates log-spaced over [lr_lower, lr_upper] in the grid (x bs x wd),
    when ``budget.trial_iterations`` is 0."""
    asha_grace_period: Positive = 1
    """ASHA: iterations every trial gets before it can be stopped."""
    asha_reduction_factor: Annotated[int, Field(ge=2)] = 2
    """ASHA: keep the top 1/reduction_factor at each rung."""
    synch: bool = False
    """PBT: synchronous rounds (every trial waits for the others at each perturbation)."""
    quantile_fraction: Annotated[FiniteFloat, Field(gt=0, le=0.5)] = 0.25
    """PBT: fraction of the population that is exploited (bottom) and cloned from (top)."""
    resample_probability: Annotated[FiniteFloat, Field(ge=0, le=1)] = 0.25
    """PBT: probability of resampling a value instead of perturbing it by 0.8/1.2."""
    num_to_keep: Positive = 3
    """Checkpoints kept per trial: enough for exploits (Ray warns at <= 2), bounded for disk."""
    reuse_actors: bool = True
    """Reuse Ray actors between trial segments (an iteration took ~12 s without, ~2 s with)."""
    max_failures: Annotated[int, Field(ge=0)] = 2
    """Times a failed trial is restarted from its last checkpoint before it counts as errored
    (Ray Tune's ``FailureConfig``; the manual grid does the same)."""


class ExperimentConfig(Section):
    strategy: Annotated[str, Field(min_length=1, **fix("name one with --strategy (python -m harness strategies)"))] = ""
    """Registered strategy name (``python -m harness strategies`` lists them)."""
    task: Annotated[str, Field(min_length=1)] = "squad"
    """What a trial trains (``python -m harness tasks``): the seed's SQuAD causal-LM fine-tuning, or
    another registered task such as the known-answer controls ``pbt_control`` / ``null_control``."""
    preset: str = "smoke"
    """Preset the values (or the task whose defaults) the run was loaded from (recorded with the run)."""
    seed: Annotated[int, Field(ge=0)] = 42
    """Seeds data generation, model init, trial sampling and training."""
    results_dir: str = "results"
    """Where run folders and the default MLflow store go (made absolute by the run)."""
    run_name: str = ""
    """Folder name under ``results_dir``; empty means ``<strategy>-<preset>-<timestamp>``."""
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    search: SearchSpace = SearchSpace()
    resources: ResourcesConfig = ResourcesConfig()
    tune: TuneSettings = TuneSettings()
    budget: BudgetConfig = BudgetConfig()

    @model_validator(mode="after")
    def _budget_pays_for_a_grid_row(self, info: ValidationInfo) -> ExperimentConfig:
        s, budget = self.search, self.budget.trial_iterations
        per_lr = self.train.iterations * len(s.bs_choices) * len(s.wd_choices)
        if budget and budget < per_lr:
            raise cross_field(
                f"{_origin(info, 'budget.trial_iterations')}={budget} cannot pay for one learning rate of the grid "
                f"({len(s.bs_choices)} batch sizes x {len(s.wd_choices)} weight decays x {self.train.iterations} "
                f"iterations = {per_lr}); use 0 (the grid's budget) or a multiple of {per_lr}")
        return self

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
        return self.model_dump()

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
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExperimentConfig:
        """Inverse of :meth:`to_dict` (a run folder's ``config.json``); validated again."""
        return validated(data)

    def updated(self, values: Mapping[str, Any]) -> ExperimentConfig:
        """A copy with ``section.key`` fields replaced, validated again."""
        return validated({**self.flat(), **values})


# --------------------------------------------------------------------------- validation

#: The sections of :class:`ExperimentConfig` and their models.
SECTIONS: dict[str, type[Section]] = {
    name: info.annotation for name, info in ExperimentConfig.model_fields.items()  # type: ignore[misc]
    if isinstance(info.annotation, type) and issubclass(info.annotation, Section)
}


def known_keys() -> list[str]:
    """Every settable ``section.key`` (and the top-level keys), in declaration order."""
    keys = [name for name in ExperimentConfig.model_fields if name not in SECTIONS]
    for section, model in SECTIONS.items():
        keys += [f"{section}.{name}" for name in model.model_fields]
    return keys


def nest(flat: Mapping[str, Any], origin: str = "configuration") -> dict[str, Any]:
    """``{"train.iterations": 3}`` -> ``{"train": {"iterations": 3}}``; nested sections pass as
    they are. An unknown key or section is refused with the known ones."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        section, _, name = key.rpartition(".")
        if isinstance(value, Mapping) and key in SECTIONS:
            out.setdefault(key, {}).update(value)
        elif not section and key in ExperimentConfig.model_fields and key not in SECTIONS:
            out[key] = value
        elif section in SECTIONS and name in SECTIONS[section].model_fields:
            out.setdefault(section, {})[name] = value
        elif section and section.partition(".")[0] not in SECTIONS or isinstance(value, Mapping):
            raise ConfigError(f"{origin}: unknown section [{section or key}]; known sections: {', '.join(SECTIONS)}")
        else:
            raise ConfigError(f"{origin}: unknown key {key!r}; known keys: {', '.join(known_keys())}")
    return out


def validated(values: Mapping[str, Any], *, origin: str = "config", origins: Mapping[str, str] | None = None,
              given: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """The config ``values`` (flat ``section.key`` or nested) describe; a violation is one
    :class:`ConfigError` line naming where the value came from (``origins``: key -> the name the
    user set it by; ``given``: key -> the value as written)."""
    origins = dict(origins or {})
    try:
        return ExperimentConfig.model_validate(nest(values, origin), context={"origins": origins})
    except ValidationError as exc:
        raise ConfigError(message(exc.errors()[0], ExperimentConfig, origins=origins, given=dict(given or {}),
                                  known=known_keys())) from None
