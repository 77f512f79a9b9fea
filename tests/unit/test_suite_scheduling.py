"""How `make test` shares the test files among its pytest processes (tests/conftest.py): a file's tests in one
process, and the end-to-end files, one unit of work, all in the same one. Checked with pytest's own `--setup-plan`
(the tests are scheduled, nothing runs) and the options the Makefile passes."""
import os
import re
import subprocess
import sys
from collections import defaultdict

import pytest

from orchestrator.paths import REPO_ROOT

# Records, in the pytest process that is given a test, which process it is.
RECORDER = '''import os
def pytest_runtest_setup(item):
    with open(os.environ["WHERE_TESTS_RAN"], "a") as fh:
        fh.write(os.environ.get("PYTEST_XDIST_WORKER", "-") + " " + item.nodeid + "\\n")
'''


def _make_test_options() -> list[str]:
    rule = re.search(r"^test:.*\n\t\$\(PY\) -m pytest -n \$\(TEST_WORKERS\) (.+?) \$\(PYTEST_ARGS\)",
                     (REPO_ROOT / "Makefile").read_text(), re.MULTILINE)
    assert rule, "the Makefile's test rule no longer reads `pytest -n $(TEST_WORKERS) ... $(PYTEST_ARGS)`"
    return rule.group(1).split()


def _pytest(tmp_path, *args):
    (tmp_path / "where_tests_ran.py").write_text(RECORDER)
    env = {**os.environ, "WHERE_TESTS_RAN": str(tmp_path / "ran.txt"), "PYTHONPATH": str(tmp_path)}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "where_tests_ran", *args],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_the_end_to_end_files_run_in_one_process_and_every_other_file_in_one(tmp_path):
    done = _pytest(tmp_path, "-n", "2", *_make_test_options(), "--setup-plan", "tests/e2e",
                   "tests/unit/test_templates.py", "tests/unit/test_schema.py")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    processes = defaultdict(set)
    for line in (tmp_path / "ran.txt").read_text().splitlines():
        process, nodeid = line.split(" ", 1)
        processes[nodeid.split("::")[0]].add(process)
    end_to_end = {path: ran for path, ran in processes.items() if path.startswith("tests/e2e/")}
    assert len(end_to_end) == 5 and len(set().union(*end_to_end.values())) == 1, dict(processes)
    assert all(len(ran) == 1 for ran in processes.values()), dict(processes)


@pytest.mark.slow
def test_pytest_without_xdist_still_runs_the_suite(tmp_path):
    """The scheduler is xdist's hook: pytest without the plugin must not refuse the conftest that declares it."""
    done = _pytest(tmp_path, "-p", "no:xdist", "-q",
                   "tests/unit/test_templates.py::test_missing_and_unknown_variables_fail_loudly")
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
