"""Calibration of the verdicts on the known-answer controls: how often they say "better"/"worse"
where nothing differs (the negative control: must stay at or below α), and how often they decide
where PBT certainly wins (the positive control: the power at the default number of seeds).

Every number comes from real runs of the real strategies (:mod:`harness.driver.bench`: the
strategy code, Ray Tune, the event log, the record, the summary) on a **pool** of seeds, and the
verdicts from the comparison's own machinery (:func:`harness.reporting.seeds.pairwise`). A
repetition draws ``draw`` seeds (the default number of a comparison) from the pool without
replacement and asks for every verdict, as ``make compare`` would on those runs.

Why a pool and not 200 × 6 fresh seeds: through Ray Tune a control run costs 10–40 s on 2 cores
(the trial processes' start and Tune's bookkeeping, not the task), so 200 repetitions of fresh
runs of five strategies would take days. Repetitions drawn from a pool share runs, so the rates
estimate the verdicts' behaviour on seeds like the pool's; their uncertainty is set by the pool's
size, which the report states beside them, with the per-seed win rates that drive the power.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import ExperimentConfig
from harness.contract.errors import InputError
from harness.contract.record import RunRecord
from harness.contract.rundir import RunDir
from harness.driver import bench
from harness.reporting.analysis import Summary, summarize
from harness.reporting.seeds import ALPHA, aggregate, pairwise


@dataclass
class Calibration:
    task: str
    control: str
    pool: list[int]
    draw: int
    reps: int
    strategies: list[str]
    decided: dict[str, int] = field(default_factory=dict)
    """pair "a vs b" -> repetitions in which its verdict on the best metric was better/worse."""
    asked: dict[str, int] = field(default_factory=dict)
    """pair "a vs b" -> repetitions in which it was compared (both budgets comparable)."""
    pbt_better: dict[str, int] = field(default_factory=dict)
    """primary pair -> repetitions in which the primary strategy was declared better."""
    wins: dict[str, tuple[int, int]] = field(default_factory=dict)
    """primary pair -> (pool seeds in which the primary strategy's best was better, seeds compared)."""
    any_decided: int = 0
    alpha: float = ALPHA

    def lines(self) -> list[str]:
        out = [f"calibration on {self.task} ({self.control} control): {self.reps} repetitions of {self.draw} seeds "
               f"drawn from a pool of {len(self.pool)} seeds ({' '.join(map(str, self.pool))}), α = {self.alpha:g}, "
               f"strategies {', '.join(self.strategies)}"]
        pairs = sum(self.asked.values())
        if not pairs:
            return out + ["  no pair of strategies was comparable in any repetition: nothing to calibrate"]
        total = sum(self.decided.values())
        out.append(f"  'better'/'worse' verdicts on the best metric: {total} of {pairs} pairwise verdicts "
                   f"({total / pairs:.1%}); repetitions with any: {self.any_decided} of {self.reps} "
                   f"({self.any_decided / self.reps:.1%})")
        for pair, n in self.decided.items():
            out.append(f"    {pair}: {n} of {self.asked[pair]} ({n / self.asked[pair]:.1%})")
        for pair, n in self.pbt_better.items():
            won, of = self.wins[pair]
            out.append(f"  {pair}: declared better in {n} of {self.reps} repetitions ({n / self.reps:.1%}); "
                       f"better in {won} of {of} pool seeds")
        return out

    def to_json(self) -> str:
        return json.dumps(vars(self), indent=2)


#: What may differ between a pool's runs and still make them one pool.
PER_RUN = ("seed", "run_name", "results_dir")


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return {k: v for k, v in a.items() if k not in PER_RUN} == {k: v for k, v in b.items() if k not in PER_RUN}


def _usable(record: RunRecord) -> str:
    """Why a run cannot join the pool ("" when it can): stopped, unfinished or with failed trials."""
    if record.stopped or not record.finished_at:
        return f"stopped ({record.stopped or 'unfinished'})"
    failed = [t.label for t in record.trials if t.status != "TERMINATED"]
    return f"trials {', '.join(failed)} did not finish" if failed else ""


def pool_runs(configs: Sequence[ExperimentConfig], results_dir: Path, *, tracking: bool) -> dict[tuple[str, int], Summary]:
    """Summaries of every (strategy, seed) in ``configs``: complete runs of the very same
    configuration already in ``results_dir`` are reused (a calibration that was stopped continues),
    the others are run in one session."""
    wanted = {(c.strategy, c.seed): json.loads(c.to_json()) for c in configs}  # as a record keeps it
    have: dict[tuple[str, int], Summary] = {}
    for record_file in sorted(results_dir.glob("*/run_record.json")):
        record = RunDir(record_file.parent).record()
        key = (record.strategy, record.seed)
        if key in wanted and _same(record.config, wanted[key]) and not _usable(record):
            have[key] = summarize(record, str(record_file.parent))
    todo = [c for c in configs if (c.strategy, c.seed) not in have]
    for run in bench.bench(todo, tracking=tracking):
        if run.outcome is None:
            raise InputError(f"{run.label} did not run (a stop was asked for); calibrate again to continue")
        if problem := _usable(run.outcome.record):
            raise InputError(f"{run.label} cannot join the pool: {problem} ({run.outcome.run_dir}); calibrate again "
                             "to run it anew")
        have[(run.cfg.strategy, run.cfg.seed)] = summarize(run.outcome.record, str(run.outcome.run_dir))
    return {(c.strategy, c.seed): have[(c.strategy, c.seed)] for c in configs}


def calibrate(summaries: dict[tuple[str, int], Summary], *, task: str, control: str, draw: int, reps: int,
              mode: str = "min", seed: int = 0) -> Calibration:
    """The verdicts of ``reps`` comparisons, each on ``draw`` seeds drawn from the pool."""
    names = list(dict.fromkeys(name for name, _ in summaries))
    pool = sorted({s for _, s in summaries})
    rng = random.Random(f"calibrate/{seed}")
    out = Calibration(task, control, pool, draw, reps, names)
    for _ in range(reps):
        seeds = set(rng.sample(pool, draw))
        aggregates = aggregate([s for (name, sd), s in summaries.items() if sd in seeds], mode=mode)
        tests = pairwise(aggregates, "best_eval_loss")
        any_here = False
        for t in tests:
            pair = f"{t.a} vs {t.b}"
            out.asked[pair] = out.asked.get(pair, 0) + 1
            out.decided[pair] = out.decided.get(pair, 0) + (t.side != 0)
            any_here |= t.side != 0
            if t.primary:  # pairwise tells a primary test from the primary strategy's side
                key = f"{t.a} better than {t.b}"
                out.pbt_better[key] = out.pbt_better.get(key, 0) + (t.side == -1)
        out.any_decided += any_here
    for key in out.pbt_better:
        primary, _, other = key.partition(" better than ")
        a, b = _by_seed(summaries, primary), _by_seed(summaries, other)
        common = sorted(set(a) & set(b))
        won = sum((a[s] < b[s]) if mode == "min" else (a[s] > b[s]) for s in common)
        out.wins[key] = (won, len(common))
    return out


def _by_seed(summaries: dict[tuple[str, int], Summary], strategy: str) -> dict[int, float]:
    return {seed: s.best_eval_loss for (name, seed), s in summaries.items() if name == strategy}


def write(result: Calibration, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    md, js = folder / "calibration.md", folder / "calibration.json"
    md.write_text("\n".join(result.lines()) + "\n")
    js.write_text(result.to_json() + "\n")
    return [md, js]

