"""The mlops command: version, argument errors, and data generation into the lakehouse."""
import os
import subprocess
import sys

import pytest
from pyspark.sql import functions as F

from orchestrator.cli import main
from orchestrator.paths import project_version
from taxi_fares_mlops.storage import RAW_TRIPS


def test_version_matches_the_version_file():
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "--version"], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == f"mlops {project_version()}"


def test_installed_wheels_share_the_version():
    import taxi_fares
    import taxi_fares_mlops

    assert taxi_fares.__version__ == taxi_fares_mlops.__version__ == project_version()


@pytest.mark.parametrize("argv, message", [
    (["data", "generate", "--rows", "ten"], "'ten' is not a whole number"),
    (["data", "generate", "--rows", "0"], "'0' must be at least 1"),
    (["data", "generate", "--start", "2016-13-01"], "'2016-13-01' is not a date"),
])
def test_bad_arguments_are_named(capsys, argv, message):
    with pytest.raises(SystemExit) as excinfo:
        main(argv)
    assert excinfo.value.code == 2
    assert message in capsys.readouterr().err


def test_end_before_start_is_refused(lakehouse, capsys):
    assert main(["data", "generate", "--start", "2016-02-01", "--end", "2016-01-01"]) == 2
    assert "mlops data: --end (2016-01-01) must be after --start (2016-02-01)" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["approve", "--version", "3"], "mlops approve: --model is required with the local registry"),
    (["approve", "--version", "3", "--target", "nowhere"], "mlops approve: unknown target 'nowhere' (targets: "),
    (["serving", "package", "--local", "--lookback-hours", "0"], "--lookback-hours must be positive, got 0.0"),
    (["serving", "loadtest", "--url", "http://192.0.2.1:80"], "is not a loopback address"),
])
def test_refusals_before_any_work(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["serving", "package"], "one of the arguments --local --target is required"),
    (["serving", "package", "--local", "--alias", "x", "--version", "2"], "argument --version: not allowed with"),
    (["run", "training"], "one of the arguments --local --target is required"),
    (["run", "training", "--local", "--target", "dev"], "argument --target: not allowed with argument --local"),
    (["test-notebooks"], "one of the arguments --local --target is required"),
])
def test_conflicting_or_missing_flags_are_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as excinfo:
        main(argv)
    assert excinfo.value.code == 2
    assert message in capsys.readouterr().err


def test_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for line in ("0  success", "1  the job (or a notebook test) ran and failed",
                 "2  usage or configuration error", "3  a remote service failed or refused"):
        assert line in out


@pytest.mark.slow
def test_data_generate_writes_exactly_the_rows(spark, lakehouse, capsys):
    code = main(["data", "generate", "--rows", "1234", "--start", "2016-01-01", "--end", "2016-01-08",
                 "--seed", "3"])
    assert code == 0
    trips = lakehouse.read(spark, RAW_TRIPS)
    assert trips.count() == 1234
    bounds = trips.agg(F.min("tpep_pickup_datetime").cast("date"), F.max("tpep_pickup_datetime").cast("date")).first()
    assert (str(bounds[0]), str(bounds[1])) >= ("2016-01-01", "2016-01-01") and str(bounds[1]) <= "2016-01-07"
    assert "wrote table 'raw_trips'" in capsys.readouterr().err


def test_local_spark_chatter_is_filtered_and_job_lines_are_kept():
    from orchestrator.local.runner import LOCAL_SPARK_CHATTER

    noise = [":: loading settings :: url = jar:file:/x/ivy-2.5.3.jar!/ivysettings.xml",
             "\tfound io.delta#delta-storage;4.3.1 in central", "io.delta#delta-spark_4.1_2.13 added as a dependency",
             "\t|      default     |   37  |   0   |   0   |   4   ||   33  |   0   |",
             "26/11/25 23:15:08 WARN NativeCodeLoader: Unable to load native-hadoop library",
             "Setting default log level to \"WARN\".",
             "2026/11/25 23:16:36 INFO alembic.runtime.migration: Context impl SQLiteImpl."]
    kept = ["2026-11-25 23:16:37,544 INFO taxi_fares_mlops.stage: stage batch_scoring finished in 8.4s",
            "2026-11-25 23:16:29,179 WARNING taxi_fares_mlops.datasets: quarantining invalid trips: ...",
            "2026/11/25 23:16:31 WARNING mlflow.pyfunc: Calling `spark_udf()` with `env_manager=\"local\"`",
            "Traceback (most recent call last):"]
    flagged = [bool(LOCAL_SPARK_CHATTER.search(line)) for line in noise + kept]
    assert flagged == [True] * len(noise) + [False] * len(kept)


def test_what_a_block_writes_to_stderr_is_filtered_even_when_the_block_ends_at_once(monkeypatch, capfd):
    """A local cluster on a Spark that is already running starts nothing: its block ends before the thread that
    filters its standard error has begun. That thread must still write what it reads to the console, never to a
    descriptor the block has closed by then (or, worse, one reused by a file opened since)."""
    import threading

    from orchestrator.local.runner import _filtered_stderr

    monkeypatch.delenv("MLOPS_LOG_LEVEL", raising=False)
    failures = []
    monkeypatch.setattr(threading, "excepthook", lambda args: failures.append(repr(args.exc_value)))
    for attempt in range(500):
        with _filtered_stderr():
            if attempt == 0:
                os.write(2, b"Setting default log level to \"WARN\".\nstage batch_scoring finished in 8.4s\n")
    for thread in threading.enumerate():
        if thread.name == "spark-console":
            thread.join(10)
    assert failures == []
    assert capfd.readouterr().err == "stage batch_scoring finished in 8.4s\n"


def test_verbose_reaches_the_jobs_through_the_environment(monkeypatch, capsys):
    import logging

    from orchestrator.cli import configure_logging

    monkeypatch.setenv("MLOPS_LOG_LEVEL", "INFO")
    configure_logging(True)
    assert os.environ["MLOPS_LOG_LEVEL"] == "DEBUG"
    assert logging.getLogger("azure").level == logging.NOTSET and logging.getLogger().level == logging.DEBUG
    configure_logging(False)
    assert os.environ["MLOPS_LOG_LEVEL"] == "INFO"
    assert logging.getLogger("azure").level == logging.WARNING and logging.getLogger().level == logging.INFO
