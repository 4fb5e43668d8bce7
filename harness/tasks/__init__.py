"""Tasks: what one trial trains. The strategies, the run record, MLflow, the reports and the quiz
work unchanged for every task; a task says only what differs.

A task is one file, ``harness/tasks/<name>.py``, that defines ``TASK = Task(...)``:

* the trial body (``body``: ``"module:function"``, usually ``f"{__name__}:run_segment"``), called
  as ``body(segment, report)`` with a :class:`~harness.trial.checkpoint.Segment` (the trial's
  hyperparameters, where it starts, the checkpoint folder it restarts from) and a reporter to call
  after every iteration with an :class:`~harness.contract.iteration.IterationReport` and a
  checkpoint folder (:data:`~harness.trial.checkpoint.META_FILE` + its state in
  :data:`~harness.trial.checkpoint.MODEL_DIR`);
* the metric it reports and its mode;
* its default search space and budget (``defaults``: ``section.key`` -> value), which lie under a
  preset: ``--preset <task name>`` runs a task on its own defaults, and a preset file may name a
  task (``task = "..."``) and change some of them.

Nothing else registers it: this package finds every module here that defines ``TASK``. Keep a
task module's top free of heavy imports (import torch inside the body): the registry imports
every task module to list them.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.config import ConfigError
from harness.config import sources as config_sources

#: The task a configuration trains unless it names another: the seed exercise's.
DEFAULT = "squad"


@dataclass(frozen=True)
class Task:
    name: str
    summary: str
    body: str
    """``"module:function"``: the trial body, ``function(segment, report)``."""
    metric: str = "eval_loss"
    """What the strategies optimize (``tune.metric``): one of the reported metrics."""
    mode: str = "min"
    defaults: Mapping[str, Any] = field(default_factory=dict)
    """The task's default search space, budget and settings (``section.key`` -> value)."""
    needs_model: bool = True
    """The run prepares a model and tokenized data for it (``make prepare``, the offline cache)."""
    control: str = ""
    """``positive`` or ``negative`` for the known-answer controls; empty for a real task."""

    def load(self) -> Callable[..., None]:
        """The trial body (imports its module: a trial process pays for its imports here)."""
        module, _, function = self.body.partition(":")
        return getattr(importlib.import_module(module), function)

    def settings(self) -> dict[str, Any]:
        """The values this task puts under a preset: its defaults, its metric and mode, its name."""
        return {"tune.metric": self.metric, "tune.mode": self.mode, **self.defaults, "task": self.name}


@functools.cache
def registry() -> dict[str, Task]:
    """Every task module in this package, by name (the seed's task first); scanned once per
    process (every trial segment looks its task up)."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        task = getattr(importlib.import_module(f"{__name__}.{info.name}"), "TASK", None)
        if isinstance(task, Task):
            found[task.name] = task
    return dict(sorted(found.items(), key=lambda kv: (kv[0] != DEFAULT, kv[1].control, kv[0])))


def names() -> list[str]:
    return list(registry())


def get(name: str) -> Task:
    """The registered task; an unknown name is refused with the known ones."""
    tasks = registry()
    if name not in tasks:
        raise ConfigError(f"task={name!r} is unknown; choose one of {', '.join(tasks)} "
                          "(python -m harness tasks lists them)")
    return tasks[name]


def resolve(preset: str = "smoke", env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None,
            override_origins: Mapping[str, str] | None = None) -> Any:
    """:func:`harness.config.sources.resolve` with the task's defaults under the preset. ``preset``
    may be a task's name: the task on its own defaults."""
    return config_sources.resolve(preset, env, overrides, override_origins,
                                  task_settings=lambda name: get(name).settings(), tasks=names())
