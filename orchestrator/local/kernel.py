"""Execute a Databricks source notebook cell by cell, in the job's own Python environment.

Run as ``python -m orchestrator.local.kernel --notebook PATH --params FILE --result FILE`` by the local runner,
with the job environment's interpreter. ``%pip install`` runs pip in that environment (``$name`` expands to the
notebook variable, as in Databricks), ``%md`` cells are skipped, Python cells are executed in one namespace
holding ``dbutils``. ``dbutils.library.restartPython()`` forgets every module imported since start and the
namespace; ``dbutils.notebook.exit`` ends the run with its value.

Started with ``orchestrator.local.cluster.sharing_environment`` of a running Spark, the kernel attaches to it before
anything else (the notebook's ``spark`` is then a session of that application, and survives ``restartPython``, as
a cluster's Spark does); otherwise the notebook's first use of Spark starts one. ``dbutils.notebook.run`` hands the
kernel's Spark, if it has one, to the child notebook's process: children share their parent's cluster.

The result file receives ``{"status": "SUCCESS", "exit_value": ...}`` or ``{"status": "FAILED", "error": ...}``.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Mapping, Optional

from orchestrator.local import cluster
from orchestrator.local import notebook as nb
from orchestrator.local.dbutils import LocalDbutils, NotebookExit, RestartPython

logger = logging.getLogger("mlops.kernel")

_VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")


MAX_ERROR_LINES = 40  # a config error lists every problem; a JVM stack trace need not be repeated whole


class PipError(RuntimeError):
    pass


class NotebookRunFailed(RuntimeError):
    """``dbutils.notebook.run`` of a notebook that failed (Databricks raises a WorkflowException)."""


class LazySpark:
    """The notebook's ``spark`` global. Databricks provides a session; locally it is the MLOps wheel's session
    factory, created on first use, so it is available once the notebook has installed the wheels."""

    _session = None
    attached = False

    @classmethod
    def running(cls):
        """The session this process uses, if Spark runs here: attached, started by the notebook, or active."""
        if cls._session is not None:
            return cls._session
        if "pyspark" not in sys.modules:
            return None
        from pyspark.sql import SparkSession

        return SparkSession.getActiveSession()

    def __getattr__(self, name):
        if LazySpark._session is None:
            try:
                from taxi_fares_mlops.spark import get_spark
            except ImportError:
                raise NameError("spark is available locally once the notebook has %pip-installed the "
                                "taxi_fares_mlops wheel") from None
            LazySpark._session = get_spark("notebook")
        return getattr(LazySpark._session, name)


def expand(text: str, namespace: Mapping[str, object]) -> str:
    """Replace ``$name`` / ``${name}`` with the notebook variable's value."""
    def value(match: re.Match) -> str:
        name = match.group(1)
        if name not in namespace:
            raise NameError(f"%pip refers to ${name}, which the notebook has not defined")
        return str(namespace[name])
    return _VARIABLE.sub(value, text)


class Kernel:
    def __init__(self, secrets_file: Optional[Path] = None):
        self.secrets_file = secrets_file
        self.baseline_modules = set(sys.modules)
        self.task_values: dict[str, object] = {}

    def run(self, path: Path, params: Mapping[str, str]) -> Optional[str]:
        """Run the notebook at ``path`` with widget values ``params``; return its exit value (or None)."""
        cells = nb.load(path)
        dbutils = LocalDbutils(params, lambda p, t, a: self._run_child(path, p, a), self.secrets_file)
        self.task_values = dbutils.jobs.taskValues.values
        namespace = self._namespace(dbutils)
        for cell in cells:
            label = f"{path.name} cell {cell.index}" + (f" ({cell.title})" if cell.title else "")
            if cell.magic == "md":
                continue
            if cell.magic == "pip":
                self._pip(expand(cell.magic_args, namespace), label)
                continue
            if cell.magic is not None:
                raise nb.NotebookFormatError(f"{label}: the local runner does not support %{cell.magic}")
            logger.debug("running %s", label)
            try:
                exec(compile(cell.source, label, "exec"), namespace)  # noqa: S102 - running the notebook is the job
            except RestartPython:
                namespace = self._restart(dbutils)
            except NotebookExit as done:
                return done.value
        return None

    def _run_child(self, parent: Path, relative: str, arguments: Mapping[str, str]) -> str:
        """``dbutils.notebook.run``: the child runs in a process of its own, as on Databricks, so its
        ``restartPython`` and its state do not touch the caller. Its failure raises here."""
        child = (parent.parent / relative).resolve()
        if child.suffix != ".py":
            child = child.with_suffix(".py")
        if not child.exists():
            raise FileNotFoundError(f"dbutils.notebook.run: no notebook at {child}")
        logger.info("running notebook %s", child)
        with tempfile.TemporaryDirectory(prefix="mlops-child-") as tmp:
            params, result = Path(tmp) / "params.json", Path(tmp) / "result.json"
            params.write_text(json.dumps(dict(arguments)))
            command = [sys.executable, "-m", "orchestrator.local.kernel", "--notebook", str(child),
                       "--params", str(params), "--result", str(result)]
            if self.secrets_file:
                command += ["--secrets-file", str(self.secrets_file)]
            shared = cluster.sharing_environment(LazySpark.running())
            subprocess.run(command, stdout=sys.stderr, stdin=subprocess.DEVNULL, env={**os.environ, **shared})
            outcome = json.loads(result.read_text()) if result.exists() else {"status": "FAILED",
                                                                              "error": "the kernel died"}
        if outcome["status"] != "SUCCESS":
            raise NotebookRunFailed(f"notebook {child.name} failed: {outcome.get('error')}")
        return outcome.get("exit_value") or ""

    @staticmethod
    def _namespace(dbutils: LocalDbutils) -> dict:
        return {"__name__": "__main__", "dbutils": dbutils, "display": print, "spark": LazySpark()}

    def _restart(self, dbutils: LocalDbutils) -> dict:
        for name in set(sys.modules) - self.baseline_modules:
            del sys.modules[name]
        if not LazySpark.attached:
            LazySpark._session = None
        importlib.invalidate_caches()
        logger.info("Python restarted: notebook state cleared")
        return self._namespace(dbutils)

    @staticmethod
    def _pip(arguments: str, label: str) -> None:
        args = shlex.split(arguments)
        if not args or args[0] != "install":
            raise PipError(f"{label}: only '%pip install' is supported, got '%pip {arguments}'")
        logger.info("%%pip %s", " ".join(args))
        command = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "--no-input", "--quiet"]
        done = subprocess.run(command, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise PipError(f"{label}: pip install failed: {done.stderr.strip()}")
        importlib.invalidate_caches()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--notebook", type=Path, required=True)
    parser.add_argument("--params", type=Path, required=True, help="JSON file: widget name -> value")
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--secrets-file", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "alembic", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    params = json.loads(args.params.read_text())
    # Before the kernel notes its baseline modules: an attached Spark outlives restartPython.
    LazySpark._session = cluster.attach()
    LazySpark.attached = LazySpark._session is not None
    kernel = Kernel(args.secrets_file)
    try:
        value = kernel.run(args.notebook, params)
        result = {"status": "SUCCESS", "exit_value": value, "task_values": kernel.task_values}
    except Exception as exc:  # the notebook failed: report it, the runner decides the exit code
        if os.environ.get("MLOPS_VERBOSE"):  # a literal: the kernel runs before the registry is installed
            traceback.print_exc()
        lines = f"{type(exc).__name__}: {exc}".splitlines()
        result = {"status": "FAILED", "error": "\n".join(lines[:MAX_ERROR_LINES])}
    args.result.write_text(json.dumps(result))
    return 0 if result["status"] == "SUCCESS" else 1


if __name__ == "__main__":
    sys.exit(main())
