"""``mlops test-notebooks --local``: run the Nutter notebook tests (``tests/notebooks/test_*.py``) with the local
kernel, each against a fresh lakehouse of its own, and write one JUnit XML report (Nutter's own format). All of
them run on one local Spark, as ``nutter run`` runs them on one cluster; the notebooks they run attach to it too.

The same notebooks run on a workspace with ``nutter run``; the parameters passed here are the ones the CD
pipeline passes there.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from common.resultreports import JunitXMLReportWriter
from common.testresult import TestResult, TestResults

from orchestrator.console import progress
from orchestrator.local.runner import local_cluster, prepare, run_notebook
from orchestrator.errors import UsageError
from orchestrator.parameters import local_test_parameters
from orchestrator.paths import REPO_ROOT

TESTS_DIR = REPO_ROOT / "tests" / "notebooks"


@dataclass(frozen=True)
class NotebookTestOutcome:
    notebook: Path
    results: TestResults

    @property
    def passed(self) -> bool:
        return self.results.passed() and bool(self.results.results)


def run_notebook_tests(home: str, junit: Path, pattern: str = "test_*") -> list[NotebookTestOutcome]:
    notebooks = sorted(TESTS_DIR.glob(f"{pattern}.py"))
    if not notebooks:
        raise UsageError(f"no notebook tests match {TESTS_DIR}/{pattern}.py")
    outcomes = []
    writer = JunitXMLReportWriter()
    with local_cluster("mlops-notebook-tests") as shared:
        for notebook in notebooks:
            lakehouse = Path(home) / "notebook-tests" / notebook.stem
            shutil.rmtree(lakehouse, ignore_errors=True)
            variables, env = prepare(str(lakehouse), home=home)
            progress(f"notebook tests {notebook.name}")
            run = run_notebook(notebook, local_test_parameters(lakehouse, variables), str(lakehouse), env,
                               shared=shared)
            if run.status == "SUCCESS" and run.exit_value:
                results = TestResults().deserialize(run.exit_value)
            else:  # the notebook itself failed (or never reached result.exit): one failed case says why
                results = TestResults()
                results.append(TestResult("notebook", False, run.seconds, [], Exception(str(run.error))))
            outcomes.append(NotebookTestOutcome(notebook, results))
            writer.add_result(str(notebook.relative_to(REPO_ROOT)), results)
    junit.parent.mkdir(parents=True, exist_ok=True)
    writer.to_file(str(junit))
    return outcomes
