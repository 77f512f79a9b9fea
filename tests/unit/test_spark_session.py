"""The local session: after the first start resolved the Delta package with Ivy, later starts (every job run,
the Connect server) use the jar files it resolved: no Ivy run, no resolution report on the console. Its Python
workers import pyspark from site-packages, not from Spark's archives. And a stage's tuning settings
(``session_conf``): applied for its block, then the session's own values back."""
import logging
from pathlib import Path

import pytest

from orchestrator.local.spark import local_conf, resolved_jars
from taxi_fares_mlops.spark import delta_package, session_conf


def test_later_sessions_use_the_jars_the_first_one_resolved(spark):
    jars = resolved_jars()
    artifact = delta_package().split(":")[1]  # delta-spark_<spark>_2.13
    assert any(Path(j).name.startswith(f"io.delta_{artifact}-") for j in jars), jars
    assert all(Path(j.removeprefix("file:")).exists() for j in jars)
    conf = local_conf()
    assert conf["spark.jars"].split(",") == jars
    assert "spark.jars.packages" not in conf


@pytest.mark.slow
def test_a_local_driver_maps_the_classes_mlops_warm_recorded(tmp_path):
    """`mlops warm` (make test runs it first; here it only checks) leaves an archive that a new local driver maps:
    Spark's own classes come from it, not from the jars."""
    import os
    import subprocess
    import sys

    from orchestrator.local.spark import JAVA_OPTIONS_ENV, class_archive

    subprocess.run([str(Path(sys.executable).parent / "mlops"), "warm"], check=True, capture_output=True)
    assert class_archive().exists()
    log = tmp_path / "classes.log"
    env = {**os.environ, JAVA_OPTIONS_ENV: f"-Xlog:class+load=info:file={log}"}
    subprocess.run([sys.executable, "-c", "from orchestrator.local.spark import tuned_session; "
                    "tuned_session('t').range(3).count()"], env=env, check=True, capture_output=True, timeout=300)
    sources = {line.split(" source: ")[0].split()[-1]: line.split(" source: ")[1]
               for line in log.read_text().splitlines() if " source: " in line}
    assert sources["org.apache.spark.SparkContext"] == "shared objects file (top)", sources.get(
        "org.apache.spark.SparkContext")
    assert sources["io.delta.sql.DeltaSparkSessionExtension"] == "shared objects file (top)"


def test_a_pyspark_installed_again_at_the_same_path_gets_an_archive_of_its_own(tmp_path, monkeypatch):
    """The JVM refuses an archive once a jar on its class path has another modification time, and pip stamps jars
    with their install time: a virtualenv made again where the last one was (a clean clone in the same folder) must
    not find the old archive "up to date"."""
    import os

    import pyspark

    from orchestrator.local.spark import class_archive

    jar = tmp_path / "pyspark" / "jars" / "spark-core_2.13-4.1.0.jar"
    jar.parent.mkdir(parents=True)
    jar.write_bytes(b"classes")
    monkeypatch.setattr(pyspark, "__file__", str(tmp_path / "pyspark" / "__init__.py"))
    first = class_archive()
    assert class_archive() == first  # the same jars: the same archive
    os.utime(jar, ns=(jar.stat().st_atime_ns, jar.stat().st_mtime_ns + 1_000_000_000))
    again = class_archive()
    assert again != first
    assert again.parent == first.parent
    assert again.name.rsplit("-", 1)[0] == first.name.rsplit("-", 1)[0]  # the same installation path


def test_recording_an_archive_removes_the_ones_its_installation_can_no_longer_map(tmp_path):
    from orchestrator.local.spark import _remove_superseded_archives

    names = ["mlops-classes-aaaa-0001.jsa", "mlops-classes-aaaa-0002.jsa", "mlops-classes-aaaa.jsa",
             "mlops-classes-bbbb-0001.jsa", "mlops-classes-bbbb.jsa", "mlops-io.delta_delta-spark_4.1_2.13_4.3.1.jars"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    _remove_superseded_archives(tmp_path / "mlops-classes-aaaa-0002.jsa")
    # the same installation's older archives go (the one named before names carried the jars' times too)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        set(names) - {"mlops-classes-aaaa-0001.jsa", "mlops-classes-aaaa.jsa"})


def test_a_setting_the_session_refuses_is_left_as_it_was_and_the_block_runs_with_the_others(spark, caplog):
    # A static setting is refused at runtime by every session, as serverless compute refuses most settings.
    static, tuning = "spark.sql.extensions", "spark.sql.execution.arrow.maxRecordsPerBatch"
    extensions, batch = spark.conf.get(static), spark.conf.get(tuning)
    with caplog.at_level(logging.WARNING, logger="taxi_fares_mlops.spark"):
        with session_conf(spark, {static: "com.example.Nothing", tuning: "1234"}):
            assert spark.conf.get(tuning) == "1234"
            assert spark.conf.get(static) == extensions
            assert spark.range(3).count() == 3
    assert spark.conf.get(tuning) == batch
    assert spark.conf.get(static) == extensions
    refused = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(refused) == 1 and refused[0].startswith(f"Spark setting {static}=com.example.Nothing refused"), refused


def test_python_workers_import_pyspark_from_site_packages_and_hold_no_archive_to_reread_per_task(spark):
    # Before every task a worker calls importlib.invalidate_caches(), which re-reads each zip archive an import
    # looked into (0.16 s per task with Spark's three archives: 200 small tasks took 16-17 s instead of 7).
    import pyspark

    def worker_imports(_):  # defined here so that it travels by value: the workers cannot import this file
        import sys
        import zipimport

        import pyspark
        cache = sys.path_importer_cache
        yield pyspark.__file__, sorted(path for path, finder in cache.items()
                                       if isinstance(finder, zipimport.zipimporter))

    [(worker_pyspark, archives)] = spark.sparkContext.parallelize([0], 1).mapPartitions(worker_imports).collect()
    assert worker_pyspark == pyspark.__file__ and ".zip" not in worker_pyspark, worker_pyspark
    assert archives == [], archives


def test_the_daemon_drops_only_the_archives_inside_spark_home_and_their_importers(tmp_path, monkeypatch):
    import sys
    import zipfile
    import zipimport

    from orchestrator.local.pyspark_daemon import drop_spark_archives

    home, packages, user = tmp_path / "pyspark", tmp_path / "site-packages", tmp_path / "user"
    for folder in (home / "python/lib", home / "jars", packages / "pyspark", packages / "py4j", user):
        folder.mkdir(parents=True)
    for package in ("pyspark", "py4j"):
        (packages / package / "__init__.py").write_text("")
    archives = [home / "python/lib/pyspark.zip", home / "python/lib/py4j-0.10.9.9-src.zip", home / "jars/core.jar",
                user / "mine.zip", user / "mine.jar"]
    for archive in archives:
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("x.py", "")
    spark_zip = str(archives[0])
    monkeypatch.setenv("SPARK_HOME", str(home))
    monkeypatch.setattr(sys, "path", [*map(str, archives), str(packages)])
    monkeypatch.setattr(sys, "path_importer_cache", {spark_zip: zipimport.zipimporter(spark_zip),
                                                     f"{spark_zip}/pyspark": zipimport.zipimporter(spark_zip),
                                                     str(archives[3]): zipimport.zipimporter(str(archives[3]))})
    assert drop_spark_archives() == [str(a) for a in archives[:3]]
    assert sys.path == [str(archives[3]), str(archives[4]), str(packages)]
    assert list(sys.path_importer_cache) == [str(archives[3])]
    # a pyspark only in Spark's archives (no installed package): nothing is dropped
    (packages / "pyspark" / "__init__.py").unlink()
    monkeypatch.setattr(sys, "path", [spark_zip, str(packages)])
    assert drop_spark_archives() == [] and sys.path == [spark_zip, str(packages)]


@pytest.mark.slow
def test_a_session_the_wheel_starts_in_a_local_job_takes_the_operator_tools_tuning(tmp_path):
    """A local job's notebook starts Spark through the wheel (``get_spark``); the kernel's environment names the
    tuning the operator tool keeps (``MLOPS_SPARK_CONF_FILE``), and the session carries it."""
    import json
    import os
    import subprocess
    import sys

    from orchestrator.local.spark import DAEMON_MODULE, write_conf_file

    conf_file = write_conf_file(tmp_path / "conf")
    probe = ("import json; from taxi_fares_mlops.spark import get_spark; "
             "c = get_spark('probe').sparkContext.getConf(); "
             "print(json.dumps({k: c.get(k, None) for k in ('spark.python.daemon.module', 'spark.jars.packages', "
             "'spark.ui.enabled', 'spark.sql.session.timeZone')}))")
    env = {**os.environ, "MLOPS_SPARK_CONF_FILE": str(conf_file)}
    out = subprocess.run([sys.executable, "-c", probe], env=env, check=True, capture_output=True, text=True,
                         timeout=300).stdout.strip().splitlines()[-1]
    assert json.loads(out) == {"spark.python.daemon.module": DAEMON_MODULE, "spark.jars.packages": None,
                               "spark.ui.enabled": "false", "spark.sql.session.timeZone": "UTC"}
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    refused = subprocess.run([sys.executable, "-c", probe], env={**env, "MLOPS_SPARK_CONF_FILE": str(bad)},
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and f"MLOPS_SPARK_CONF_FILE={bad}: expected a JSON object" in refused.stderr
