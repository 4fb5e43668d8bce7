"""The command line: ``python -m harness <command>``. The only module that parses arguments."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from harness.config import ConfigError, available_presets, known_keys, resolve

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


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit 2, like every other bad input
        self.exit(EXIT_BAD_INPUT, f"error: {message}; see `python -m harness {self.prog.split()[-1]} --help`\n")


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=os.environ.get("PRESET", "smoke"),
                   help=f"preset name ({', '.join(available_presets())}) or a .toml path [env PRESET]")
    p.add_argument("--strategy", default=None, help="registered strategy (default: the preset's)")
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


def _config_from(args: argparse.Namespace) -> Any:
    if args.resume:
        return _resumed_config(args)
    overrides: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for item in args.sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r} is not KEY=VALUE; e.g. --set budget.trial_iterations=24")
        if key.strip() not in known_keys():
            raise ConfigError(f"--set {key!r} is not a config key; known keys: {', '.join(known_keys())}")
        overrides[key.strip()] = value
        origins[key.strip()] = f"--set {key.strip()}"
    for attr, (flag, key) in SEARCH_FLAGS.items():
        value = getattr(args, attr)
        if value is not None:
            overrides[key], origins[key] = value, flag
    if args.strategy is not None:
        overrides["strategy"], origins["strategy"] = args.strategy, "--strategy"
    if args.results_dir is not None:
        overrides["results_dir"], origins["results_dir"] = args.results_dir, "--results-dir"
    if args.seed is not None:
        overrides["seed"], origins["seed"] = args.seed, "--seed"
    return resolve(args.preset, overrides=overrides, override_origins=origins)


def _resumed_config(args: argparse.Namespace) -> Any:
    """The config of the run in ``--resume RUN_DIR``; other config flags would change it: refused."""
    import json
    from pathlib import Path

    from harness.config import ExperimentConfig

    given = [flag for flag, on in (("--set", args.sets), ("--seed", args.seed), ("--strategy", args.strategy),
                                   ("--results-dir", args.results_dir),
                                   *((f, getattr(args, a)) for a, (f, _) in SEARCH_FLAGS.items())) if on]
    if given:
        raise ConfigError(f"--resume continues the run with its own config.json; drop {', '.join(given)}")
    config = Path(args.resume) / "config.json"
    if not config.is_file():
        raise ConfigError(f"--resume {args.resume!r} is not a run folder of this harness (no config.json); "
                          "give a folder under results/")
    return ExperimentConfig.from_dict(json.loads(config.read_text()))


def _cmd_run(args: argparse.Namespace) -> int:
    from harness.driver import runner
    from harness.cluster.redaction import redact

    if args.resume:
        _resumed_config(args)  # refuses other config flags and a folder that is no run, in one line
        outcome = runner.resume(args.resume, ray_address=args.ray_address, verbose=args.verbose,
                                tracking=not args.no_mlflow)
        cfg = outcome.cfg
    else:
        cfg = _config_from(args)
        outcome = runner.run(cfg, ray_address=args.ray_address, verbose=args.verbose,  # pre-flight refuses bad input
                             tracking=not args.no_mlflow)
    print(outcome.tables_markdown)
    print(f"run folder: {outcome.run_dir}")
    if outcome.record.mlflow_run_id:
        print(f"MLflow: {outcome.record.mlflow_run_id} in {redact(_tracking_uri(cfg))} (make mlflow-ui)")
    if outcome.record.stopped:
        print(f"stopped: {outcome.record.stopped}, before every trial was done; continue with "
              f"python -m harness run --resume {outcome.run_dir} (make resume RUN=..., on SLURM: RESUME=...)",
              file=sys.stderr)
        return EXIT_STOPPED
    if outcome.failed_trials:
        print(f"error: {len(outcome.failed_trials)} trial(s) did not finish: {', '.join(outcome.failed_trials)}; "
              f"see {outcome.run_dir / 'run_record.json'}", file=sys.stderr)
        return 1
    return 0


def _tracking_uri(cfg: Any) -> str:
    from harness.reporting.tracking import tracking_uri

    return tracking_uri(cfg.results_dir)


def _cmd_config(args: argparse.Namespace) -> int:
    print(_config_from(args).to_json())
    return 0


def _cmd_job_plan(args: argparse.Namespace) -> int:
    """What a SLURM head job needs to know, as KEY=value lines (read, never evaluated, by the job)."""
    from harness import strategies

    cfg = _config_from(args)
    uses_ray = 0 if strategies.spec(cfg.strategy).sequential else 1
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri and not args.no_mlflow:  # a dead tracking server stops the job here, before Ray
        from harness.cluster.reachability import tracking_problem

        problem = tracking_problem(uri)
        if problem:
            raise ConfigError(f"{problem}; start it, or add --no-mlflow to HARNESS_ARGS")
    print(f"STRATEGY={cfg.strategy}\nUSES_RAY={uses_ray}")
    return 0


def _cmd_strategies(args: argparse.Namespace) -> int:
    from harness import strategies

    print("\n".join(strategies.names()))
    return 0


def _cmd_tables(args: argparse.Namespace) -> int:
    from harness.contract.record import RunRecord
    from harness.reporting.report import tables

    try:
        record = RunRecord.load(args.run_dir)
    except FileNotFoundError:
        raise ConfigError(f"{args.run_dir!r} holds no run_record.json; give a run folder under results/") from None
    print("\n".join(t.markdown() for t in tables(record)))
    return 0


def _cmd_capacity(args: argparse.Namespace) -> int:
    from harness import strategies
    from harness.cluster.capacity import Node, TrialShape, plan

    cfg = _config_from(args)
    r = cfg.resources
    nodes = [Node(cpus=args.cpus_per_node, gpus=args.gpus_per_node, system_cpus=args.system_cpus)] * args.nodes
    trials = strategies.spec(cfg.strategy).planned_trials(cfg)
    print(plan(nodes, TrialShape(r.workers_per_trial, r.cpus_per_worker, r.gpus_per_worker), trials).summary())
    return 0


def _cmd_ports(args: argparse.Namespace) -> int:
    from harness.cluster.ports import choose

    for name, port in choose(args.worker_ports).items():
        print(f"{name}={port}")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from harness.trial import prepare
    from harness.driver.runner import cache_dir, cpu_only_deepspeed

    cfg = _config_from(args)
    cpu_only_deepspeed()
    cache = cache_dir(cfg)
    cache_args = ([f"--seed={args.seed}"] if args.seed is not None else []) + [f"--set={s}" for s in args.sets]
    fix = prepare.prepare_command(cfg.preset, cache, cache_args)
    if args.check:
        prepared = prepare.verify(cfg, cache, fix=fix)
        print(f"cache complete for preset {cfg.preset} (model, dataset, tokenized data; fingerprint {prepared.fingerprint})")
        return 0
    prepared = prepare.prepare(cfg, cache, fix=fix)
    print(f"prepared {cache} for preset {cfg.preset}, verified offline:")
    print("\n".join(f"  {line}" for line in prepared.lines()))
    return 0


def _cmd_sync(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from harness.contract import events
    from harness.config import ExperimentConfig
    from harness.cluster.reachability import tracking_problem
    from harness.reporting.tracking import SPOOL_FILE, Tracker, tracking_uri

    run_dir = Path(args.run_dir).resolve()
    if not (run_dir / "config.json").is_file() or not (run_dir / events.EVENTS_FILE).is_file():
        raise ConfigError(f"{args.run_dir!r} is not a run folder of this harness; give a folder under results/")
    spool = run_dir / SPOOL_FILE
    waiting = [line for line in spool.read_text().splitlines() if line.strip()] if spool.is_file() else []
    if not waiting:
        print(f"{run_dir}: nothing waits for MLflow")
        return 0
    cfg = ExperimentConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    problem = tracking_problem(tracking_uri(cfg.results_dir))
    if problem:
        raise ConfigError(f"{problem}; {len(waiting)} event(s) stay in {spool}: run sync again when it answers")
    tracker = Tracker(cfg, run_dir, tags={}, events=events.EventLog(run_dir), resume=events.mlflow_runs(run_dir))
    tracker.parent_id, tracker.children = tracker.resume["parent"], dict(tracker.resume["children"])
    if not tracker.flush(force=True):
        raise ConfigError(f"MLflow stopped answering during the sync; {tracker.pending()} event(s) stay in {spool}")
    print(f"{run_dir}: {len(waiting)} spooled event(s) sent to MLflow")
    return 0


def _cmd_collect(args: argparse.Namespace) -> int:
    from harness.reporting.collect import collect

    text, folder = collect(args.log)
    print(text)
    print(f"tables: {folder}")
    return 0


def _latest_runs(results_dir: str, preset: str | None) -> list[str]:
    """The newest run folder of each (strategy, seed) under ``results_dir`` (by the record's start
    time), of ``preset`` only when given."""
    from pathlib import Path

    from harness.contract.record import RunRecord

    latest: dict[tuple[str, int], tuple[float, str]] = {}
    for record_file in Path(results_dir).glob("*/run_record.json"):
        record = RunRecord.load(record_file)
        if preset and Path(record.preset).stem != Path(preset).stem:
            continue
        key = (record.strategy, record.seed)
        if key not in latest or record.started_at > latest[key][0]:
            latest[key] = (record.started_at, str(record_file.parent))
    if not latest:
        which = f" of preset {preset!r}" if preset else ""
        raise ConfigError(f"--latest {results_dir!r}: no run folders{which} with a run_record.json; "
                          "run make bench-... first")
    return [path for _, path in sorted(latest.values())]


def _cmd_compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from harness import strategies
    from harness.reporting.analysis import aggregate, metric_of, summarize
    from harness.contract.record import RunRecord
    from harness.reporting.report import write_comparison
    from harness.reporting.tracking import log_comparison

    run_dirs = list(args.runs) + (_latest_runs(args.latest, args.preset) if args.latest else [])
    if not run_dirs:
        raise ConfigError("compare needs run folders (results/<run>) or --latest <results dir>")
    records: dict[tuple[str, int], RunRecord] = {}
    dirs: dict[tuple[str, int], str] = {}
    for run_dir in run_dirs:
        try:
            record = RunRecord.load(run_dir)
        except FileNotFoundError:
            raise ConfigError(f"{run_dir!r} holds no run_record.json; give run folders under results/") from None
        key = (record.strategy, record.seed)
        if key in records:
            raise ConfigError(f"two runs of strategy {record.strategy!r} with seed {record.seed} ({dirs[key]}, "
                              f"{run_dir}); compare one run per strategy and seed")
        records[key], dirs[key] = record, str(Path(run_dir).resolve())
    modes = {metric_of(r) for r in records.values()}
    if len(modes) > 1:
        raise ConfigError(f"the runs optimized different metrics {sorted(modes)}; compare runs of one metric")
    ((_, mode),) = modes
    order = strategies.order(sorted({name for name, _ in records}))
    summaries = [summarize(records[key], dirs[key]) for key in sorted(records, key=lambda k: (order.index(k[0]), k[1]))]
    aggregates = aggregate(summaries, mode=mode)
    out = Path(args.out or Path(run_dirs[0]).resolve().parent / "comparison")
    text, files = write_comparison(records, aggregates, out)
    presets = {Path(r.preset).stem for r in records.values()}
    results_dir = Path(args.latest) if args.latest else Path(run_dirs[0]).resolve().parent
    run_id = log_comparison(aggregates, files, results_dir=results_dir, experiment=f"hpo-{'+'.join(sorted(presets))}",
                            tags={"presets": ",".join(sorted(presets))})
    print(text)
    print(f"comparison: {out} (MLflow run {run_id})")
    _print_ui_urls(results_dir, args.ui_port)
    return 0


def _print_ui_urls(results_dir: Any, port: int) -> None:
    from harness.cluster.redaction import redact
    from harness.reporting.tracking import tracking_uri, ui_urls

    if os.environ.get("MLFLOW_TRACKING_URI"):
        print(f"MLflow: {redact(tracking_uri(results_dir))} (open its UI to see the runs)")
        return
    print(f"In the MLflow UI (make mlflow-ui, port {port}):")
    for what, url in ui_urls(results_dir, port):
        print(f"  {what}:\n    {url}")


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
    show = sub.add_parser("config", help="print the resolved configuration (and validate it)")
    _config_args(show)
    show.set_defaults(fn=_cmd_config)
    plan_ = sub.add_parser("job-plan", help="validate the input and say whether the strategy needs Ray "
                           "(KEY=value lines, for the SLURM head job)")
    _config_args(plan_)
    plan_.set_defaults(fn=_cmd_job_plan)
    sub.add_parser("strategies", help="list the registered strategies").set_defaults(fn=_cmd_strategies)
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
    ports = sub.add_parser("ports", help="free ports for a Ray node outside the ephemeral range, as KEY=value lines")
    ports.add_argument("--worker-ports", type=int, default=64)
    ports.set_defaults(fn=_cmd_ports)
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
    urls = sub.add_parser("ui-urls", help="the MLflow UI URLs of the runs tables and the newest comparison")
    urls.add_argument("--results-dir", default="results")
    urls.add_argument("--port", type=int, default=int(os.environ.get("MLFLOW_PORT", 5000)))
    urls.set_defaults(fn=_cmd_ui_urls)
    return parser


def _console_logging(verbose: bool) -> None:
    """The harness's own lines on the console, other libraries' only from WARNING on (all of them
    with --verbose); the run's log file (runner) takes everything from INFO on either way."""
    from harness.cluster.redaction import RedactCredentials

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
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
