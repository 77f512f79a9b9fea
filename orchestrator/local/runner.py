"""``mlops run <job> --local``: run a job exactly as Databricks would, on this machine.

1. Build the wheels if they are stale, and stage them under ``<lakehouse>/wheels/<version>/`` (the local
   counterpart of the deploy upload).
2. Render the job template for the ``local`` target and validate it with ``JobSettings``.
3. Merge the job parameters' defaults with ``--param`` overrides (an unknown name is an error, the wheel location
   included: it is the notebook task's base parameter, as deployed) and check them against the ``local`` target's
   policy.
4. Run the template's notebook with the kernel, in the job environment: a virtual environment made once per
   wheel version, layered on the development environment, which plays the Databricks runtime. The layer
   exposes the runtime's packages but not this project's own (editable) ones, so the notebook's ``%pip install``
   installs the real wheels and whatever they need beyond the runtime, nothing else.

Each run starts a Spark of its own, as a job cluster does; given ``shared`` (``cluster.sharing_environment`` of
a running Spark) its notebooks attach to that one instead, as jobs on an all-purpose cluster do (``mlops demo``).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import venv
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Optional, Sequence

from orchestrator import environment
from orchestrator import build, templates
from orchestrator.console import progress
from orchestrator.errors import UsageError
from orchestrator.local import cluster
from orchestrator.local.server import without_mlflow_stores
from orchestrator.parameters import merge_parameters
from orchestrator.paths import DIST_DIR, REPO_ROOT, project_version
from taxi_fares_mlops.environment import SPARK_CONF_FILE
from taxi_fares_mlops.summary import JobSummary

PROJECT_DISTRIBUTIONS = ("taxi_fares", "taxi-fares", "__editable__")
# What a local Spark prints while it starts (Ivy resolving the Delta jars, log4j and Hadoop notices) and what its
# Python workers log on their own: noise on a job's console, absent on Databricks. `mlops -v` shows it.
LOCAL_SPARK_CHATTER = re.compile(
    r"^(:: |\tconfs: |\tfound |\t:: evicted|\t\S+#\S+;\S+ by \[|\t-{10,}|\t\||\t\d+ artifacts copied|Ivy Default Cache"
    r"|The jars for the packages|\S+#\S+ added as a dependency|Using Spark's default log4j profile"
    r"|Setting default log level|To adjust logging level|WARNING: Using incubator modules"
    r"|\d\d/\d\d/\d\d [\d:]+ WARN NativeCodeLoader"
    # Spark's Python workers open the local sqlite MLflow store to load a model, and alembic says so
    r"|\d{4}/\d\d/\d\d [\d:]+ INFO (alembic|mlflow\.store\.db))")
SECRETS_FILE = REPO_ROOT / ".secrets.env"


def tracking_uri(lakehouse: str) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{lakehouse}/mlflow.db"


@dataclass
class JobEnvironment:
    """A virtual environment for one wheel version, layered on the runtime (the development environment)."""

    root: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def ensure(self, wheels: Sequence[Path]) -> "JobEnvironment":
        marker = self.root / "wheels.sha256"
        wanted = "\n".join(f"{build.sha256(w)} {w.name}" for w in wheels)
        if self.python.exists() and marker.exists() and marker.read_text() == wanted:
            self._link_runtime()  # the runtime may have gained packages since
            return self
        if self.root.exists():
            progress(f"wheels changed: recreating the job environment {self.root}")
            shutil.rmtree(self.root)
        progress(f"creating the job environment {self.root}")
        venv.EnvBuilder(with_pip=False, symlinks=True).create(self.root)
        self._link_runtime()
        marker.write_text(wanted)
        return self

    def _link_runtime(self) -> None:
        runtime = Path(sysconfig.get_paths()["purelib"])
        layer = self.root / "runtime"
        if layer.exists():
            shutil.rmtree(layer)
        layer.mkdir()
        for entry in runtime.iterdir():
            if not entry.name.lower().startswith(PROJECT_DISTRIBUTIONS) and not entry.name.endswith(".pth"):
                (layer / entry.name).symlink_to(entry)
        site_packages = next((self.root / "lib").glob("python*/site-packages"))
        (site_packages / "_mlops_runtime.pth").write_text(f"{layer}\n")


def stage_wheels(wheels: Sequence[Path], wheel_base_path: str, version: str) -> None:
    """The wheels and their SHA256SUMS, as a deploy uploads them (a job records the digests listed beside the
    wheels it installed)."""
    target = Path(wheel_base_path) / version
    target.mkdir(parents=True, exist_ok=True)
    sums = [wheels[0].parent / "SHA256SUMS"] if wheels else []
    for wheel in [*wheels, *(s for s in sums if s.exists())]:
        dest = target / wheel.name
        if not dest.exists() or build.sha256(dest) != build.sha256(wheel):
            shutil.copy2(wheel, dest)


@dataclass(frozen=True)
class RunResult:
    status: str
    exit_value: Optional[str]
    error: Optional[str]
    seconds: float
    task_values: Mapping[str, object] = field(default_factory=dict)
    # the deployment job the run's registration started (locally, what the model trigger does on a workspace)
    deployment: Optional["RunResult"] = None

    @property
    def summary(self) -> Optional[dict]:
        """The notebook's exit value as JSON data (what ``--json`` prints)."""
        return json.loads(self.exit_value) if self.exit_value else None

    @property
    def job_summary(self) -> Optional[JobSummary]:
        return JobSummary.from_dict(self.summary) if self.summary else None


def prepare(lakehouse: str, home: Optional[str] = None) -> tuple[dict, JobEnvironment]:
    """Wheels built and staged, the local target's variables, and the job environment for this version.

    The job environment lives under ``home`` (default: the lakehouse), shared by every run of the version.
    """
    version = project_version()
    if build.is_stale(DIST_DIR):
        progress("building the wheels (sources changed)")
    wheels = build.ensure_built(DIST_DIR)
    variables = templates.target_variables("local", version=version, lakehouse=lakehouse)
    stage_wheels(wheels, variables["wheel_base_path"], version)
    env = JobEnvironment(Path(home or lakehouse) / "envs" / version).ensure(wheels)
    return variables, env


def run_local(job: str, overrides: Mapping[str, str], lakehouse: str,
              shared: Optional[Mapping[str, str]] = None) -> RunResult:
    """Run ``job`` from its template, for the local target, with parameter overrides (on the Spark that
    ``shared`` names, if given)."""
    started = time.monotonic()
    # Parameters first: a bad name or value is refused before wheels are built or anything starts.
    rendered = templates.read_job(job, templates.target_variables("local", lakehouse=lakehouse))
    params = merge_parameters(rendered.parameters, overrides, job, rendered.policy)
    _, env = prepare(lakehouse)
    with job_lock(lakehouse, job):
        progress(f"running job {rendered.name} locally")
        result = _run_tasks(rendered, params, lakehouse, env, started, shared)
    registered = registered_version(result)
    if registered is not None and job != DEPLOYMENT_JOB:
        # where the version's data and registry are: the registering run's (tables by name, another experiment)
        inherited = {k: params[k] for k in INHERITED if params.get(k)}
        return replace(result, deployment=deploy_registered(registered, lakehouse, shared, inherited))
    return result


DEPLOYMENT_JOB = "deployment"
INHERITED = ("lakehouse_root", "table_schema", "mlflow_experiment", "mlflow_registry_uri", "model_name")


def registered_version(result: RunResult) -> Optional[tuple[str, str]]:
    """(model name, version) a successful run registered (its training stage's), else None."""
    summary = result.job_summary if result.status == "SUCCESS" else None
    training = summary.stages.get("training") if summary else None
    if summary is None or training is None or training.status != "SUCCESS" or "model_version" not in training.outputs:
        return None
    return summary.model_name, str(training.outputs["model_version"])


def deploy_registered(registered: tuple[str, str], lakehouse: str, shared: Optional[Mapping[str, str]] = None,
                      inherited: Optional[Mapping[str, str]] = None) -> RunResult:
    """What the deployment job's model trigger does on a workspace (a new version READY starts it with the model's
    name and the version): the local deployment job, run for the version just registered. Its outcome is its own
    run's, as on Databricks: the registering run stays a success whatever the deployment decides."""
    name, version = registered
    progress(f"model {name} version {version} registered: running the deployment job for it (as its trigger would)")
    deployed = run_local(DEPLOYMENT_JOB, {**(inherited or {}), "model_name": name, "model_version": version},
                         lakehouse, shared)
    line = f"deployment job on {name} version {version}: {deployed.status} in {deployed.seconds:.1f}s"
    summary = deployed.job_summary
    if deployed.status != "SUCCESS":
        line += f" ({deployed.error})"
    elif summary is not None and "promotion" in summary.stages:  # the last task's run: promotion
        aliases = ", ".join(f"{a} -> v{v}" for a, v in sorted(summary.aliases.items())) or "none"
        line += f", promotion: {summary.stages['promotion'].outputs.get('decision')}; {aliases}"
    progress(line)
    return deployed


@contextmanager
def job_lock(lakehouse: str, job: str):
    """One local run of ``job`` at a time on a lakehouse, as Databricks allows one (``max_concurrent_runs: 1``):
    an exclusive lock on ``<lakehouse>/locks/<job>.lock``, which the operating system releases when the process
    ends, however it ends (a killed run leaves no stale lock). A second run is refused before it starts."""
    import datetime as dt
    import fcntl

    path = Path(lakehouse) / "locks" / f"{job}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise UsageError(f"job {job} is already running on {lakehouse} ({holder}): one run at a time, as "
                         f"on Databricks (max_concurrent_runs: 1); wait for it to end") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}, started {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}")
        handle.flush()
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


_REFERENCE = re.compile(r"\{\{\s*(tasks\.([\w-]+)\.values\.(\w+)|job\.parameters\.(\w+))\s*\}\}")


def _resolve(text: str, params: Mapping[str, str], values: Mapping[str, Mapping[str, object]]) -> str:
    """A task field with Databricks' dynamic value references filled in (task values, job parameters)."""
    def value(match: re.Match) -> str:
        if match.group(4):
            if match.group(4) not in params:
                raise UsageError(f"{match.group(0)}: the job has no parameter '{match.group(4)}'")
            return str(params[match.group(4)])
        task, key = match.group(2), match.group(3)
        if key not in values.get(task, {}):
            raise UsageError(f"{match.group(0)}: task '{task}' set no value '{key}'")
        return str(values[task][key])
    return _REFERENCE.sub(value, text)


def _run_tasks(rendered: templates.RenderedJob, params: Mapping[str, str], lakehouse: str, env: "JobEnvironment",
               started: float, shared: Optional[Mapping[str, str]] = None) -> RunResult:
    """A job of several tasks, in their order, as the Jobs service runs them: notebook tasks, condition tasks
    (their outcome gates the tasks that depend on it) and run-job tasks (the started job runs locally too).
    The result is the notebook task's; a task that fails ends the run."""
    values: dict[str, Mapping[str, object]] = {}
    outcomes: dict[str, str] = {}
    ran: set[str] = set()
    result: Optional[RunResult] = None
    for task in rendered.tasks:
        key = task.key
        blocked = [needed for needed, outcome in task.depends_on
                   if needed not in ran or (outcome is not None and outcomes.get(needed) != outcome)]
        if blocked:
            progress(f"task {key}: excluded ({', '.join(blocked)} did not lead here)")
            continue
        if task.notebook_path:
            # As the Jobs service does: the task's base parameters (the wheel location and the target policy, as
            # the deployer writes them), then the job parameters over same-named ones (never these: not job ones).
            result = run_notebook(Path(task.notebook_path + ".py"), {**task.base_parameters, **params}, lakehouse,
                                  env, started, shared)
            if result.status != "SUCCESS":
                return result
            values[key] = result.task_values
        elif task.condition is not None:
            condition = task.condition
            left, right = (_resolve(condition[k], params, values) for k in ("left", "right"))
            tests = {"EQUAL_TO": left == right, "NOT_EQUAL": left != right}
            if condition["op"] not in tests:
                raise UsageError(f"task {key}: the local runner does not evaluate op {condition['op']}")
            outcomes[key] = "true" if tests[condition["op"]] else "false"
            progress(f"task {key}: {left!r} {condition['op']} {right!r} is {outcomes[key]}")
        elif task.starts is not None:
            arguments = {k: _resolve(v, params, values) for k, v in task.job_parameters.items()}
            progress(f"task {key}: starting job {task.starts}")
            other = run_local(task.starts, arguments, lakehouse, shared)
            if other.status != "SUCCESS":
                return RunResult("FAILED", result.exit_value if result else None,
                                 f"task {key}: job {task.starts} failed: {other.error}", time.monotonic() - started)
        else:
            raise UsageError(f"task {key}: the local runner runs notebook, condition and run-job tasks only")
        ran.add(key)
    return replace(result, seconds=time.monotonic() - started) if result else RunResult(
        "FAILED", None, "the job has no notebook task", time.monotonic() - started)


def run_notebook(notebook: Path, params: Mapping[str, str], lakehouse: str, env: JobEnvironment,
                 started: Optional[float] = None, shared: Optional[Mapping[str, str]] = None) -> RunResult:
    """Run one notebook with the kernel in the job environment (attached to the Spark ``shared`` names, if
    given); its output goes to stderr."""
    started = time.monotonic() if started is None else started
    if not notebook.exists():
        raise UsageError(f"notebook {notebook} does not exist")
    Path(lakehouse).mkdir(parents=True, exist_ok=True)
    progress(f"notebook {notebook.relative_to(REPO_ROOT)}")
    with tempfile.TemporaryDirectory(prefix="mlops-run-") as tmp:
        params_file, result_file = Path(tmp) / "params.json", Path(tmp) / "result.json"
        params_file.write_text(json.dumps(dict(params)))
        command = [str(env.python), "-m", "orchestrator.local.kernel", "--notebook", str(notebook),
                   "--params", str(params_file), "--result", str(result_file), "--secrets-file", str(SECRETS_FILE)]
        # The notebook's own output goes to stderr: stdout is kept for the summary (--json).
        kernel = subprocess.Popen(command, env={**_kernel_environment(env, lakehouse), **(shared or {})},
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, bufsize=1)
        verbose = _verbose()
        for line in kernel.stdout:
            if verbose or not LOCAL_SPARK_CHATTER.search(line):
                sys.stderr.write(line)
        kernel.wait()
        if not result_file.exists():
            return RunResult("FAILED", None, "the notebook kernel died before reporting a result",
                             time.monotonic() - started)
        result = json.loads(result_file.read_text())
    return RunResult(result["status"], result.get("exit_value"), result.get("error"), time.monotonic() - started,
                     result.get("task_values") or {})


@contextmanager
def local_cluster(app_name: str = "mlops-local-cluster"):
    """A local Spark for several job runs, as an all-purpose cluster is: yields the ``shared`` environment of
    ``run_local``. Its JVM, and so the Python workers it starts for every job, get ``SPARK_ENVIRONMENT``; each
    run keeps its own lakehouse and MLflow store. A Spark it started stops when the block ends; one this process
    already had is shared as it is, and left running."""
    from pyspark.sql import SparkSession

    from orchestrator.local.spark import tuned_session

    previous = {key: os.environ.get(key) for key in SPARK_ENVIRONMENT}
    os.environ.update(SPARK_ENVIRONMENT)
    started_here = SparkSession.getActiveSession() is None
    with _filtered_stderr():  # the JVM, and the Python workers it starts, print what a kernel's output drops
        spark = tuned_session(app_name)
    try:
        yield cluster.sharing_environment(spark)
    finally:
        if started_here:
            spark.stop()
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def _filtered_stderr():
    """Processes started inside the block write their standard error through the ``LOCAL_SPARK_CHATTER`` filter
    (a pipe read by a thread of this process); this process's own standard error is untouched."""
    if _verbose():
        yield
        return
    sys.stderr.flush()
    original = os.dup(2)
    console_fd = os.dup(original)  # the thread's own, made here: the block may end (closing original) before it runs
    read, write = os.pipe()

    def pump() -> None:
        with os.fdopen(read, errors="replace") as lines, os.fdopen(console_fd, "w") as console:
            for line in lines:
                if not LOCAL_SPARK_CHATTER.search(line):
                    console.write(line)
                    console.flush()

    threading.Thread(target=pump, name="spark-console", daemon=True).start()
    os.dup2(write, 2)
    os.close(write)
    try:
        yield
    finally:
        os.dup2(original, 2)
        os.close(original)


def _verbose() -> bool:
    return (environment.LOG_LEVEL.get() or "").upper() == "DEBUG"


# What a job's Spark and its Python workers need, whoever starts them (the job's kernel or a shared cluster).
SPARK_ENVIRONMENT = {
    # Loading a model runs code from its artifact; locally the models come from the job's own registry.
    # (On Databricks, MLflow allows it already.)
    "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true",
    "SPARK_LOCAL_IP": "127.0.0.1",
}


def _kernel_environment(env: JobEnvironment, lakehouse: str) -> dict[str, str]:
    from orchestrator.local.spark import write_conf_file

    python = str(env.python)
    # The job's model registry is its tracking store (MLflow's default), set below: nothing inherited from the caller.
    kernel_env = without_mlflow_stores(os.environ)
    kernel_env.update(SPARK_ENVIRONMENT)
    kernel_env.update({
        environment.HOME.name: lakehouse,
        "MLFLOW_TRACKING_URI": tracking_uri(lakehouse),
        "PYTHONPATH": str(REPO_ROOT),          # the kernel itself; the project's packages come from the wheels
        "PYSPARK_PYTHON": python,              # executors must import the wheels too
        "PYSPARK_DRIVER_PYTHON": python,
        "PYTHONUNBUFFERED": "1",
        # The tuned local session's settings, for the session the wheel starts in the kernel (orchestrator.local.spark)
        SPARK_CONF_FILE.name: str(write_conf_file(Path(lakehouse) / ".local-spark")),
    })
    return kernel_env


def describe(result: RunResult, job: str, lakehouse: str) -> str:
    """What a person wants to see after a run."""
    summary = result.job_summary
    lines = [f"job {job}: {result.status} in {result.seconds:.1f}s"]
    if result.status != "SUCCESS":
        lines.append(f"error: {result.error}")
        return "\n".join(lines)
    if not summary:
        return "\n".join(lines)
    lines.append(f"  MLflow run     {summary.mlflow_run_id} (experiment {summary.mlflow_experiment_id})")
    for name, stage in summary.stages.items():
        out = stage.outputs
        detail = stage.status + (f" in {stage.duration_s}s" if stage.duration_s is not None else "")
        if "decision" in out:
            detail += f", decision: {out['decision']}"
        if "model_version" in out:
            detail += f", model version {out['model_version']}"
        if "rows" in out:
            detail += f", {out['rows']} rows"
        if out.get("quarantined"):
            detail += f", {sum(out['quarantined'].values())} trip(s) quarantined"
        if "blob" in out:
            detail += f", published {out['blob']['files']} part(s) + manifest to {out['blob']['container']}"
        lines.append(f"  stage          {name}: {detail}")
    aliases = ", ".join(f"{a} -> v{v}" for a, v in sorted(summary.aliases.items())) or "none"
    lines.append(f"  model          {summary.model_name}: {aliases}")
    for table, path in summary.tables.items():
        lines.append(f"  table          {table}: {path}")
    lines.append(f"  MLflow UI      mlops ui   (store {tracking_uri(lakehouse)})")
    lines.append(f"  telemetry      mlops trace {summary.mlflow_run_id}")
    return "\n".join(lines)
