"""Code provenance from built wheels: `mlops build` (the ``dist`` fixture) stamps the MLOps wheel with the commit
it was built from, inside the bytes SHA256SUMS covers; code running from the installed wheels records that commit
and each wheel's SHA-256 as SHA256SUMS lists it beside the file pip installed, and says so plainly when SHA256SUMS
is missing or lists another digest."""
import base64
import hashlib
import json
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from orchestrator.build import wheel_names
from orchestrator.paths import REPO_ROOT, project_version
from taxi_fares_mlops import provenance

STAMP = "taxi_fares_mlops/_build_info.json"


def _build_info(dist: Path) -> dict:
    with zipfile.ZipFile(dist / wheel_names(project_version())[1]) as wheel:
        return json.loads(wheel.read(STAMP))


def _sums(folder: Path) -> dict:
    return dict(reversed(line.split()) for line in (folder / "SHA256SUMS").read_text().splitlines())


def _install(wheels: list, env: Path) -> Path:
    """The wheels pip-installed (without their dependencies: provenance needs none) into an empty environment."""
    venv.EnvBuilder(with_pip=False, clear=True).create(env)
    python = env / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-compile", *map(str, wheels)], check=True, capture_output=True)
    return python


def _code_tags(python: Path, cwd: Path) -> dict:
    code = "import json; from taxi_fares_mlops.provenance import code_tags; print(json.dumps(code_tags('', '')))"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True, cwd=cwd)
    return json.loads(done.stdout)


def test_the_mlops_wheel_carries_the_commit_it_was_built_from(dist):
    info = _build_info(dist)
    # the build's commit: HEAD then, HEAD now or an ancestor of it (others may commit while the suite runs)
    assert subprocess.run(["git", "-C", str(REPO_ROOT), "merge-base", "--is-ancestor", info["git_commit"], "HEAD"]
                          ).returncode == 0
    assert isinstance(info["git_dirty"], bool) and info["built_at"].endswith("+00:00")
    wheel = dist / wheel_names(project_version())[1]
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        record = zf.read(names[-1]).decode().splitlines()
        data = zf.read(STAMP)
    assert names[-1].endswith(".dist-info/RECORD") and names.count(STAMP) == 1
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    assert f"{STAMP},sha256={digest},{len(data)}" in record  # pip's record of the installed files holds it
    assert _sums(dist)[wheel.name] == hashlib.sha256(wheel.read_bytes()).hexdigest()  # the digest covers the stamp


def test_code_from_installed_wheels_records_the_stamp_and_the_listed_digests(dist, tmp_path):
    info, sums = _build_info(dist), _sums(dist)
    python = _install([dist / name for name in wheel_names(project_version())], tmp_path / "env")
    tags = _code_tags(python, tmp_path)
    assert tags[provenance.GIT_COMMIT] == info["git_commit"]
    assert tags[provenance.GIT_DIRTY] == str(info["git_dirty"]).lower()
    assert tags[provenance.CODE_SOURCE] == f"wheel built {info['built_at']}"
    for distribution, wheel in zip(provenance.DISTRIBUTIONS, wheel_names(project_version())):
        assert tags[provenance.wheel_version_tag(distribution)] == project_version()
        assert tags[provenance.wheel_sha256_tag(distribution)] == sums[wheel]
    assert (tags[provenance.JOB_ID], tags[provenance.RUN_ID]) == ("local", "local")


def test_a_missing_or_disagreeing_sha256sums_is_said_plainly(dist, tmp_path):
    bare = tmp_path / "wheels"
    bare.mkdir()
    names = wheel_names(project_version())
    for name in names:
        shutil.copy2(dist / name, bare / name)
    python = _install([bare / name for name in names], tmp_path / "env")
    digests = {name: hashlib.sha256((bare / name).read_bytes()).hexdigest() for name in names}

    tags = _code_tags(python, tmp_path)
    for distribution, name in zip(provenance.DISTRIBUTIONS, names):
        assert tags[provenance.wheel_sha256_tag(distribution)] == (
            f"unlisted: no SHA256SUMS beside {bare / name} (installed sha256 {digests[name]})")

    (bare / "SHA256SUMS").write_text("".join(f"{'0' * 64}  {name}\n" for name in names))
    tags = _code_tags(python, tmp_path)
    for distribution, name in zip(provenance.DISTRIBUTIONS, names):
        assert tags[provenance.wheel_sha256_tag(distribution)] == (
            f"MISMATCH: installed {digests[name]}, SHA256SUMS lists {'0' * 64}")


@pytest.fixture(autouse=True)
def _no_stamp_in_the_sources():
    """The stamp lives in built wheels only: one left in the sources would make every editable run claim it."""
    yield
    assert not (REPO_ROOT / "ml_ops" / STAMP).exists()
