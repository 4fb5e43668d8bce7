"""Several seeds of several strategies: what a comparison may claim from them.

The same seed gives every strategy the same data, model initialization and sampling stream, so
the runs of one seed are a matched block. Verdicts therefore come from **paired** tests on the
per-seed differences, never from each side's own interval:

* **The test:** an exact two-sided sign-flip permutation test on the mean of the per-seed
  differences (``scipy.stats.permutation_test``, every one of the 2ⁿ sign patterns). It needs no
  normality, it uses the size of each difference (more power than a sign test), and it stays
  exact with zero or tied differences, where Wilcoxon's exact null no longer holds and scipy
  falls back to a normal approximation.
* **Its arithmetic:** with n seeds whose difference is not zero, no sign pattern is rarer than the
  two most extreme ones, so p ≥ 2/2ⁿ. At α = 0.05 nothing can be decided below
  :func:`seeds_to_decide` (6) seeds; the report says so rather than run a test that cannot reject.
* **Which tests:** the quiz's comparisons (the primary strategy, PBT, against each baseline) are
  the primary tests, each at α. Every other pair is exploratory: Holm-adjusted over its family
  (the exploratory pairs of one measure), and marked so.
* **Intervals:** from :data:`BOOTSTRAP_MIN_SEEDS` (5) seeds a percentile bootstrap interval of the
  median (``scipy.stats.bootstrap``, seeded); below that the range of the values, labelled as a
  range (the range of two draws covers the median with probability 1/2, not 0.95).
* **Across all strategies:** the average rank per seed; with ≥ 3 strategies and ≥
  :data:`FRIEDMAN_MIN_SEEDS` complete seeds, a Friedman test and the Nemenyi critical difference.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from harness.reporting.analysis import Summary, _median

#: The significance level of every verdict.
ALPHA = 0.05
#: Power the "seeds needed" estimate aims at.
POWER = 0.8
#: Below this many seeds an interval is the range of the values, never a "95% interval".
BOOTSTRAP_MIN_SEEDS = 5
BOOTSTRAP_RESAMPLES = 2000
#: With at least 3 strategies and this many complete seeds: Friedman's test and a CD diagram.
FRIEDMAN_MIN_SEEDS = 6


def smallest_p(n: int) -> float:
    """The smallest two-sided p an exact paired test on ``n`` non-zero differences can give."""
    return min(1.0, 2.0 / 2**n) if n > 0 else 1.0


def seeds_to_decide(alpha: float = ALPHA) -> int:
    """The fewest seeds with which an exact two-sided paired test can reject at ``alpha`` (6 at 0.05)."""
    n = 1
    while smallest_p(n) > alpha:
        n += 1
    return n


def _finite(values: Iterable[float]) -> list[float]:
    return [float(v) for v in values if v is not None and not math.isnan(float(v))]


# --------------------------------------------------------------------------- one strategy's values

@dataclass(frozen=True)
class Estimate:
    """The median of one figure across seeds, with an interval of the kind ``kind`` says."""

    median: float
    low: float
    high: float
    values: tuple[float, ...]
    kind: str = "range"
    """``bootstrap`` (a 95% percentile bootstrap interval of the median), ``range`` (min, max: too
    few seeds for an interval), ``single`` (one value) or ``none``."""

    @property
    def label(self) -> str:
        return {"bootstrap": "95% bootstrap interval", "range": "range"}.get(self.kind, "")


def estimate(values: Sequence[float], seed: int = 0, level: float = 0.95) -> Estimate:
    """Median with a bootstrap interval from :data:`BOOTSTRAP_MIN_SEEDS` values, the range below."""
    clean = _finite(values)
    if not clean:
        return Estimate(math.nan, math.nan, math.nan, tuple(values), "none")
    median = _median(clean)
    if len(clean) == 1:
        return Estimate(median, clean[0], clean[0], tuple(values), "single")
    if len(clean) < BOOTSTRAP_MIN_SEEDS or min(clean) == max(clean):
        return Estimate(median, min(clean), max(clean), tuple(values), "range")
    res = stats.bootstrap((np.asarray(clean),), np.median, n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=level,
                          method="percentile", vectorized=True, rng=np.random.default_rng(seed))
    return Estimate(median, float(res.confidence_interval.low), float(res.confidence_interval.high), tuple(values),
                    "bootstrap")


#: Figures aggregated per strategy with an interval.
ESTIMATED = ("best_eval_loss", "wall_s", "sum_runtime_s")
#: Figures aggregated per strategy as a median across seeds.
MEDIANS = ("iterations_run", "budget_trial_iterations", "slots", "sum_over_wall", "slot_utilization", "cpu_utilization",
           "gpu_utilization", "gpus_per_trial", "wall_utilization", "mean_concurrency", "peak_concurrency",
           "overhead_ratio", "first_iteration_ratio", "pure_s", "overhead_s", "setup_s", "trial_window_s", "teardown_s",
           "early_stop_avoided_iterations", "early_stop_avoided_s", "discarded_iterations", "discarded_s", "exploits",
           "distinct_configs", "trials", "errored", "trials_without_result", "completed_all_iterations", "retries",
           "resumes", "redone_iterations", "rerun_iterations", "time_lost_s")


@dataclass
class Aggregate:
    """One strategy across seeds."""

    strategy: str
    seeds: list[int]
    runs: list[Summary]
    estimates: dict[str, Estimate]
    medians: dict[str, float]
    ranks: dict[int, float] = field(default_factory=dict)
    """seed -> rank of the best metric among the comparable strategies of that seed (ties share)."""
    comparable: bool = True
    mode: str = "min"

    def __getitem__(self, key: str) -> float:
        return self.estimates[key].median if key in self.estimates else self.medians[key]

    def by_seed(self, key: str | Callable[[Summary], float]) -> dict[int, float]:
        """seed -> the run's value of ``key`` (a Summary field or a function of one), NaN left out."""
        get = key if callable(key) else (lambda s: float(getattr(s, key)))
        return {s.seed: v for s in self.runs if not math.isnan(v := get(s))}

    @property
    def mean_rank(self) -> float:
        return float(np.mean(list(self.ranks.values()))) if self.ranks else math.nan


def aggregate(summaries: list[Summary], *, mode: str = "min", seed: int = 0) -> list[Aggregate]:
    """Group run summaries by strategy (in the order first seen), estimate medians with their
    intervals, mark budgets that disagree with the most common one by more than
    :data:`BUDGET_TOLERANCE` as not comparable, and rank comparable strategies per seed."""
    groups: dict[str, list[Summary]] = {}
    for s in summaries:
        groups.setdefault(s.strategy, []).append(s)
    out = []
    for index, (name, runs) in enumerate(groups.items()):
        runs = sorted(runs, key=lambda s: s.seed)
        out.append(Aggregate(
            strategy=name, seeds=[s.seed for s in runs], runs=runs, mode=mode,
            estimates={k: estimate([getattr(s, k) for s in runs], seed=seed * 1000 + index) for k in ESTIMATED},
            medians={k: _median(_finite(float(getattr(s, k)) for s in runs)) for k in MEDIANS},
        ))
    reference = reference_budget(out)
    for a in out:
        a.comparable = budgets_agree(a["iterations_run"], reference)
    comparable = [a for a in out if a.comparable]
    for seed_ in sorted({s for a in comparable for s in a.seeds}):
        entries = [(a, v) for a in comparable if not math.isnan(v := a.by_seed("best_eval_loss").get(seed_, math.nan))]
        ranks = stats.rankdata([v if mode == "min" else -v for _, v in entries])
        for (a, _), rank in zip(entries, ranks):
            a.ranks[seed_] = float(rank)
    return out


#: Budgets of two runs are comparable when they differ by at most this fraction.
BUDGET_TOLERANCE = 0.10


def reference_budget(aggregates: list[Aggregate]) -> float:
    """The budget most strategies used (ties: the larger), against which the others are checked."""
    used = [round(a["iterations_run"]) for a in aggregates if not math.isnan(a["iterations_run"])]
    if not used:
        return math.nan
    return float(max(set(used), key=lambda b: (used.count(b), b)))


def budgets_agree(used: float, reference: float) -> bool:
    return not math.isnan(reference) and reference > 0 and abs(used - reference) <= BUDGET_TOLERANCE * reference


# --------------------------------------------------------------------------- paired tests

#: Up to this many seeds the test enumerates every sign pattern (2ⁿ: 65,536 at 16, well under a
#: second); beyond, a seeded Monte Carlo of :data:`MONTE_CARLO` patterns (its p is within about
#: ±0.002 of the exact one at p = 0.05), which the enumeration's 4x growth per two seeds would
#: otherwise turn into minutes per test.
EXACT_UP_TO = 16
MONTE_CARLO = 100_000


def paired_p(differences: Sequence[float]) -> float:
    """Two-sided p of the sign-flip permutation test on the mean of ``differences``: exact up to
    :data:`EXACT_UP_TO` seeds, a seeded Monte Carlo beyond."""
    d = np.asarray(differences, dtype=float)
    if d.size < 2 or not np.any(d):  # one seed: its two sign patterns are the whole distribution
        return 1.0
    exact = d.size <= EXACT_UP_TO
    res = stats.permutation_test((d,), lambda x, axis: np.mean(x, axis=axis), permutation_type="samples",
                                 n_resamples=np.inf if exact else MONTE_CARLO, alternative="two-sided",
                                 vectorized=True, rng=None if exact else np.random.default_rng(0))
    return float(min(1.0, res.pvalue))


def seeds_needed(differences: Sequence[float], alpha: float = ALPHA, power: float = POWER) -> float:
    """Seeds a paired test would need to detect the observed mean difference with ``power``
    (normal approximation on the observed standardized effect; never fewer than
    :func:`seeds_to_decide`); inf when no difference was observed."""
    d = np.asarray(differences, dtype=float)
    if d.size == 0 or not np.any(d) or np.mean(d) == 0:
        return math.inf
    floor = seeds_to_decide(alpha)
    spread = float(np.std(d, ddof=1)) if d.size > 1 else math.nan
    if not spread or math.isnan(spread):  # every seed differed by the same amount (or one seed): the floor decides
        return float(floor)
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return float(max(floor, math.ceil((z * spread / abs(float(np.mean(d)))) ** 2)))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment (family-wise error at the level each adjusted p is read at).

    Written out (a dozen lines) rather than taken from statsmodels: scipy has only
    Benjamini-Hochberg (``false_discovery_control``), and statsmodels is a large dependency for it.
    """
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted = [1.0] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


#: What each measure's verdict says: (its name in the report, the better word, the worse word).
MEASURES = {"best_eval_loss": ("best eval_loss", "better", "worse"), "wall_s": ("wall time", "shorter", "longer")}


@dataclass(frozen=True)
class PairedTest:
    """One pair of strategies on one measure, paired by seed."""

    a: str
    b: str
    key: str
    seeds: tuple[int, ...]
    differences: tuple[float, ...]
    """a − b per seed."""
    p: float
    primary: bool
    lower_is_better: bool = True
    p_adjusted: float = math.nan
    """Holm-adjusted p (exploratory tests only)."""
    alpha: float = ALPHA
    family: int = 1
    """Tests in the Holm family this one is adjusted in (1 for a primary test)."""

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def nonzero(self) -> int:
        return sum(d != 0 for d in self.differences)

    @property
    def decidable(self) -> bool:
        """Whether any outcome of these seeds could reject at α (at α / family for an exploratory
        test: the bar Holm puts before the smallest p of its family)."""
        return smallest_p(self.nonzero) <= self.alpha / self.family

    @property
    def p_used(self) -> float:
        return self.p if self.primary else self.p_adjusted

    @property
    def side(self) -> int:
        """-1: a is better (lower, or higher for a max metric), 1: a is worse, 0: not decided. The
        p used (Holm's for an exploratory test) decides; :attr:`decidable` only explains a miss."""
        if math.isnan(self.p_used) or self.p_used > self.alpha:
            return 0
        mean = float(np.mean(self.differences))
        lower = -1 if mean < 0 else 1
        return lower if self.lower_is_better else -lower

    @property
    def needed(self) -> float:
        return seeds_needed(self.differences, self.alpha / self.family)

    def word(self) -> str:
        _, good, bad = MEASURES.get(self.key, (self.key, "better", "worse"))
        return {-1: good, 1: bad}.get(self.side, "not distinguishable")

    def verdict(self) -> str:
        """``better``/``worse`` with p and α, or why it is not decided, and what it would take."""
        seeds = f"{self.n} seed{'s' * (self.n != 1)}"
        p_text = f"p = {self.p_used:.3g}" + ("" if self.primary else " Holm-adjusted")
        if self.side:
            return f"{self.word()} ({p_text} ≤ α = {self.alpha:g}, {seeds})"
        need = "no difference was observed" if math.isinf(self.needed) else \
            f"the observed effect would need ≈ {self.needed:.0f} seeds for {POWER:.0%} power"
        if not self.decidable:
            bar = self.alpha / self.family
            least = seeds_to_decide(bar)
            held = f"α = {self.alpha:g}" if self.family == 1 else f"α / {self.family} = {bar:.3g} (Holm, {self.family} tests)"
            return (f"not distinguishable with {seeds}: an exact paired test on {self.nonzero} differing seed(s) "
                    f"cannot give p below {smallest_p(self.nonzero):.3g} > {held} ({least} is the least "
                    f"that can decide); {need}")
        return f"not distinguishable with {seeds} ({p_text} > α = {self.alpha:g}); {need}"


def paired(a: Aggregate, b: Aggregate, key: str | Callable[[Summary], float], *, name: str = "",
           primary: bool = False, lower_is_better: bool = True) -> PairedTest:
    """The paired test of ``a`` against ``b`` on the seeds both have."""
    va, vb = a.by_seed(key), b.by_seed(key)
    seeds = tuple(sorted(set(va) & set(vb)))
    differences = tuple(va[s] - vb[s] for s in seeds)
    return PairedTest(a.strategy, b.strategy, name or str(key), seeds, differences, paired_p(differences), primary,
                      lower_is_better)


def is_primary(a: str, b: str) -> bool:
    """The quiz's comparisons: the primary strategy (PBT) against each baseline."""
    from harness import strategies

    spec = strategies.REGISTRY
    return any(x in spec and spec[x].primary and y in spec and spec[y].role == "baseline"
               for x, y in ((a, b), (b, a)))


def pairwise(aggregates: list[Aggregate], key: str = "best_eval_loss",
             primary: Callable[[str, str], bool] = is_primary) -> list[PairedTest]:
    """Every pair of comparable strategies on ``key``, paired by seed: the primary pairs each at α,
    the others Holm-adjusted together."""
    comparable = [a for a in aggregates if a.comparable]
    tests = []
    for i, a in enumerate(comparable):
        for b in comparable[i + 1:]:
            lower = not (key == "best_eval_loss" and a.mode == "max")
            tests.append(paired(a, b, key, primary=primary(a.strategy, b.strategy), lower_is_better=lower))
    exploratory = [t for t in tests if not t.primary]
    adjusted = dict(zip(map(id, exploratory), holm([t.p for t in exploratory])))
    return [_primary_first(t) if t.primary else
            PairedTest(**{**vars(t), "p_adjusted": adjusted[id(t)], "family": len(exploratory)}) for t in tests]


def _primary_first(t: PairedTest) -> PairedTest:
    """A primary test told from the primary strategy's side: "pbt better than manual"."""
    if not primary_strategy(t.b):
        return t
    return PairedTest(t.b, t.a, t.key, t.seeds, tuple(-d for d in t.differences), t.p, t.primary, t.lower_is_better,
                      t.p_adjusted, t.alpha, t.family)


def primary_strategy(name: str) -> bool:
    """Whether the registry marks ``name`` as the quiz's subject (``primary=True``: PBT)."""
    from harness import strategies

    return name in strategies.REGISTRY and strategies.REGISTRY[name].primary


# --------------------------------------------------------------------------- all strategies at once

@dataclass(frozen=True)
class Ranking:
    """Average ranks over the seeds every comparable strategy ran, and Friedman's test on them."""

    strategies: tuple[str, ...]
    seeds: tuple[int, ...]
    mean_ranks: tuple[float, ...]
    friedman_p: float = math.nan
    friedman_statistic: float = math.nan
    critical_difference: float = math.nan
    alpha: float = ALPHA

    @property
    def tested(self) -> bool:
        return not math.isnan(self.friedman_p)

    def why_not_tested(self) -> str:
        if len(self.strategies) < 3:
            return f"a Friedman test needs 3 or more strategies ({len(self.strategies)} here): ranks only"
        return (f"a Friedman test needs {FRIEDMAN_MIN_SEEDS} or more seeds that every strategy ran "
                f"({len(self.seeds)} here): ranks only")


def ranking(aggregates: list[Aggregate], alpha: float = ALPHA) -> Ranking:
    """Average rank of the best metric over the seeds all comparable strategies ran (complete
    blocks); with ≥ 3 strategies × ≥ :data:`FRIEDMAN_MIN_SEEDS` seeds, Friedman's test and the
    Nemenyi critical difference of the average ranks (Demšar 2006)."""
    comparable = [a for a in aggregates if a.comparable]
    seeds = sorted(set.intersection(*(set(a.ranks) for a in comparable))) if comparable else []
    names = tuple(a.strategy for a in comparable)
    if not seeds:
        return Ranking(names, (), tuple(math.nan for _ in names), alpha=alpha)
    mean_ranks = tuple(float(np.mean([a.ranks[s] for s in seeds])) for a in comparable)
    k, n = len(comparable), len(seeds)
    if k < 3 or n < FRIEDMAN_MIN_SEEDS:
        return Ranking(names, tuple(seeds), mean_ranks, alpha=alpha)
    columns = [[a.by_seed("best_eval_loss")[s] for s in seeds] for a in comparable]
    if all(len(set(row)) == 1 for row in zip(*columns)):  # every seed a full tie: nothing to test
        statistic, p = 0.0, 1.0
    else:
        statistic, p = (float(x) for x in stats.friedmanchisquare(*columns))
    q = float(stats.studentized_range.ppf(1 - alpha, k, 1e6)) / math.sqrt(2)
    cd = q * math.sqrt(k * (k + 1) / (6 * n))
    return Ranking(names, tuple(seeds), mean_ranks, p, statistic, cd, alpha)


# --------------------------------------------------------------------------- anytime, normalized

#: Fractions of the budget at which the normalized anytime ranks are taken.
FRACTIONS = tuple(round(0.05 * i, 2) for i in range(1, 21))


def best_after(curve: Sequence[tuple[float, float]], spent: float, mode: str) -> float:
    """The best metric once ``spent`` trial-iterations were run, from ``(iterations, best so far)``
    points in arrival order (NaN before the first result)."""
    best = math.nan
    for iterations, value in curve:
        if iterations > spent + 1e-9:
            break
        best = value
    return best


def anytime_ranks(curves: dict[tuple[str, int], Sequence[tuple[float, float]]], budgets: dict[tuple[str, int], float],
                  mode: str = "min", fractions: Sequence[float] = FRACTIONS) -> dict[str, list[float]]:
    """Syne Tune's normalized anytime plot: at each fraction of its budget spent, every strategy's
    best-so-far is ranked against the others' of the same seed (no result yet: last), and the ranks
    are averaged over seeds. ``curves``: (strategy, seed) -> (trial-iterations spent, best so far)."""
    names = sorted({name for name, _ in curves}, key=lambda n: list(dict.fromkeys(k[0] for k in curves)).index(n))
    seeds = sorted({seed for _, seed in curves})
    out: dict[str, list[float]] = {name: [] for name in names}
    for f in fractions:
        per_seed: dict[str, list[float]] = {name: [] for name in names}
        for seed in seeds:
            here = [n for n in names if (n, seed) in curves]
            if len(here) < 2:
                continue
            values = [best_after(curves[(n, seed)], f * budgets[(n, seed)], mode) for n in here]
            keyed = [math.inf if math.isnan(v) else (v if mode == "min" else -v) for v in values]
            for n, r in zip(here, stats.rankdata(keyed)):
                per_seed[n].append(float(r))
        for n in names:
            out[n].append(float(np.mean(per_seed[n])) if per_seed[n] else math.nan)
    return out

