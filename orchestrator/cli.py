"""The ``mlops`` command: the operator's entry point.

Each sub-command is a small function that parses nothing itself: argparse turns the command line into typed
values, and the work happens in library code. Only this entry point configures logging.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from orchestrator import environment
from orchestrator.console import progress
from orchestrator.deploy.commands import cmd_deploy, cmd_repair, cmd_runs, cmd_schedule, nutter, run_remote
from orchestrator.errors import UsageError, OperatorError, exit_codes_help
from orchestrator.paths import REPO_ROOT, project_version


def _date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' is not a date (expected YYYY-MM-DD)") from None


def _positive_int(value: str) -> int:
    try:
        number = int(value.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"'{value}' must be at least 1")
    return number


def lakehouse_root() -> str:
    """``$MLOPS_HOME``, else ``.mlops/`` in the repository."""
    from orchestrator import environment

    return environment.HOME.get() or str(REPO_ROOT / ".mlops")


def cmd_data_generate(args: argparse.Namespace) -> int:
    from taxi_fares.synthetic import generate_trips
    from orchestrator.local.spark import tuned_session
    from taxi_fares_mlops.storage import RAW_TRIPS, Lakehouse

    if args.end <= args.start:
        raise UsageError(f"--end ({args.end}) must be after --start ({args.start})")
    shift = _shifts(args.shift)
    if not 0 <= args.outliers <= 1:
        raise UsageError(f"--outliers must be a share in [0, 1], got {args.outliers}")
    lakehouse = Lakehouse(lakehouse_root(), args.table_schema)
    started = time.monotonic()
    progress(f"generating {args.rows:,} trips from {args.start} to {args.end} (seed {args.seed})")
    spark = tuned_session("mlops-data-generate", persistent_catalog=bool(args.table_schema))
    trips = generate_trips(spark, args.rows, args.start, args.end, seed=args.seed, shift=shift,
                           outliers=args.outliers)
    if args.append and lakehouse.exists(spark, RAW_TRIPS):
        from pyspark.sql import functions as F

        # New ids after the existing ones: a trip id names one trip.
        offset = (lakehouse.read(spark, RAW_TRIPS).agg(F.max("trip_id")).first()[0] or -1) + 1
        trips = trips.withColumn("trip_id", F.col("trip_id") + F.lit(offset))
    lakehouse.write(trips, RAW_TRIPS, mode="append" if args.append else "overwrite")
    progress(f"wrote table '{RAW_TRIPS}' at {lakehouse.location(RAW_TRIPS)} "
             f"in {time.monotonic() - started:.1f}s")
    return 0


def _shifts(specs: list[str]) -> dict[str, float]:
    """``--shift COLUMN=FACTOR`` options as {column: factor}; every malformed one named at once."""
    from taxi_fares.synthetic import SHIFTABLE

    shifts, problems = {}, []
    for spec in specs:
        column, _, factor = spec.partition("=")
        try:
            value = float(factor)
        except ValueError:
            value = None
        if column not in SHIFTABLE:
            problems.append(f"--shift {spec}: column must be one of {', '.join(SHIFTABLE)}")
        elif value is None or not (0 < value < float("inf")):
            problems.append(f"--shift {spec}: factor must be a number > 0")
        else:
            shifts[column] = value
    if problems:
        raise UsageError("; ".join(problems))
    return shifts


def cmd_approve(args: argparse.Namespace) -> int:
    """Approve a held promotion, in the local registry or a target's: recorded on the version (who, when), then
    the version and its companions become champion."""
    import getpass

    from orchestrator.registry import use_registry, workspace_identity
    from taxi_fares_mlops.errors import RegistryError
    from taxi_fares_mlops.online_traffic import describe_comparison
    from taxi_fares_mlops.tracking import Registry

    if not (args.model or args.target):
        raise UsageError("--model is required with the local registry")
    if args.target:
        from orchestrator.deploy.client import workspace_host
        from orchestrator.templates import target_settings

        # MLflow's databricks store reads DATABRICKS_HOST: the checked host, not whatever the shell holds
        os.environ["DATABRICKS_HOST"] = workspace_host(target_settings(args.target), args.host)
    model = args.model or use_registry(lakehouse_root(), args.target)["model_name"]
    if args.model:
        use_registry(lakehouse_root(), args.target)
    # Remotely, the identity the workspace authenticates (read before the registry is touched); locally, the login.
    approver = (workspace_identity(args.target, getattr(args, "host", None)) if args.target
                else environment.APPROVER.get() or getpass.getuser())
    when = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    registry = Registry(model)
    try:
        # what the version did online against the champion (recorded by monitoring of the inference table): shown
        # before the approval is recorded, so the approver sees the evidence it approves on
        tags = registry.version_tags(registry.by_version(args.version).version)
        progress(f"model {model} version {args.version}: {describe_comparison(tags)}")
        fare = registry.approve(args.version, approver, when)
    except RegistryError as exc:
        raise UsageError(str(exc)) from exc
    if Registry(model).aliases().get("champion") == fare.version:
        progress(f"model {fare.name} version {fare.version}: approved by {approver} at {when}; it is the champion")
    else:  # held by the deployment job's approval step: its promotion step judges and promotes
        progress(f"model {fare.name} version {fare.version}: approved by {approver} at {when} (tag approval=approved);"
                 f" repair its deployment run (or run the deployment job for it): its promotion step decides")
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    from orchestrator.deploy.bundle import write_bundle

    files = write_bundle(args.target, args.out, args.version, args.dist, allow_build=not args.no_build)
    progress(f"bundle of target {args.target}: {len(files)} files in {args.out} (databricks bundle deploy -t "
             f"{args.target} from there)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from orchestrator.demo import run_demo

    return run_demo(lakehouse_root(), rows=args.rows, seed=args.seed)


def cmd_warm(args: argparse.Namespace) -> int:
    from orchestrator.local.spark import class_archive, record_class_archive

    archive = class_archive()
    if archive.exists():
        progress(f"local Spark's class archive is up to date: {archive}")
        return 0
    progress("recording the classes local Spark loads (once per JVM, pyspark install and Delta; a minute or two)")
    started = time.monotonic()
    record_class_archive()
    progress(f"class archive written in {time.monotonic() - started:.0f} s: {archive}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from orchestrator import build

    wheels = build.build(args.dist)
    for wheel in wheels:
        print(f"{build.sha256(wheel)}  {wheel}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if args.target:
        return run_remote(args)
    return _run_local(args)


def _run_local(args: argparse.Namespace) -> int:
    import json

    from orchestrator.local import runner
    from orchestrator.parameters import parse_overrides

    result = runner.run_local(args.job, parse_overrides(args.param), lakehouse_root())
    if args.json:
        if result.summary is not None:
            print(json.dumps(result.summary))
        if result.status != "SUCCESS":
            print(f"error: {result.error}", file=sys.stderr)
    else:
        print(runner.describe(result, args.job, lakehouse_root()))
    return 0 if result.status == "SUCCESS" else 1


def cmd_test_notebooks(args: argparse.Namespace) -> int:
    from orchestrator.local.notebook_tests import run_notebook_tests

    if args.target:
        return nutter(args)
    outcomes = run_notebook_tests(lakehouse_root(), args.junit, args.pattern)
    for outcome in outcomes:
        for result in outcome.results.results:
            status = "PASSED" if result.passed else "FAILED"
            print(f"{status}  {outcome.notebook.name}::{result.test_name} ({result.execution_time:.1f}s)")
            if not result.passed:
                print(f"        {result.exception}")
    print(f"JUnit report: {args.junit}")
    return 0 if all(o.passed for o in outcomes) else 1


def cmd_trace(args: argparse.Namespace) -> int:
    from taxi_fares_mlops.storage import Lakehouse
    from taxi_fares_mlops.telemetry import format_tree, read_local

    path = Path(Lakehouse(lakehouse_root()).path("runs", args.run_id, "telemetry.jsonl"))
    if not path.exists():
        raise UsageError(f"no local telemetry for MLflow run {args.run_id} ({path}); runs with a "
                         f"connection string send theirs to Azure Monitor instead")
    print(format_tree(read_local(path)))
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    from orchestrator.lineage import cmd_lineage as lineage

    return lineage(args, lakehouse_root())


def cmd_ui(args: argparse.Namespace) -> int:
    from orchestrator.local.runner import tracking_uri

    uri = tracking_uri(lakehouse_root())
    progress(f"MLflow UI for {uri} at http://{args.host}:{args.port} (Ctrl-C to stop)")
    return subprocess.call([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                            "--host", args.host, "--port", str(args.port)])


def _serving(command: str, args: argparse.Namespace) -> int:
    from orchestrator import service_commands as serving

    return getattr(serving, command)(args, lakehouse_root())


def _credential_options(parser: argparse.ArgumentParser) -> None:
    """How `serving smoke`/`loadtest` authenticate to a service that asks (the credential is read from a file,
    never taken on the command line, where process listings and shell history would show it)."""
    credential = parser.add_mutually_exclusive_group()
    credential.add_argument("--bearer-token-file", help="a file holding an Entra ID access token for the service")
    credential.add_argument("--api-key-file", help="a file of the service's API keys, one per line (the mounted "
                                                   "secret's format): the first is sent")


def _host_option(parser: argparse.ArgumentParser) -> None:
    """Where a remote command goes, said on purpose: without it, the target's host from targets.yml, and a
    DATABRICKS_HOST naming another workspace is refused."""
    parser.add_argument("--host", help="(--target) the workspace URL, when it is not the target's host in "
                                       "targets.yml (a DATABRICKS_HOST naming another workspace is refused)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlops", description="Operate the taxi-fare MLOps jobs.",
                                     epilog=exit_codes_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"mlops {project_version()}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log debug output, third-party libraries' included (jobs run locally too)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    data = commands.add_parser("data", help="synthetic data in the local lakehouse")
    data_commands = data.add_subparsers(dest="data_command", metavar="ACTION")
    generate = data_commands.add_parser("generate", help="write synthetic NYC-taxi trips as the raw_trips table")
    generate.add_argument("--rows", type=_positive_int, default=200_000, help="number of trips (default 200000)")
    generate.add_argument("--start", type=_date, default=dt.date(2016, 1, 1), help="first day (YYYY-MM-DD)")
    generate.add_argument("--end", type=_date, default=dt.date(2016, 3, 1), help="day after the last (YYYY-MM-DD)")
    generate.add_argument("--seed", type=int, default=42, help="random seed (same seed, same rows)")
    generate.add_argument("--shift", action="append", default=[], metavar="COLUMN=FACTOR",
                          help="scale a column to make a drifted range, e.g. trip_distance=1.5 (repeatable)")
    generate.add_argument("--outliers", type=float, default=0.0, metavar="SHARE",
                          help="share of trips made extreme (distance x25, fare x8), e.g. 0.03")
    generate.add_argument("--append", action="store_true", help="add the trips to raw_trips instead of replacing it")
    generate.add_argument("--table-schema", default="", metavar="CATALOG.SCHEMA",
                          help="write raw_trips by name there (what jobs given table_schema read)")
    generate.set_defaults(handler=cmd_data_generate)

    build = commands.add_parser("build", help="build the two wheels and their SHA256SUMS")
    build.add_argument("--dist", type=Path, default=REPO_ROOT / "dist",
                       help="output folder: new, empty or an earlier build (replaced as a whole); never other files")
    build.set_defaults(handler=cmd_build)

    from orchestrator.templates import JOBS

    jobs = list(JOBS)
    run = commands.add_parser("run", help="run a job locally or on a deployment target")
    run.add_argument("job", choices=jobs)
    where = run.add_mutually_exclusive_group(required=True)
    where.add_argument("--local", action="store_true", help="run on this machine (the embedded default)")
    where.add_argument("--target", help="run the deployed job on this target (dev, staging, prod)")
    run.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                     help="override a job parameter (repeatable)")
    run.add_argument("--json", action="store_true", help="print only the notebook's exit summary as JSON")
    run.add_argument("--no-wait", action="store_true", help="(--target) print the run id and return")
    _host_option(run)
    run.set_defaults(handler=cmd_run)

    deploy = commands.add_parser("deploy", help="upload wheels and notebooks, create or reset the jobs")
    deploy.add_argument("--target", required=True)
    deploy.add_argument("--version", help="wheel version to deploy (default: the VERSION file)")
    deploy.add_argument("--dist", type=Path, default=REPO_ROOT / "dist", help="where the wheels are")
    deploy.add_argument("--no-build", action="store_true", help="deploy the wheels in --dist as they are")
    deploy.add_argument("--dry-run", action="store_true", help="print the plan; call nothing")
    deploy.add_argument("--reset-schedule", action="store_true",
                        help="apply the template's schedule pause status (default: keep the deployed job's)")
    _host_option(deploy)
    deploy.set_defaults(handler=cmd_deploy)

    bundle = commands.add_parser("bundle", help="render a target's jobs, experiment and model as a Databricks "
                                                "Asset Bundle (databricks bundle deploy)")
    bundle.add_argument("--target", required=True, help="the workspace target (dev, staging, prod)")
    bundle.add_argument("--out", type=Path, required=True,
                        help="bundle folder: new, empty or an earlier bundle (replaced as a whole); never other files")
    bundle.add_argument("--version", help="wheel version to bundle (default: the VERSION file)")
    bundle.add_argument("--dist", type=Path, default=REPO_ROOT / "dist", help="where the wheels are")
    bundle.add_argument("--no-build", action="store_true", help="bundle the wheels in --dist as they are")
    bundle.set_defaults(handler=cmd_bundle)

    runs = commands.add_parser("runs", help="list a deployed job's recent runs")
    runs.add_argument("job", choices=jobs)
    runs.add_argument("--target", required=True)
    runs.add_argument("--limit", type=_positive_int, default=10)
    _host_option(runs)
    runs.set_defaults(handler=cmd_runs)

    repair = commands.add_parser("repair", help="rerun the failed tasks of a run")
    repair.add_argument("run_id", type=_positive_int)
    repair.add_argument("--target", required=True)
    repair.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    repair.add_argument("--json", action="store_true")
    _host_option(repair)
    repair.set_defaults(handler=cmd_repair)

    schedule = commands.add_parser("schedule", help="pause or unpause a deployed job's schedule")
    schedule.add_argument("job", choices=jobs)
    schedule.add_argument("--target", required=True)
    toggle = schedule.add_mutually_exclusive_group(required=True)
    toggle.add_argument("--pause", action="store_true")
    toggle.add_argument("--unpause", action="store_true")
    _host_option(schedule)
    schedule.set_defaults(handler=cmd_schedule)

    notebook_tests = commands.add_parser("test-notebooks", help="run the Nutter notebook tests")
    where = notebook_tests.add_mutually_exclusive_group(required=True)
    where.add_argument("--local", action="store_true", help="run them with the local runner")
    where.add_argument("--target", help="run the deployed ones on this target with nutter")
    notebook_tests.add_argument("--cluster-id", help="(--target) the existing cluster nutter runs them on")
    notebook_tests.add_argument("--timeout", type=_positive_int, default=3600, help="(--target) seconds per notebook")
    notebook_tests.add_argument("--dry-run", action="store_true", help="(--target) print the nutter command")
    _host_option(notebook_tests)
    notebook_tests.add_argument("--pattern", default="test_*", help="notebook name pattern (default test_*)")
    notebook_tests.add_argument("--junit", type=Path, default=REPO_ROOT / "test-results" / "notebook-tests.xml",
                                help="JUnit XML report path")
    notebook_tests.set_defaults(handler=cmd_test_notebooks)

    trace = commands.add_parser("trace", help="print a local run's telemetry as a tree with durations")
    trace.add_argument("run_id", help="the MLflow run id")
    trace.set_defaults(handler=cmd_trace)

    ui = commands.add_parser("ui", help="open the MLflow UI on the local tracking store")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(handler=cmd_ui)

    approve = commands.add_parser("approve", help="approve a version held by require_approval (sets its approval tag)")
    approve.add_argument("--model", help="registered model name (default: the target's model_name)")
    approve.add_argument("--target", help="a deployment target's registry instead of the local one")
    approve.add_argument("--version", required=True, type=_positive_int, help="the version waiting for approval")
    _host_option(approve)
    approve.set_defaults(handler=cmd_approve)

    lineage = commands.add_parser("lineage", help="what made a model version: code, data (Delta versions), run, "
                                                  "metrics")
    lineage.add_argument("--model", help="registered model name (default: the target's model_name)")
    lineage.add_argument("--version", required=True, type=_positive_int, help="the model version")
    where = lineage.add_mutually_exclusive_group()
    where.add_argument("--local", action="store_true", help="the local registry (the default)")
    where.add_argument("--target", help="a deployment target's registry instead of the local one")
    _host_option(lineage)
    lineage.set_defaults(handler=cmd_lineage)

    serving = commands.add_parser("serving", help="the online service: package a bundle, load-test a service")
    serving_commands = serving.add_subparsers(dest="serving_command", metavar="SUBCOMMAND", required=True)
    pack = serving_commands.add_parser("package", help="the champion, its companions and online features as a "
                                                       "serving bundle")
    where = pack.add_mutually_exclusive_group(required=True)
    where.add_argument("--local", action="store_true", help="from the local registry and lakehouse")
    where.add_argument("--target", help="from a deployment target's registry and tables (through Spark Connect)")
    pack.add_argument("--model", help="registered model name (default: the target's, or taxi_fares)")
    which = pack.add_mutually_exclusive_group()
    # no default here: argparse takes an option given with its default value for not given, so "--alias champion
    # --version 2" would pass as version 2; the package command reads a missing alias as champion
    which.add_argument("--alias", help="the version behind this alias (default champion)")
    which.add_argument("--version", type=_positive_int, help="this version instead of an alias")
    pack.add_argument("--with-challenger", nargs="?", const="challenger", metavar="ALIAS",
                      help="also the fare model behind this alias (default challenger), for `mlops serve "
                           "--challenger-mode shadow|ab`")
    pack.add_argument("--out", help="bundle folder (default <lakehouse>/serving/bundle)")
    pack.add_argument("--lookback-hours", type=float, default=24.0,
                      help="hours of feature rows kept before the newest one (default 24)")
    pack.add_argument("--signing-key", help="Ed25519 private key (PEM) the manifest is signed with (default: "
                                            "$MLOPS_SIGNING_KEY_FILE; with --local, a development key under "
                                            "MLOPS_HOME, made on first use)")
    pack.set_defaults(handler=lambda a: _serving("cmd_serving_package", a))
    compare = serving_commands.add_parser("compare", help="the served variants' errors side by side, from the "
                                                          "inference table and the fares that arrived since")
    compare.add_argument("--local", action="store_true", required=True, help="the local lakehouse's table")
    compare.add_argument("--since", help="only requests at or after this ISO time")
    compare.add_argument("--experiment", default="taxi_fares_variant_comparison", help="MLflow experiment")
    compare.set_defaults(handler=lambda a: _serving("cmd_serving_compare", a))
    load = serving_commands.add_parser("loadtest", help="bounded load on a local service: throughput, latency")
    load.add_argument("--url", required=True, help="the service, on a loopback address")
    load.add_argument("--requests", type=_positive_int, default=1000)
    load.add_argument("--concurrency", type=_positive_int, default=8)
    load.add_argument("--trips", type=_positive_int, default=1, help="trips per request")
    load.add_argument("--json", action="store_true")
    _credential_options(load)
    load.set_defaults(handler=lambda a: _serving("cmd_loadtest", a))
    smoke = serving_commands.add_parser("smoke", help="a deployed service: ready, one prediction, the champion")
    smoke.add_argument("--url", required=True, help="the service on a loopback address (kubectl port-forward)")
    place = smoke.add_mutually_exclusive_group(required=True)
    place.add_argument("--local", action="store_true", help="compare with the local registry")
    place.add_argument("--target", help="compare with this deployment target's registry")
    place.add_argument("--expect-version", help="compare with this model version (CD: the release record of the "
                                                "image, when it was packaged from another target's registry)")
    smoke.add_argument("--model", help="registered model name (default: the target's, or taxi_fares)")
    smoke.add_argument("--alias", default="champion")
    smoke.add_argument("--wait", type=float, default=120.0, help="seconds to wait for readiness")
    _credential_options(smoke)
    smoke.set_defaults(handler=lambda a: _serving("cmd_smoke", a))

    serve = commands.add_parser("serve", help="run the online service on a packaged bundle")
    serve.add_argument("--local", action="store_true", help="on this machine, with the local lakehouse's features")
    serve.add_argument("--bundle", help="bundle folder (default <lakehouse>/serving/bundle)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--trusted-key", help="public key (PEM) the bundle must be signed with (default: "
                                             "$MLOPS_TRUSTED_KEY_FILE, else the development key's public half)")
    serve.set_defaults(handler=lambda a: _serving("cmd_serve", a))

    warm = commands.add_parser("warm", help="record the classes local Spark loads, so later starts map them")
    warm.set_defaults(handler=cmd_warm)

    demo = commands.add_parser("demo", help="generate data and run the ML logic end to end, printing metrics")
    demo.add_argument("--rows", type=_positive_int, default=200_000)
    demo.add_argument("--seed", type=int, default=42)
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse, run the command, and turn the tool's errors into one line and their exit code (see --help)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return handler(args)
    except OperatorError as exc:
        print(f"mlops {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code


def configure_logging(verbose: bool) -> None:
    """The tool's and the jobs' logging: INFO and quiet third parties, or DEBUG and everything with -v.
    Local jobs inherit the choice through ``MLOPS_LOG_LEVEL`` (read by the notebooks' ``configure_logging``)."""
    from taxi_fares_mlops.logs import LOG_LEVEL_ENV
    from taxi_fares_mlops.logs import configure_logging as configure

    os.environ[LOG_LEVEL_ENV] = "DEBUG" if verbose else "INFO"
    configure()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
