"""The local session: after the first start resolved the Delta package with Ivy, later starts (every job run,
the Connect server) use the jar files it resolved: no Ivy run, no resolution report on the console."""
from pathlib import Path

from taxi_fares_mlops.spark import delta_package, local_conf, resolved_jars


def test_later_sessions_use_the_jars_the_first_one_resolved(spark):
    jars = resolved_jars()
    artifact = delta_package().split(":")[1]  # delta-spark_<spark>_2.13
    assert any(Path(j).name.startswith(f"io.delta_{artifact}-") for j in jars), jars
    assert all(Path(j.removeprefix("file:")).exists() for j in jars)
    conf = local_conf()
    assert conf["spark.jars"].split(",") == jars
    assert "spark.jars.packages" not in conf


def test_a_local_driver_maps_the_classes_mlops_warm_recorded(tmp_path):
    """`mlops warm` (make test runs it first; here it only checks) leaves an archive that a new local driver maps:
    Spark's own classes come from it, not from the jars."""
    import os
    import subprocess
    import sys

    from taxi_fares_mlops.spark import JAVA_OPTIONS_ENV, class_archive

    subprocess.run([str(Path(sys.executable).parent / "mlops"), "warm"], check=True, capture_output=True)
    assert class_archive().exists()
    log = tmp_path / "classes.log"
    env = {**os.environ, JAVA_OPTIONS_ENV: f"-Xlog:class+load=info:file={log}"}
    subprocess.run([sys.executable, "-c", "from taxi_fares_mlops.spark import get_spark; "
                    "get_spark().range(3).count()"], env=env, check=True, capture_output=True, timeout=300)
    sources = {line.split(" source: ")[0].split()[-1]: line.split(" source: ")[1]
               for line in log.read_text().splitlines() if " source: " in line}
    assert sources["org.apache.spark.SparkContext"] == "shared objects file (top)", sources.get(
        "org.apache.spark.SparkContext")
    assert sources["io.delta.sql.DeltaSparkSessionExtension"] == "shared objects file (top)"
