"""The positive control: a torch-free task on which PBT certainly beats a fixed learning rate.

As in Ray Tune's ``pbt_example.py`` (whose docstring says training does not converge without
PBT), the best learning rate moves as training progresses. With ``u`` the trial's learning rate
on a 0-1 log scale over the search range and ``x`` the progress made so far, the best rate
starts at the top of the range and slides to the bottom as ``x`` goes from 0 to 1:
``u* = 1 - min(x, 1)``. Each iteration takes 10 small steps; a step within ``WINDOW`` of ``u*``
progresses (fastest at ``u*``), a rate further above it loses progress (too high: unstable), one
further below it stalls. ``eval_loss = 1 - 0.9 min(x, 1)`` plus a little noise.

A fixed learning rate can only progress while the optimum passes by, so no grid point gets far
beyond ``2 x WINDOW`` of progress; PBT's exploits copy progress and its perturbations follow the
optimum down. At the default budget (12 trials x 8 iterations) PBT's best loss is below the
grid's in every seed; ``make controls`` and ``make calibrate`` measure it through the real
strategies.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping

from harness.tasks import Task
from harness.tasks._analytic import CONTROL_DEFAULTS, run
from harness.trial.checkpoint import Reporter, Segment

WINDOW = 0.3  # how far (on the 0-1 log scale) from the best rate a step still progresses
GAIN = 0.25  # progress per iteration at the best rate
STEPS = 10
NOISE = 0.005


def step(state: Mapping[str, float], lr: float, rng: random.Random, seg: Segment) -> tuple[dict[str, float], float, float]:
    lo, hi = seg.cfg.search.lr_lower, seg.cfg.search.lr_upper
    u = math.log(lr / lo) / math.log(hi / lo)
    x = float(state["progress"])
    for _ in range(STEPS):
        off = u - (1.0 - min(x, 1.0))
        if abs(off) <= WINDOW:
            x += GAIN / STEPS * (1.0 - abs(off) / WINDOW)
        elif off > WINDOW:
            x = max(0.0, x - GAIN / STEPS * min(1.0, (off - WINDOW) / WINDOW))
    train_loss = 1.0 - 0.9 * min(x, 1.0)
    return {"progress": x}, train_loss + rng.gauss(0.0, NOISE), train_loss


def run_segment(seg: Segment, report: Reporter) -> None:
    run(seg, report, step, {"progress": 0.0})


TASK = Task(
    name="pbt_control",
    summary="positive control: the best learning rate moves as training progresses (PBT must win)",
    body=f"{__name__}:run_segment", defaults=CONTROL_DEFAULTS, needs_model=False, control="positive",
)
