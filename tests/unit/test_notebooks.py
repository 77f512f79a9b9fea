"""Notebook source format, and the local kernel running a notebook the way Databricks does."""
import json

import pytest

from orchestrator.local import notebook as nb
from orchestrator.local.dbutils import SecretNotFound, secret_variable
from orchestrator.local.kernel import Kernel, PipError, expand
from orchestrator.paths import NOTEBOOKS_DIR


@pytest.mark.parametrize("path", sorted(NOTEBOOKS_DIR.glob("*.py")), ids=lambda p: p.name)
def test_orchestrator_notebooks_follow_the_format(path):
    text = path.read_text()
    assert text.splitlines()[0] == nb.HEADER
    cells = nb.load(path)
    kinds = [c.magic for c in cells]
    assert kinds[0] == "md", "the first cell is a header listing the parameters"
    assert "pip" in kinds
    pip = cells[kinds.index("pip")]
    assert pip.magic_args.split() == ["install", "$ml_wheel", "$mlops_wheel"]
    after_pip = [c.source for c in cells[kinds.index("pip") + 1:]]
    assert after_pip[0].strip() == "dbutils.library.restartPython()"
    assert "run_job(" in after_pip[1] and "from_widgets(dbutils)" in after_pip[1]
    assert after_pip[-1].strip() == "dbutils.notebook.exit(json.dumps(summary))"
    code = "\n".join(c.source for c in cells if c.magic is None)
    assert "taxi_fares.features" not in code and "toPandas" not in code, "no logic in notebooks"


def test_parser_splits_cells_titles_and_magics():
    text = "\n".join([
        nb.HEADER, "# MAGIC %md", "# MAGIC # Title", "", nb.SEPARATOR,
        "# DBTITLE 1,Set up", "x = 1", nb.SEPARATOR,
        "# MAGIC %pip install a b", nb.SEPARATOR, "", nb.SEPARATOR, "y = x + 1",
    ])
    cells = nb.parse(text)
    assert [(c.magic, c.title) for c in cells] == [("md", None), (None, "Set up"), ("pip", None), (None, None)]
    assert cells[1].source == "x = 1\n"
    assert cells[2].magic_args == "install a b"


def test_a_file_without_the_header_is_refused():
    with pytest.raises(nb.NotebookFormatError, match="first line"):
        nb.parse("print(1)\n")


def _write(tmp_path, name, *cells):
    path = tmp_path / f"{name}.py"
    path.write_text("\n# COMMAND ----------\n".join([nb.HEADER + "\n" + cells[0], *cells[1:]]) + "\n")
    return path


def test_kernel_runs_widgets_state_restart_and_exit(tmp_path, monkeypatch):
    monkeypatch.setenv(secret_variable("scope-a", "api.key"), "s3cret")
    path = _write(
        tmp_path, "job",
        'dbutils.widgets.text("n", "1", "N")\ndbutils.widgets.dropdown("flag", "false", ["true", "false"], "F")',
        "import json\nstate = int(dbutils.widgets.get('n')) * 2",
        "dbutils.library.restartPython()",
        "assert 'state' not in globals()\nsecret = dbutils.secrets.get('scope-a', 'api.key')",
        "import json\ndbutils.notebook.exit(json.dumps({'n': dbutils.widgets.get('n'), "
        "'flag': dbutils.widgets.get('flag'), 'secret_len': len(secret)}))",
        "raise AssertionError('cells after exit must not run')",
    )
    value = Kernel().run(path, {"n": "21"})
    assert json.loads(value) == {"n": "21", "flag": "false", "secret_len": 6}


def test_kernel_runs_child_notebooks_relative_to_the_parent(tmp_path):
    _write(tmp_path, "child", "dbutils.notebook.exit('child saw ' + dbutils.widgets.get('x'))")
    parent = _write(tmp_path, "parent", "dbutils.notebook.exit(dbutils.notebook.run('./child', 60, {'x': '7'}))")
    assert Kernel().run(parent, {}) == "child saw 7"


def test_child_notebooks_run_on_the_parents_spark_in_a_session_of_their_own(tmp_path, spark):
    """As on a Databricks cluster: the child's process attaches to the parent's Spark application (no Spark start
    of its own), with its own session settings; what it writes, the parent reads."""
    out = tmp_path / "child-table"
    _write(tmp_path, "child",
           "import json\nspark.range(3).write.format('delta').save(dbutils.widgets.get('out'))\n"
           "dbutils.notebook.exit(json.dumps([spark.sparkContext.applicationId, "
           "spark.conf.get('spark.sql.shuffle.partitions')]))")
    parent = _write(tmp_path, "parent",
                    f"spark.conf.set('spark.sql.shuffle.partitions', '3')\n"
                    f"dbutils.notebook.exit(dbutils.notebook.run('./child', 60, {{'out': '{out}'}}))")
    shuffle = spark.conf.get("spark.sql.shuffle.partitions")
    try:
        application, child_shuffle = json.loads(Kernel().run(parent, {}))
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", shuffle)
    assert application == spark.sparkContext.applicationId
    assert child_shuffle == shuffle  # the parent's session setting stayed in the parent's session
    assert sorted(r.id for r in spark.read.format("delta").load(str(out)).collect()) == [0, 1, 2]


def test_undefined_widget_and_secret_fail_like_databricks(tmp_path):
    with pytest.raises(Exception, match="No input widget named missing"):
        Kernel().run(_write(tmp_path, "w", "dbutils.widgets.get('missing')"), {})
    with pytest.raises(SecretNotFound, match="scope: s and key: k"):
        Kernel().run(_write(tmp_path, "s", "dbutils.secrets.get('s', 'k')"), {})


def test_pip_expands_notebook_variables_and_reports_failures(tmp_path):
    assert expand("install $a ${b}", {"a": "x.whl", "b": "y.whl"}) == "install x.whl y.whl"
    with pytest.raises(NameError, match=r"\$nope"):
        expand("install $nope", {})
    path = _write(tmp_path, "pip", "wheel = '/does/not/exist.whl'", "# MAGIC %pip install $wheel")
    with pytest.raises(PipError, match="pip install failed") as excinfo:
        Kernel().run(path, {})
    assert "/does/not/exist.whl" in str(excinfo.value)  # the failure names what pip could not install


def test_unsupported_magic_is_named(tmp_path):
    with pytest.raises(nb.NotebookFormatError, match="does not support %sql"):
        Kernel().run(_write(tmp_path, "sql", "# MAGIC %sql\n# MAGIC SELECT 1"), {})


def test_a_shared_local_cluster_lends_a_running_spark_and_leaves_it_running(spark):
    from orchestrator.local import cluster, runner

    with runner.local_cluster() as shared:
        assert shared == cluster.sharing_environment(spark)
    assert spark.range(3).count() == 3  # not stopped: this process had it before the block


@pytest.mark.parametrize("path", sorted(NOTEBOOKS_DIR.glob("*.py")), ids=lambda p: p.name)
def test_a_wheel_other_than_the_deployed_one_is_refused_before_pip(path, tmp_path):
    """A job that still declares a wheel parameter at job level (an old deployment, an edited job) lets a run
    override the base parameter: the notebook compares it with the deployed policy and stops before %pip."""
    policy = json.dumps({"target": "prod", "wheel_base_path": "/Volumes/prod/taxi_fares/wheels",
                         "wheel_version": "1.2.3"})
    marker = tmp_path / "pip-ran"
    cells = nb.load(path)
    pip_at = [c.magic for c in cells].index("pip")
    # the notebook's cells up to %pip, then a cell that would show %pip was reached
    text = path.read_text().split(nb.SEPARATOR)[:pip_at] + [f"\nopen({str(marker)!r}, 'w').close()\n"]
    copy = tmp_path / path.name
    copy.write_text(nb.SEPARATOR.join(text))
    params = {"wheel_base_path": "/Volumes/prod/taxi_fares/wheels", "wheel_version": "6.6.6",
              "target_policy": policy}
    with pytest.raises(ValueError, match="wheel_version '6.6.6' is not the deployed '1.2.3': the wheels are fixed "
                                         "at deploy time; redeploy"):
        Kernel().run(copy, params)
    assert not marker.exists()
    Kernel().run(copy, {**params, "wheel_version": "1.2.3"})
    assert marker.exists()
