"""The command line: ``python -m harness <command>``. Parse, call, print: the only module that
parses arguments, and one that decides nothing.

The commands that train or talk to MLflow import their module when they run, so that the light
ones (``ports``, ``job-plan``, ``capacity``, ``config``) answer a SLURM script in a fraction of
a second instead of paying for torch, Ray and MLflow.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness import strategies, tasks
from harness.cluster import ports
from harness.cluster.capacity import Node, TrialShape, plan
from harness.cluster.redaction import RedactCredentials, redact
from harness.config import ExperimentConfig, available_presets, known_keys
from harness.contract.errors import InputError
from harness.contract.rundir import RunDir
from harness.driver.preflight import preflight
from harness.reporting import collect, report

EXIT_BAD_INPUT = 2
#: A run stopped early (SIGUSR1 before a SLURM time limit) with its state saved: --resume continues it.
EXIT_STOPPED = 75

#: CLI flags that override the search space (after the environment variables).
SEARCH_FLAGS = {
    "lr_lower": ("--lr-lower", "search.lr_lower"),
    "lr_upper": ("--lr-upper", "search.lr_upper"),
    "bs_choices": ("--bs-choices", "search.bs_choices"),
    "wd_choices": ("--wd-choices", "search.wd_choices"),
}
#: Flags that name a config field directly: (attribute, flag, key).
FIELD_FLAGS = (("strategy", "--strategy", "strategy"), ("results_dir", "--results-dir", "results_dir"),
               ("seed", "--seed", "seed"))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit 2, like every other bad input
        self.exit(EXIT_BAD_INPUT, f"error: {message}; see `python -m harness {self.prog.split()[-1]} --help`\n")


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=os.environ.get("PRESET", "smoke"),
                   help=f"preset name ({', '.join(available_presets())}), a .toml path, or a task's name "
                        f"({', '.join(tasks.names())}: the task on its own defaults) [env PRESET]")
    p.add_argument("--strategy", default=None, help=f"{', '.join(strategies.names())} (default: the preset's)")
    p.add_argument("--lr-lower", help="lowest learning rate (overrides LR_LOWER)")
    p.add_argument("--lr-upper", help="highest learning rate (overrides LR_UPPER)")
    p.add_argument("--bs-choices", help='batch sizes, e.g. "1 2" (overrides BS_CHOICES)')
    p.add_argument("--wd-choices", help='weight decays, e.g. "0.0 0.01" (overrides WD_CHOICES)')
    p.add_argument("--results-dir", help="where run folders and the MLflow store go")
    p.add_argument("--seed", help="seeds data, model init, sampling, PBT's decisions and training (default: the preset's)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="the run in this folder, with its own config.json: `run --resume` continues it (its MLflow "
                        "runs too) after a crash, a kill or a stop before a time limit")
    p.add_argument("--no-mlflow", action="store_true",
                   help="run without MLflow (the run folder keeps the record, tables and logs)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set budget.trial_iterations=24 (repeatable)")


def _config_from(args: argparse.Namespace) -> ExperimentConfig:
    """The configuration the flags ask for; with ``--resume``, the run folder's own (any other
    config flag would change it: refused)."""
    if args.resume:
        given = [flag for attr, flag, _ in FIELD_FLAGS if getattr(args, attr) is not None]
        given += [flag for attr, (flag, _) in SEARCH_FLAGS.items() if getattr(args, attr) is not None]
        given += ["--set"] if args.sets else []
        if given:
            raise InputError(f"--resume continues the run with its own config.json; drop {', '.join(given)}")
        return ExperimentConfig.from_dict(RunDir.existing(args.resume, what="--resume").config_data())
    overrides: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for item in args.sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--set {item!r} is not KEY=VALUE; e.g. --set budget.trial_iterations=24")
        if key.strip() not in known_keys():
            raise InputError(f"--set {key!r} is not a config key; known keys: {', '.join(known_keys())}")
        overrides[key.strip()], origins[key.strip()] = value, f"--set {key.strip()}"
    flags = [(attr, flag, key) for attr, (flag, key) in SEARCH_FLAGS.items()] + list(FIELD_FLAGS)
    for attr, flag, key in flags:
        if getattr(args, attr) is not None:
            overrides[key], origins[key] = getattr(args, attr), flag
    return tasks.resolve(args.preset, overrides=overrides, override_origins=origins)


def _cmd_run(args: argparse.Namespace) -> int:
    from harness.driver import runner  # Ray Tune, torch: only when a run starts

    cfg = _config_from(args)  # bad input: one line, before anything starts
    tracking = not args.no_mlflow
    try:
        if args.resume:
            outcome = runner.resume(args.resume, ray_address=args.ray_address, verbose=args.verbose, tracking=tracking)
        else:
            outcome = runner.run(cfg, ray_address=args.ray_address, verbose=args.verbose, tracking=tracking)
    except runner.RunStopped as stopped:
        print(f"stopped: {stopped.reason}, before any trial started; continue with python -m harness run --resume "
              f"{stopped.run_dir} (make resume RUN=..., on SLURM: RESUME=...)", file=sys.stderr)
        return EXIT_STOPPED
    print(outcome.tables_markdown)
    print(f"run folder: {outcome.run_dir}")
    if outcome.record.mlflow_run_id:
        print(f"MLflow: {outcome.record.mlflow_run_id} in {redact(outcome.tracking_uri)} (make mlflow-ui)")
    if outcome.record.stopped:
        print(f"stopped: {outcome.record.stopped}, before every trial was done; continue with "
              f"python -m harness run --resume {outcome.run_dir} (make resume RUN=..., on SLURM: RESUME=...)",
              file=sys.stderr)
        return EXIT_STOPPED
    if outcome.failed_trials:
        print(f"error: {len(outcome.failed_trials)} trial(s) did not finish: {', '.join(outcome.failed_trials)}; "
              f"see {outcome.run_dir.record_file}", file=sys.stderr)
        return 1
    return 0


def _configs_for(args: argparse.Namespace, names: Sequence[str], seeds: Sequence[int]) -> list[ExperimentConfig]:
    """One config per (strategy, seed), every one resolved and checked before the first run starts."""
    if args.seed is not None or args.strategy is not None or args.resume:
        raise InputError(f"{args.command} takes --strategies (and --seeds/--pool); drop --strategy/--seed/--resume "
                         "(python -m harness run --resume <run folder> continues one run)")
    for name in names:
        strategies.spec(name)  # an unknown name: one line, before anything runs
    configs = []
    for name in names:
        for seed in seeds:
            args.strategy, args.seed = name, str(seed)
            configs.append(_config_from(args))
    args.strategy = args.seed = None
    return configs


def _cmd_bench(args: argparse.Namespace) -> int:
    from harness.driver import bench  # Ray Tune, MLflow: only when runs start
    from harness.reporting.seeds import seeds_to_decide

    names = (args.strategies or " ".join(strategies.names())).replace(",", " ").split()
    try:
        seeds = [int(s) for s in (args.seeds or " ".join(map(str, range(seeds_to_decide())))).replace(",", " ").split()]
    except ValueError:
        raise InputError(f"--seeds {args.seeds!r} is not a list of whole numbers; e.g. --seeds \"0 1 2 3 4 5\"") from None
    if not seeds or not names:
        raise InputError("bench needs at least one strategy and one seed; e.g. --strategies \"manual pbt\" --seeds \"0 1\"")
    configs = _configs_for(args, names, seeds)
    print(f"{len(configs)} runs ({len(names)} strategies x {len(seeds)} seeds: {' '.join(map(str, seeds))}) "
          f"of preset {configs[0].preset}, task {configs[0].task}, in one process and one Ray session", flush=True)

    def line(run: Any) -> None:
        o = run.outcome
        best = o.record.best_trial()
        print(f"{run.label}: {run.seconds:.1f} s, best {configs[0].tune.metric} "
              f"{best.eval_loss if best else float('nan'):.4f}, {o.run_dir}", flush=True)

    runs = bench.bench(configs, ray_address=args.ray_address, verbose=args.verbose, tracking=not args.no_mlflow,
                       progress=line)
    total = sum(r.seconds for r in runs)
    print(f"{sum(r.outcome is not None for r in runs)} of {len(runs)} runs done in {total:.1f} s")
    stopped = [r for r in runs if r.outcome is not None and r.outcome.record.stopped]
    never = [r for r in runs if r.outcome is None]
    if stopped or never:
        for r in stopped:
            print(f"stopped: {r.label}; continue with python -m harness run --resume {r.outcome.run_dir}", file=sys.stderr)
        if never:
            print(f"not started: {', '.join(r.label for r in never)}", file=sys.stderr)
        return EXIT_STOPPED
    failed = [f"{r.label}: {', '.join(r.outcome.failed_trials)}" for r in runs if r.outcome and r.outcome.failed_trials]
    if failed:
        print(f"error: trials did not finish: {'; '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from harness.driver import calibrate
    from harness.reporting.seeds import seeds_to_decide

    draw = args.draw or seeds_to_decide()
    if args.pool < draw or args.reps < 1:
        raise InputError(f"--pool {args.pool} must hold at least --draw {draw} seeds and --reps at least 1; "
                         f"e.g. --pool 24 --reps 200")
    names = (args.strategies or " ".join(strategies.names())).replace(",", " ").split()
    configs = _configs_for(args, names, range(args.pool))
    task = tasks.get(configs[0].task)
    results = Path(configs[0].results_dir)
    summaries = calibrate.pool_runs(configs, results, tracking=not args.no_mlflow)
    result = calibrate.calibrate(summaries, task=task.name, control=task.control or "no", draw=draw, reps=args.reps,
                                 mode=configs[0].tune.mode)
    files = calibrate.write(result, results / "calibration")
    print("\n".join(result.lines()))
    print(f"written: {', '.join(map(str, files))}")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    print(_config_from(args).to_json())
    return 0


def _cmd_job_plan(args: argparse.Namespace) -> int:
    """What a SLURM head job needs to know, as KEY=value lines (read, never evaluated, by the job),
    after the pre-flight a run makes, less what depends on this machine."""
    cfg = _config_from(args)
    preflight(cfg, here=False, tracking=not args.no_mlflow)
    print(f"STRATEGY={cfg.strategy}\nUSES_RAY={0 if strategies.spec(cfg.strategy).sequential else 1}")
    return 0


def _cmd_strategies(args: argparse.Namespace) -> int:
    for name in strategies.names():
        entry = strategies.spec(name)
        print(f"{name:10} {entry.role:9} {entry.summary}" if args.describe else name)
    return 0


def _cmd_tasks(args: argparse.Namespace) -> int:
    for name, task in tasks.registry().items():
        print(f"{name:13} {task.metric} ({task.mode}) {task.summary}" if args.describe else name)
    return 0


def _cmd_tables(args: argparse.Namespace) -> int:
    record = RunDir.with_record(args.run_dir).record()
    print("\n".join(t.markdown() for t in report.tables(record)))
    return 0


def _cmd_capacity(args: argparse.Namespace) -> int:
    cfg = _config_from(args)
    r = cfg.resources
    nodes = [Node(cpus=args.cpus_per_node, gpus=args.gpus_per_node, system_cpus=args.system_cpus)] * args.nodes
    trials = strategies.spec(cfg.strategy).planned_trials(cfg)
    print(plan(nodes, TrialShape(r.workers_per_trial, r.cpus_per_worker, r.gpus_per_worker), trials).summary())
    return 0


def _cmd_ports(args: argparse.Namespace) -> int:
    for name, port in ports.choose(args.worker_ports).items():
        print(f"{name}={port}")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from harness.trial import prepare  # torch, transformers, datasets

    cfg = _config_from(args)
    if args.check:
        prepared = prepare.verify(cfg)
        print(f"cache complete for preset {cfg.preset} (model, dataset, tokenized data; fingerprint {prepared.fingerprint})")
        return 0
    prepared = prepare.prepare(cfg)
    print(f"prepared {prepared.cache} for preset {cfg.preset}, verified offline:")
    print("\n".join(f"  {line}" for line in prepared.lines()))
    return 0


def _cmd_sync(args: argparse.Namespace) -> int:
    from harness.driver.sync import sync  # MLflow

    run_dir, sent = sync(args.run_dir)
    print(f"{run_dir}: {sent} spooled event(s) sent to MLflow" if sent else f"{run_dir}: nothing waits for MLflow")
    return 0


def _cmd_collect(args: argparse.Namespace) -> int:
    text, folder = collect.collect(args.log)
    print(text)
    print(f"tables: {folder}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from harness.driver.compare import compare  # MLflow, matplotlib

    done = compare(args.runs, out=args.out, latest=args.latest, preset=args.preset)
    print(done.text)
    print(f"comparison: {done.out} (MLflow run {done.mlflow_run_id})")
    _print_ui_urls(done.results_dir, args.ui_port)
    return 0


def _cluster(args: argparse.Namespace) -> Any:
    from harness.simulate.study import Cluster

    if args.nodes < 1 or args.cpus_per_node <= 0:
        raise InputError(f"--nodes {args.nodes} --cpus-per-node {args.cpus_per_node:g}: a cluster needs at least one "
                         "node with CPUs; e.g. --nodes 2 --cpus-per-node 20 --gpus-per-node 8 --system-cpus 2")
    return Cluster(args.nodes, args.cpus_per_node, args.gpus_per_node, args.system_cpus)


def _numbers(text: str, flag: str, least: int = 1) -> list[int]:
    try:
        values = [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise InputError(f"{flag} {text!r} is not a list of whole numbers; e.g. {flag} \"1 2 4 8\"") from None
    if not values or min(values) < least:
        raise InputError(f"{flag} {text!r}: give whole numbers of at least {least}, e.g. {flag} \"1 2 4 8\"")
    return values


#: simulate's options, and the actions each one means something to (given to another: refused).
_SIMULATE_OPTIONS = {
    "reps": ("--reps", ("replay",)), "node_cores": ("--node-cores", ("replay", "fit")),
    "costs": ("--costs", ("what-if", "scaling")), "strategies": ("--strategies", ("what-if",)),
    "seeds": ("--seeds", ("what-if",)), "strategy": ("--strategy", ("what-if",)), "seed": ("--seed", ("what-if",)),
    "sets": ("--set", ("what-if", "scaling")), "resume": ("--resume", ()),
    "nodes_sweep": ("--nodes-sweep", ("scaling",)), "populations": ("--populations", ("scaling",)),
    "population": ("--population", ("scaling",)), "node_count": ("--node-count", ("scaling",)),
    "preset": ("--preset", ("what-if", "scaling")), "results_dir": ("--results-dir", ("what-if", "scaling")),
    "no_mlflow": ("--no-mlflow", ("replay", "what-if")),
    **{attr: (flag, ("what-if", "scaling")) for attr, (flag, _) in SEARCH_FLAGS.items()},
}


def _cmd_simulate(args: argparse.Namespace) -> int:
    from harness.simulate import commands  # SimPy, and matplotlib / MLflow for the reports

    defaults = build_parser().parse_args(["simulate", args.action])
    for attr, (flag, actions) in _SIMULATE_OPTIONS.items():
        if getattr(args, attr) != getattr(defaults, attr) and args.action not in actions:
            where = f"only to {' and '.join(actions)}" if actions else "to no simulation"
            raise InputError(f"{flag} applies {where}, not to simulate {args.action}; drop it")
    for flag, value, least in (("--reps", args.reps, 1), ("--population", args.population, 1),
                               ("--node-count", args.node_count, 1), ("--node-cores", args.node_cores, 0)):
        if value < least:
            raise InputError(f"{flag} {value:g} is below {least}; give {least} or more"
                             + (" (0: trials never share cores)" if flag == "--node-cores" else ""))
    if args.action in ("replay", "fit"):
        if args.action == "fit":
            print(commands.fit_costs(args.runs, preset=args.filter_preset, out=Path(args.out or "costs.json"),
                                     cores_per_node=args.node_cores))
            return 0
        out = Path(args.out) if args.out else commands.default_out("replay", args.runs[0] if args.runs else "results")
        print(commands.replay(args.runs, preset=args.filter_preset, out=out, cores_per_node=args.node_cores,
                              reps=args.reps, tracking=not args.no_mlflow))
        return 0
    costs = Path(args.costs) if args.costs else commands.SEED_SCALE_COSTS
    cluster = _cluster(args)
    out = Path(args.out) if args.out else commands.default_out(args.action, args.results_dir or "results")
    if args.action == "scaling":
        print(commands.scale(_config_from(args), costs_file=costs, cluster=cluster, curve_paths=args.runs,
                             curves_preset=args.filter_preset,
                             nodes=sorted(set(_numbers(args.nodes_sweep, "--nodes-sweep"))),
                             populations=sorted(set(_numbers(args.populations, "--populations"))),
                             population=args.population, node_count=args.node_count, out=out))
        return 0
    names = list(dict.fromkeys((args.strategies or "").split())) or [args.strategy or _config_from(args).strategy]
    seed = _numbers(args.seed, "--seed", least=0) if args.seed else [_config_from(args).seed]
    seeds = sorted(set(_numbers(args.seeds, "--seeds", least=0))) if args.seeds else seed
    args.strategy = args.seed = None  # taken into names and seeds
    configs = _configs_for(args, names, seeds)
    print(commands.what_if(configs, costs_file=costs, cluster=cluster, curve_paths=args.runs, out=out,
                           curves_preset=args.filter_preset,
                           results_dir=Path(args.results_dir) if args.results_dir else None,
                           tracking=not args.no_mlflow))
    return 0


def _print_ui_urls(results_dir: Any, port: int) -> None:
    from harness.reporting import tracking  # MLflow

    print("\n".join(tracking.ui_lines(results_dir, port)))


def _cmd_ui_urls(args: argparse.Namespace) -> int:
    _print_ui_urls(args.results_dir, args.port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="harness", description="HPO benchmark harness (Ray Tune + HF Trainer + MLflow)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run one benchmark (a strategy on a preset)")
    _config_args(run)
    run.add_argument("--ray-address", default="local",
                     help='"local" starts a private Ray (default); or the address of a running cluster')
    run.add_argument("--verbose", action="store_true",
                     help="also print Ray's trial table, the trial processes' output and every library's INFO lines "
                          "(they always go to the run folder: harness.log, logs/)")
    run.set_defaults(fn=_cmd_run)
    many = sub.add_parser("bench", help="every strategy x seed of a comparison in one process and one Ray session "
                          "(what make bench-all runs)")
    _config_args(many)
    many.add_argument("--strategies", help="strategies to run, in order (default: every registered one)")
    many.add_argument("--seeds", help="seeds to run each strategy with (default: 0 1 2 3 4 5, the fewest with which an "
                                      "exact paired test can decide at α = 0.05)")
    many.add_argument("--ray-address", default="local",
                      help='"local" starts one private Ray for every run (default); or the address of a running cluster')
    many.add_argument("--verbose", action="store_true", help="as for run")
    many.set_defaults(fn=_cmd_bench)
    cal = sub.add_parser("calibrate", help="how often the verdicts decide on a task (the controls): runs every "
                         "strategy on a pool of seeds, then the verdicts of --reps comparisons drawn from it")
    _config_args(cal)
    cal.add_argument("--strategies", help="strategies to run (default: every registered one)")
    cal.add_argument("--pool", type=int, default=24, help="seeds 0..pool-1 run per strategy (default 24)")
    cal.add_argument("--reps", type=int, default=200, help="comparisons drawn from the pool (default 200)")
    cal.add_argument("--draw", type=int, default=0, help="seeds per comparison (default: 6, the default of a comparison)")
    cal.set_defaults(fn=_cmd_calibrate)
    show = sub.add_parser("config", help="print the resolved configuration (and validate it)")
    _config_args(show)
    show.set_defaults(fn=_cmd_config)
    plan_ = sub.add_parser("job-plan", help="the run's pre-flight, then whether the strategy needs Ray "
                           "(KEY=value lines, for the SLURM head job)")
    _config_args(plan_)
    plan_.set_defaults(fn=_cmd_job_plan)
    strat = sub.add_parser("strategies", help="list the registered strategies (one name per line)")
    strat.add_argument("--describe", action="store_true", help="with each one's role and what it does")
    strat.set_defaults(fn=_cmd_strategies)
    task = sub.add_parser("tasks", help="list the registered tasks (what a trial trains; --preset <task> runs one)")
    task.add_argument("--describe", action="store_true", help="with each one's metric, mode and what it is")
    task.set_defaults(fn=_cmd_tasks)
    tab = sub.add_parser("tables", help="print a finished run's result tables")
    tab.add_argument("run_dir")
    tab.set_defaults(fn=_cmd_tables)
    cap = sub.add_parser("capacity", help="how many trials fit at once on N nodes, and how many wait PENDING")
    _config_args(cap)
    cap.add_argument("--nodes", type=int, default=1, help="nodes in the Ray cluster")
    cap.add_argument("--cpus-per-node", type=float, required=True, help="Cnode")
    cap.add_argument("--gpus-per-node", type=float, default=0, help="Gnode")
    cap.add_argument("--system-cpus", type=float, default=0, help="Csys: CPUs kept for the system and Ray itself")
    cap.set_defaults(fn=_cmd_capacity)
    port = sub.add_parser("ports", help="free ports for a Ray node outside the ephemeral range, as KEY=value lines")
    port.add_argument("--worker-ports", type=int, default=64)
    port.set_defaults(fn=_cmd_ports)
    prep = sub.add_parser("prepare", help="fill the offline cache (model, tokenizer, dataset, tokenized data) "
                          "where there is network; --check verifies it offline")
    _config_args(prep)
    prep.add_argument("--check", action="store_true",
                      help="only verify, offline, that the cache holds everything a run reads (exit 2 if not)")
    prep.set_defaults(fn=_cmd_prepare)
    syn = sub.add_parser("sync", help="send a run's MLflow events that the tracking server did not take "
                         "(kept in <run>/mlflow_spool.jsonl), without duplicates")
    syn.add_argument("run_dir")
    syn.set_defaults(fn=_cmd_sync)
    col = sub.add_parser("collect", help="the seed's tables from a SLURM head job's log and its run record")
    col.add_argument("log")
    col.set_defaults(fn=_cmd_collect)
    cmp_ = sub.add_parser("compare", help="compare strategies from their run records (report, CSV, plots, MLflow)")
    cmp_.add_argument("runs", nargs="*", help="run folders (one per strategy)")
    cmp_.add_argument("--latest", metavar="RESULTS_DIR",
                      help="use the newest run of each strategy and seed in this folder")
    cmp_.add_argument("--preset", help="with --latest: only runs of this preset")
    cmp_.add_argument("--out", help="folder for comparison.md/.csv and the plots")
    cmp_.add_argument("--ui-port", type=int, default=int(os.environ.get("MLFLOW_PORT", 5000)),
                      help="the MLflow UI's port in the printed URLs [env MLFLOW_PORT, 5000]")
    cmp_.set_defaults(fn=_cmd_compare)
    sim = sub.add_parser("simulate", help="the schedule simulator (SimPy): replay measured runs and check the "
                         "prediction, fit a cost model, or predict a strategy on another cluster (what-if, scaling)")
    sim.add_argument("action", choices=("replay", "fit", "what-if", "scaling"),
                     help="replay: every run in RUNS replayed and compared with what it measured; fit: a cost model "
                          "from RUNS (--out FILE); what-if: --strategies on the cluster below; scaling: wall and "
                          "utilization against nodes and population")
    sim.add_argument("runs", nargs="*", help="run folders or results folders holding them (replay, fit: the runs; "
                                             "what-if, scaling: the recorded curves losses are drawn from)")
    _config_args(sim)
    sim.add_argument("--filter-preset", help="only run folders of this preset (replay, fit: the runs; what-if, scaling: "
                                             "the loss curves)")
    sim.add_argument("--node-cores", type=float, default=0.0,
                     help="replay, fit: cores the runs' trials shared per node, to undo CPU contention (a local "
                          "run: nproc); 0: none (GPU nodes)")
    sim.add_argument("--reps", type=int, default=20, help="replay: simulations per prediction (their median)")
    sim.add_argument("--costs", help="what-if, scaling: a cost model file (default: harness/simulate/seed_scale.toml, "
                                     "the seed's cluster, assumed)")
    sim.add_argument("--strategies", help="what-if: strategies to simulate (default: --strategy or the preset's)")
    sim.add_argument("--seeds", help='what-if: seeds, e.g. "0 1 2 3 4 5" (each draws other costs and curves)')
    sim.add_argument("--nodes", type=int, default=2, help="what-if, scaling: nodes (default 2, the seed's)")
    sim.add_argument("--cpus-per-node", type=float, default=20, help="Cnode (default 20)")
    sim.add_argument("--gpus-per-node", type=float, default=8, help="Gnode (default 8)")
    sim.add_argument("--system-cpus", type=float, default=2, help="Csys (default 2)")
    sim.add_argument("--nodes-sweep", default="1 2 4 8 16 32 64", help="scaling: node counts")
    sim.add_argument("--populations", default="8 16 32 64 128 256 512", help="scaling: population sizes")
    sim.add_argument("--population", type=int, default=64, help="scaling: the population of the node sweep")
    sim.add_argument("--node-count", type=int, default=8, help="scaling: the nodes of the population sweep")
    sim.add_argument("--out", help="output folder (fit: the cost model's file)")
    sim.set_defaults(fn=_cmd_simulate)
    urls = sub.add_parser("ui-urls", help="the MLflow UI URLs of the runs tables and the newest comparison")
    urls.add_argument("--results-dir", default="results")
    urls.add_argument("--port", type=int, default=int(os.environ.get("MLFLOW_PORT", 5000)))
    urls.set_defaults(fn=_cmd_ui_urls)
    return parser


def _console_logging(verbose: bool) -> None:
    """The harness's own lines on the console, other libraries' only from WARNING on (all of them
    with --verbose); the run's log file (runner) takes everything from INFO on either way."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactCredentials())
    if not verbose:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported, later

        def quiet(record: logging.LogRecord) -> bool:
            return record.name.startswith("harness") or record.levelno >= logging.WARNING

        for handler in logging.getLogger().handlers:
            handler.addFilter(quiet)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _console_logging(verbose=getattr(args, "verbose", False))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return args.fn(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
