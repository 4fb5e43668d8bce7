"""The negative control: a torch-free task whose curves do not depend on the hyperparameters.

Every iteration of every trial reports ``eval_loss = 1 + N(0, 0.05)``, drawn from its own random
stream (seed, trial, iteration), whatever its learning rate and however long it trained. At
equal budgets every strategy's best loss is the minimum of as many independent draws, so any
"better" or "worse" on it is a false positive: the calibration (``make calibrate``) counts how
often the verdicts say one anyway.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from harness.tasks import Task
from harness.tasks._analytic import CONTROL_DEFAULTS, run
from harness.trial.checkpoint import Reporter, Segment

NOISE = 0.05


def step(state: Mapping[str, float], lr: float, rng: random.Random, seg: Segment) -> tuple[dict[str, float], float, float]:
    return dict(state), 1.0 + rng.gauss(0.0, NOISE), 1.0 + rng.gauss(0.0, NOISE)


def run_segment(seg: Segment, report: Reporter) -> None:
    run(seg, report, step, {})


TASK = Task(
    name="null_control",
    summary="negative control: noise only, no hyperparameter matters (every verdict must be 'not distinguishable')",
    body=f"{__name__}:run_segment", defaults=CONTROL_DEFAULTS, needs_model=False, control="negative",
)
