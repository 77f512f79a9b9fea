"""The architecture, enforced: which layer may import which, and every run-time import declared.

* ``taxi_fares`` (the ML wheel) is pure logic: no mlflow, azure, databricks, or the MLOps wheel.
* ``taxi_fares_mlops`` imports nothing of the operator tool, and its stages get MLflow from the stage context.
* ``orchestrator.deploy`` (a workspace) and ``orchestrator.local`` (the embedded default) never import each other;
  what both need lives beside them in ``orchestrator``.
* Every third-party module a package imports is a requirement of its distribution.

Imports are read from the source with ``ast``, including those inside functions.
"""
import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

import pytest

from orchestrator.paths import REPO_ROOT

PACKAGES = {"taxi_fares": REPO_ROOT / "ml_source/taxi_fares", "taxi_fares_mlops": REPO_ROOT / "ml_ops/taxi_fares_mlops",
            "orchestrator": REPO_ROOT / "orchestrator"}

# (package or module prefix, imports it may not make)
RULES = [
    ("taxi_fares", ("mlflow", "azure", "databricks", "taxi_fares_mlops", "orchestrator", "delta")),
    ("taxi_fares_mlops", ("orchestrator",)),
    ("taxi_fares_mlops.stages", ("mlflow",)),
    ("orchestrator.deploy", ("orchestrator.local",)),
    ("orchestrator.local", ("orchestrator.deploy",)),
]

# Distributions (wheels) and the packages whose imports they must declare.
DISTRIBUTIONS = {"taxi_fares": ["taxi_fares"], "taxi_fares_mlops": ["taxi_fares_mlops"],
                 "taxi_fares_orchestrator": ["orchestrator"]}
# Subpackages whose imports are declared by an extra of their distribution rather than its requirements.
EXTRAS = {"taxi_fares_mlops.serving": "serving"}
# Provided by the Databricks runtime outside pip's view: declared as the `spark` extra, not as requirements.
RUNTIME_PROVIDED = {"pyspark", "delta-spark"}


def module_name(package: str, root: Path, path: Path) -> str:
    parts = [package, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, module: str) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved against ``module``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = package[: len(package) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return found


def modules(package: str, root: Path):
    for path in sorted(root.rglob("*.py")):
        yield module_name(package, root, path), path


def violations(package: str, root: Path, rules=RULES) -> list[str]:
    problems = []
    for module, path in modules(package, root):
        names = imports_of(path, module)
        for prefix, forbidden in rules:
            if module != prefix and not module.startswith(prefix + "."):
                continue
            for name in sorted(names):
                if any(name == f or name.startswith(f + ".") for f in forbidden):
                    problems.append(f"{path.relative_to(root.parent)}: {module} imports {name} "
                                    f"({prefix} may not import {', '.join(forbidden)})")
    return problems


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_each_layer_imports_only_what_it_may(package):
    assert violations(package, PACKAGES[package]) == []


def test_the_check_catches_a_forbidden_import(tmp_path):
    root = tmp_path / "taxi_fares"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "features.py").write_text("import numpy\n")
    assert violations("taxi_fares", root) == []
    (root / "sub" / "model.py").write_text("def f():\n    import mlflow.sklearn\n    return mlflow\n")
    (root / "sub" / "__init__.py").write_text("from ..features import x\nfrom taxi_fares_mlops import jobs\n")
    problems = violations("taxi_fares", root)
    assert [p.split(": ", 1)[1].split(" (")[0] for p in problems] == [
        "taxi_fares.sub imports taxi_fares_mlops", "taxi_fares.sub imports taxi_fares_mlops.jobs",
        "taxi_fares.sub.model imports mlflow.sklearn"]


def _distribution(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


@pytest.mark.parametrize("distribution", sorted(DISTRIBUTIONS))
def test_every_third_party_import_is_a_declared_requirement(distribution):
    requirements = md.requires(distribution) or []
    declared = {_distribution(r) for r in requirements if "extra ==" not in r}
    own = set(PACKAGES)
    providers = md.packages_distributions()
    missing = set()
    for package in DISTRIBUTIONS[distribution]:
        for module, path in modules(package, PACKAGES[package]):
            extra = next((e for prefix, e in EXTRAS.items() if module.startswith(prefix)), None)
            allowed = declared | {_distribution(r) for r in requirements if f'extra == "{extra}"' in r}
            for name in imports_of(path, module):
                top = name.split(".")[0]
                if top in own or top in sys.stdlib_module_names or top == "__future__":
                    continue
                dists = {d.lower().replace("_", "-") for d in providers.get(top, [top])}
                if not dists & (allowed | RUNTIME_PROVIDED):
                    missing.add(f"{top} (from {path.relative_to(REPO_ROOT)}; distribution {sorted(dists)})")
    assert sorted(missing) == []


# What the online service imports: it must load where neither pyspark nor mlflow is installed.
SPARK_FREE = ("taxi_fares.columns", "taxi_fares.online", "taxi_fares.drift_detector", "taxi_fares.outliers",
              "taxi_fares_mlops.serving.app", "taxi_fares_mlops.serving.__main__")


def test_the_online_modules_import_without_spark_or_mlflow():
    import subprocess
    blocked = "import sys; sys.modules['pyspark'] = None; sys.modules['mlflow'] = None; "
    done = subprocess.run([sys.executable, "-c", blocked + "; ".join(f"import {m}" for m in SPARK_FREE)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    leaked = subprocess.run([sys.executable, "-c", blocked + "import taxi_fares.features"], capture_output=True)
    assert leaked.returncode != 0  # the block works: the Spark modules do need pyspark
