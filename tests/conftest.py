"""Shared fixtures: one local Spark session (Delta enabled) per pytest process, a lakehouse and a real sqlite
MLflow store per test, and job configs over generated trips.

There is deliberately no tests/__init__.py: nutter installs a top-level ``tests`` package that it would shadow.
"""
import contextlib
import datetime as dt
import os
import sys

import pytest

from jvm_options import for_a_long_lived_jvm, quick_jit_by_default

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
# Set before the Spark JVM starts, so the Python workers that load models (spark_udf) inherit it too.
os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "true"
# One Spark session serves all the tests of a pytest process (hundreds of tests, dozens of jobs, hundreds of Delta
# tables): its driver gets more heap than a single job's 2g default, or code generation late in a run runs out of it.
os.environ.setdefault("MLOPS_SPARK_DRIVER_MEMORY", "4g")
quick_jit_by_default()  # C1 only for the JVMs the suite starts for one job or test (tests/jvm_options.py)


@pytest.hookimpl(optionalhook=True)  # xdist's hook: pytest without xdist (`-p no:xdist`) must not refuse it
def pytest_xdist_make_scheduler(config, log):
    """`make test`'s pytest processes (`--dist loadfile`) take a file at a time, except the end-to-end files: one
    unit of work, so they run one after another in one process while the other process takes the in-process files.
    They wait on the job processes, servers and notebooks they start, and side by side they slowed each other."""
    if config.getvalue("dist") != "loadfile":
        return None  # xdist's own scheduler for the mode asked
    from xdist.scheduler import LoadFileScheduling

    class EndToEndAsOneFile(LoadFileScheduling):
        def _split_scope(self, nodeid):
            path = super()._split_scope(nodeid)
            return "tests/e2e" if path.startswith("tests/e2e/") else path

    return EndToEndAsOneFile(config, log)


@contextlib.contextmanager
def _restored_environment():
    saved = dict(os.environ)
    yield
    for name in set(os.environ) - set(saved):
        del os.environ[name]
    for name, value in saved.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


@pytest.fixture(autouse=True)
def _environment_restored():
    """Each test leaves the process environment as it found it. The `mlops` command run in-process points MLflow
    at its registry through the environment (in its own process it owns it); left behind, a store of one test
    reaches the next test's servers and jobs, whichever test runs next in this process."""
    with _restored_environment():
        yield


@pytest.fixture(autouse=True, scope="module")
def _module_environment_restored():
    """The same for a module's shared fixtures, which are made before (and undone after) any one test's guard."""
    with _restored_environment():
        yield


@pytest.fixture(scope="session")
def spark():
    """A pytest process's own session lives for its whole run, long enough for C2's code to pay: the JVM's default."""
    from orchestrator.local.spark import tuned_session

    with pytest.MonkeyPatch.context() as patch:
        for name in set(os.environ) - set(for_a_long_lived_jvm(dict(os.environ))):
            patch.delenv(name)
        session = tuned_session("taxi-fares-tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def dist(tmp_path_factory):
    """The two wheels as `make dist` builds them, in a folder of their own (built once for the tests that install
    them: into empty environments, into the serving container's)."""
    import subprocess
    from pathlib import Path

    from orchestrator.paths import REPO_ROOT

    out = tmp_path_factory.mktemp("dist")
    subprocess.run(["make", "--no-print-directory", "-C", str(REPO_ROOT), "dist", f"DIST={out}",
                    f"VENV={Path(sys.executable).parent.parent}"], check=True, capture_output=True)
    return out


@pytest.fixture
def home(tmp_path):
    """The folder of a test's lakehouse and MLflow store: its own. A module whose tests only read what one job made
    (a champion they score) overrides it with one folder for the module, so that the job runs once."""
    return tmp_path


@pytest.fixture
def lakehouse(home, monkeypatch):
    from taxi_fares_mlops.storage import MLOPS_HOME_ENV, Lakehouse

    root = home / "lakehouse"
    monkeypatch.setenv(MLOPS_HOME_ENV, str(root))
    return Lakehouse(str(root))


def ts(text: str) -> dt.datetime:
    """A naive UTC datetime from 'YYYY-MM-DD HH:MM[:SS]' (the session time zone is UTC)."""
    return dt.datetime.fromisoformat(text)


@pytest.fixture
def make_trips(spark):
    """Build a raw-trip DataFrame from (pickup, dropoff, distance, fare, pickup_zip, dropoff_zip) tuples."""
    from taxi_fares.schema import RAW_TRIP_SCHEMA

    def build(rows):
        parsed = [
            (ts(p) if isinstance(p, str) else p, ts(d) if isinstance(d, str) else d, dist, fare, pz, dz)
            for p, d, dist, fare, pz, dz in rows
        ]
        return spark.createDataFrame(parsed, RAW_TRIP_SCHEMA)

    return build


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory):
    """An empty sqlite MLflow store made by MLflow once: a test's store starts as a copy of it, since MLflow runs
    its schema migrations (dozens) on every new database, 1-4 s each time on this machine."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-empty") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_store(home, monkeypatch, empty_mlflow_db):
    """A real sqlite MLflow store (empty for a test of its own); fails the test if it leaves a run open."""
    import shutil

    import mlflow

    if not (home / "mlflow.db").exists():
        shutil.copyfile(empty_mlflow_db, home / "mlflow.db")
    uri = f"sqlite:///{home}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield uri
    active = mlflow.active_run()
    if active is not None:
        mlflow.end_run("KILLED")
    assert active is None, "a run was left open"


# Jobs run in-process over two weeks of generated trips.
JOB_START, JOB_END = "2016-01-04", "2016-01-18"


@pytest.fixture
def trips_lakehouse(spark, lakehouse):
    from taxi_fares.synthetic import generate_trips
    from taxi_fares_mlops.storage import RAW_TRIPS

    lakehouse.write(generate_trips(spark, 20_000, JOB_START, JOB_END, seed=5), RAW_TRIPS)
    return lakehouse


def _config_builder(config_class, parameters, lakehouse, **fixed):
    def build(**changes):
        values = {p.name: p.default for p in parameters}
        values.update(start_date=JOB_START, end_date=JOB_END, lakehouse_root=lakehouse.root, mlflow_experiment="tests",
                      **fixed)
        values.update({k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in changes.items()})
        return config_class.from_mapping(values)
    return build


@pytest.fixture
def training_config(lakehouse):
    from taxi_fares_mlops.config import TRAINING_PARAMETERS, TrainingConfig

    # validation and promotion in the same run, as the tests of those stages want (the training job leaves them to
    # the deployment job)
    return _config_builder(TrainingConfig, TRAINING_PARAMETERS, lakehouse, max_iter="40", execute_promotion="true")


@pytest.fixture
def scoring_config(lakehouse):
    from taxi_fares_mlops.config import SCORING_PARAMETERS, ScoringConfig

    return _config_builder(ScoringConfig, SCORING_PARAMETERS, lakehouse)
