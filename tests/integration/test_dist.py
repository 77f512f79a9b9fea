"""`make dist` builds exactly the two wheels (the ``dist`` fixture); each installs into an empty virtual environment."""
import hashlib
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from orchestrator.paths import REPO_ROOT, project_version

FORBIDDEN_IN_ML_WHEEL = ("mlflow", "azure", "databricks")


def _requires(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        metadata = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        lines = zf.read(metadata).decode().splitlines()
    return [line.split(":", 1)[1].strip() for line in lines if line.startswith("Requires-Dist:")]


def test_exactly_two_wheels_with_checksums(dist):
    version = project_version()
    wheels = sorted(p.name for p in dist.glob("*.whl"))
    assert wheels == [f"taxi_fares-{version}-py3-none-any.whl", f"taxi_fares_mlops-{version}-py3-none-any.whl"]
    sums = dict(reversed(line.split()) for line in (dist / "SHA256SUMS").read_text().splitlines())
    assert sorted(sums) == wheels
    for name, digest in sums.items():
        assert hashlib.sha256((dist / name).read_bytes()).hexdigest() == digest


def test_wheel_requirements_hold_no_dev_tools_and_no_runtime_pins(dist):
    version = project_version()
    ml = _requires(next(dist.glob("taxi_fares-*.whl")))
    ops = _requires(next(dist.glob("taxi_fares_mlops-*.whl")))
    for req in ml + ops:
        name = req.split(";")[0].strip().lower()
        assert not name.startswith(("pytest", "flake8", "build", "wheel", "setuptools")), req
        if name.startswith(("pyspark", "delta-spark")):
            assert "extra ==" in req, f"{req} must be an extra: the Databricks runtime provides it"
    assert not [r for r in ml if r.lower().startswith(FORBIDDEN_IN_ML_WHEEL)]
    assert f"taxi_fares=={version}" in ops


def _fresh_env(path: Path) -> Path:
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    return path / "bin" / "python"


def _installed(python: Path) -> set[str]:
    out = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True,
                         check=True).stdout
    return {line.split("==")[0].lower() for line in out.splitlines() if line}


# No bytecode compilation: what is checked is what pip resolves and installs, and compiling every module of
# MLflow and its dependencies was about half of this test's time (162 s -> 89 s on a slow day).
PIP_INSTALL = ["-m", "pip", "install", "--quiet", "--no-compile"]


@pytest.mark.slow
def test_each_wheel_installs_into_an_empty_environment(dist, tmp_path):
    ml_python = _fresh_env(tmp_path / "ml")
    subprocess.run([str(ml_python), *PIP_INSTALL, str(next(dist.glob("taxi_fares-*.whl")))],
                   check=True)
    subprocess.run([str(ml_python), "-m", "pip", "check"], check=True)
    pulled = _installed(ml_python)
    assert "taxi-fares" in pulled or "taxi_fares" in pulled
    assert not [p for p in pulled if p.startswith(FORBIDDEN_IN_ML_WHEEL)], pulled

    ops_python = _fresh_env(tmp_path / "ops")
    subprocess.run([str(ops_python), *PIP_INSTALL, "--find-links", str(dist),
                    str(next(dist.glob("taxi_fares_mlops-*.whl")))], check=True)
    subprocess.run([str(ops_python), "-m", "pip", "check"], check=True)
    # pyspark is the runtime's (an extra), so only import what needs no Spark.
    check = "import taxi_fares, taxi_fares_mlops.errors; assert taxi_fares.__version__ == taxi_fares_mlops.__version__"
    subprocess.run([str(ops_python), "-c", check], check=True)


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        spec = line.split("#", 1)[0].strip()
        if "==" in spec:
            name, version = spec.split("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_the_development_environment_is_the_runtime_the_templates_name():
    """requirements/runtime.txt names the runtime; every target's job cluster runs it; .venv holds its pins."""
    import importlib.metadata as md

    import yaml

    header = (REPO_ROOT / "requirements/runtime.txt").read_text().splitlines()[0]
    targets = yaml.safe_load((REPO_ROOT / "job_templates/targets.yml").read_text())
    versions = {targets["defaults"]["new_cluster"]["spark_version"]} | {
        t["new_cluster"]["spark_version"] for name, t in targets["targets"].items()
        if name != "local" and "new_cluster" in (t or {})}
    assert versions == {"18.0.x-cpu-ml-scala2.13"}
    assert "Databricks Runtime 18 LTS for Machine Learning" in header and "18.0.x-cpu-ml-scala2.13" in header
    pins = _pins(REPO_ROOT / "requirements/runtime.txt")
    assert {"pyspark", "mlflow", "pandas", "numpy", "scikit-learn", "pyarrow", "matplotlib", "delta-spark"} <= set(pins)
    assert (pins["pyspark"], pins["mlflow"]) == ("4.1.0", "3.8.1")  # the 18 LTS release notes
    for name, version in pins.items():
        assert md.version(name) == version, f"{name} in .venv is {md.version(name)}, runtime.txt pins {version}"


def test_installing_the_wheels_changes_no_runtime_package(dist):
    """What `%pip install` of the two wheels does on the cluster: pip resolves them against the runtime's
    packages. The dry run's report must install nothing but the two wheels (the development environment has
    them as editable installs), and above all upgrade or downgrade none of the runtime's packages."""
    import json

    wheels = sorted(str(p) for p in dist.glob("*.whl"))
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--find-links",
                             str(dist), "--report", "-", "--quiet", *wheels], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    installed = {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
                 for item in json.loads(result.stdout)["install"]}
    runtime = _pins(REPO_ROOT / "requirements/runtime.txt")
    assert not set(installed) & set(runtime), f"the wheels would change runtime packages: {installed}"
    assert set(installed) <= {"taxi-fares", "taxi-fares-mlops"}, installed


HOLD_THE_BUILD_LOCK = """
import fcntl, sys
handle = open(sys.argv[1], "a")
fcntl.flock(handle, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


def test_a_build_waits_for_another_process_building_the_same_checkout(tmp_path):
    """Builds share each project's build/ folder: a second process (`mlops run --local` twice at once in a fresh
    clone, or two test workers) waits for the first instead of building over it."""
    import threading

    from orchestrator import build

    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_BUILD_LOCK, str(build.BUILD_LOCK)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        out = tmp_path / "dist"
        built = []
        waiting = threading.Thread(target=lambda: built.extend(build.ensure_built(out)))
        waiting.start()
        waiting.join(timeout=3)
        assert waiting.is_alive() and not out.exists(), "built while another process held the build lock"
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    waiting.join(timeout=300)
    assert sorted(p.name for p in built) == sorted(build.wheel_names(project_version()))
    assert all(p.exists() for p in built)


# What only the embedded default or the test suite uses: it lives in the operator tool (orchestrator/local) or in
# tests/, never in the wheel a Databricks cluster installs.
LOCAL_ONLY_FILES = ("pyspark_daemon.py", "ivysettings.xml")
LOCAL_ONLY_CODE = ("ArchiveClassesAtExit", "SharedArchiveFile", "spark.python.daemon.module", "record_class_archive",
                   "spark.jars.ivySettings", "MLOPS_SERVING_LOAD_DELAY_SECONDS")


def test_the_mlops_wheel_carries_the_product_modules_and_nothing_local_or_test_only(dist):
    wheel = next(dist.glob("taxi_fares_mlops-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        files = [n for n in zf.namelist() if ".dist-info/" not in n]
        sources = {n: zf.read(n).decode() for n in files}
    package = REPO_ROOT / "ml_ops"
    expected = sorted(str(p.relative_to(package)) for p in (package / "taxi_fares_mlops").rglob("*.py"))
    # Python modules only, and the build's stamp (the commit it was built from): nothing else the source tree lacks
    assert sorted(files) == sorted([*expected, "taxi_fares_mlops/_build_info.json"])
    assert [n for n in files if Path(n).name in LOCAL_ONLY_FILES] == []
    found = {n: [marker for marker in LOCAL_ONLY_CODE if marker in text] for n, text in sources.items()}
    assert {n: markers for n, markers in found.items() if markers} == {}


def test_the_ml_wheel_says_it_is_typed(dist):
    with zipfile.ZipFile(next(dist.glob("taxi_fares-*.whl"))) as zf:
        assert "taxi_fares/py.typed" in zf.namelist()


def test_build_refuses_a_folder_holding_what_it_did_not_write_and_deletes_nothing(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    done = subprocess.run([str(Path(sys.executable).parent / "mlops"), "build", "--dist", str(folder)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert f"refusing to replace {folder} with the wheels" in done.stderr and "thesis.tex" in done.stderr
    assert [p.name for p in folder.iterdir()] == ["thesis.tex"]
    assert (folder / "thesis.tex").read_text() == "years of work"


@pytest.mark.slow
def test_build_replaces_its_own_earlier_output_as_a_whole(dist, tmp_path):
    import shutil

    from orchestrator import build
    from taxi_fares_mlops.outputs import MARKER

    earlier = tmp_path / "dist"
    shutil.copytree(dist, earlier)
    assert (earlier / MARKER).is_file()
    (earlier / "taxi_fares-0.0.1-py3-none-any.whl").write_text("an older version's wheel, also ours")
    wheels = build.build(earlier)
    version = project_version()
    assert sorted(p.name for p in earlier.iterdir()) == sorted(
        [MARKER, "SHA256SUMS", f"taxi_fares-{version}-py3-none-any.whl",
         f"taxi_fares_mlops-{version}-py3-none-any.whl"])
    assert [w.parent for w in wheels] == [earlier, earlier]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dist"]  # no building or old folder left beside it


def test_packaging_a_bundle_refuses_a_folder_that_is_not_a_bundle_before_any_work(tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from taxi_fares_mlops.outputs import ForeignOutputError
    from taxi_fares_mlops.serving.package import package

    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "report.pdf").write_text("mine")
    with pytest.raises(ForeignOutputError, match="refusing to replace .* with a serving bundle: .*report.pdf"):
        package(None, None, folder, "taxi_fares", signing_key=Ed25519PrivateKey.generate())  # no Spark, no registry
    assert [p.name for p in folder.iterdir()] == ["report.pdf"]
