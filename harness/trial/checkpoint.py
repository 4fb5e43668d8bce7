"""A trial segment's inputs and the checkpoint folder a segment starts from and writes: what
every task's trial body (:mod:`harness.tasks`) and every strategy share, without torch.

A checkpoint folder holds the trial's state (``MODEL_DIR``: the weights of a model, or whatever
state a task keeps) and the harness's metadata (``META_FILE``: the iteration, the hyperparameters
that produced it and the trial that wrote it).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import ExperimentConfig
from harness.contract.iteration import HParams, IterationReport

#: A checkpoint folder: the weights (``MODEL_DIR``, an ordinary model folder) and our metadata.
META_FILE = "harness_trial.json"
MODEL_DIR = "model"

#: Called on rank 0 after each iteration with the report and the checkpoint folder, which is
#: removed when it returns (the reporter copies what it keeps; ``tune.report`` does).
Reporter = Callable[[IterationReport, str], None]


class TrialError(RuntimeError):
    """A trial's worker failed; the message says which rank and how."""


@dataclass(frozen=True)
class Segment:
    """Everything one training segment needs; picklable, so ranks can receive it."""

    cfg: ExperimentConfig
    hparams: HParams
    model_path: str
    data_path: str
    trial_id: str
    workdir: str
    start_iteration: int = 0
    init_weights: str = ""  # a checkpoint's model folder, empty for the base model
    exploited_from: str = ""  # the donor trial, when this segment starts from its checkpoint
    epochs_before: float = 0.0  # epochs trained into ``init_weights`` (batch sizes may differ)
    cache_dir: str = ""  # where DeepSpeed may build ops (TORCH_EXTENSIONS_DIR)
    setup_phases: Mapping[str, float] = field(default_factory=dict)  # measured before the segment (process_up, restore)

    @property
    def remaining(self) -> int:
        return self.cfg.train.iterations - self.start_iteration


def restart_point(checkpoint: Path, into: Path, trial_id: str) -> dict[str, Any]:
    """Where a segment starts from a checkpoint folder (ours: weights + metadata): its weights are
    copied to ``into`` (the scheduler may delete old checkpoints while the segment trains)."""
    meta = json.loads((checkpoint / META_FILE).read_text())
    shutil.copytree(checkpoint / MODEL_DIR, into)
    return {"start_iteration": int(meta["iteration"]), "init_weights": str(into),
            "epochs_before": float(meta["epoch"]),
            "exploited_from": meta["trial_id"] if meta["trial_id"] != trial_id else ""}
