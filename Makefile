# The commands a person and CI run. `make demo` and `make test` each install what they need first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DIST ?= dist
STAMP := $(VENV)/.installed-stamp
export PYSPARK_PYTHON := $(abspath $(PY))
export SPARK_LOCAL_IP := 127.0.0.1
export NO_MKDOCS_2_WARNING := 1

.PHONY: install warm demo test check lint typecheck docs docs-check fast-tests dist bench bench-serving clean

$(STAMP): requirements/runtime.txt requirements/dev.txt service_deployment/requirements.txt setup.py ml_source/setup.py ml_ops/setup.py VERSION \
		pyproject.toml ml_source/pyproject.toml ml_ops/pyproject.toml package.json package-lock.json
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/dev.txt
	$(PY) -m pip install --quiet -e ml_source -e ml_ops -e .
	$(PY) -m pip check
	npm ci --no-audit --no-fund --loglevel=error   # Azurite, the local Azure Blob endpoint
	touch $(STAMP)

install: $(STAMP)

# Local Spark's class-data-sharing archive (once per JVM, pyspark and Delta version): later JVMs start faster.
# The test suite starts dozens; the demo runs its jobs on one Spark, which would not win back the recording.
warm: install
	$(VENV)/bin/mlops warm

demo: install
	$(VENV)/bin/mlops demo

lint: install
	$(PY) -m flake8

# mypy at the levels pyproject.toml writes down: strict on taxi_fares, annotated code elsewhere.
typecheck: install
	$(PY) -m mypy

# The reference pages (CLI, job parameters, environment variables, exit codes) and the latest bench results,
# generated from the code; docs-check fails when a page differs from what the code says, or the site has a broken
# link or an orphan page.
docs: install
	$(PY) -m orchestrator.reference
	$(VENV)/bin/mkdocs build --strict --quiet -d site

docs-check: install
	$(PY) -m orchestrator.reference --check
	$(VENV)/bin/mkdocs build --strict --quiet -d $$(mktemp -d)

# The quick loop: the unit tests that start no job and no server (one Spark session per process).
fast-tests: install
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile -q -m "not slow" tests/unit $(PYTEST_ARGS)

# What a developer runs before pushing, in minutes: lint, types, docs, the fast tests (.pre-commit-config.yaml runs
# the same). `make test` is the whole suite, what CI runs.
check: lint typecheck docs-check fast-tests

# PYTEST_ARGS lets CI add report options (JUnit, coverage) to the very same command. TEST_WORKERS pytest processes
# share the tests a file at a time (a file's tests share its fixtures), in the order of tests/: the end-to-end files
# first, one after another in one process (tests/conftest.py groups them; side by side their job processes slowed
# each other), while the other process takes the in-process files. Each process costs a Spark session of its own,
# and pays where the suite waits on the processes it starts.
TEST_WORKERS ?= 2
test: lint typecheck docs-check warm
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# Exactly two wheels (taxi_fares, taxi_fares_mlops) and their SHA-256 list, in $(DIST)/.
dist: install
	$(VENV)/bin/mlops build --dist $(DIST)

# Batch-scoring throughput, its stage breakdown and driver memory at 1M and 4M rows, and on a standalone
# cluster; the incremental scoring job on 1M new trips beside the batch job on the same trips; the online service
# (prints figures; asserts nothing). BENCH_ARGS=--with-16m adds 16M rows to the batch benchmark.
bench: install
	$(PY) benchmarks/bench_batch_scoring.py $(BENCH_ARGS)
	$(PY) benchmarks/bench_streaming.py
	$(PY) benchmarks/bench_serving.py

bench-serving: install
	$(PY) benchmarks/bench_serving.py

clean:
	rm -rf dist build ml_source/build ml_ops/build .pytest_cache .mypy_cache site
