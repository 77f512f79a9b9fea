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
