"""The lakehouse: one root, known tables only, Delta round trips, errors that name the table."""
import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from taxi_fares_mlops.errors import StorageError
from taxi_fares_mlops.storage import PICKUP_FEATURES, RAW_TRIPS, Lakehouse, default_root


def test_every_table_lives_under_the_root(lakehouse):
    assert lakehouse.table_path(RAW_TRIPS) == f"{lakehouse.root}/tables/raw_trips"
    assert lakehouse.table_path(PICKUP_FEATURES).startswith(lakehouse.root + "/")


def test_root_comes_from_mlops_home(monkeypatch, tmp_path):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "elsewhere"))
    assert default_root() == str(tmp_path / "elsewhere")
    assert Lakehouse().root == str(tmp_path / "elsewhere")
    monkeypatch.delenv("MLOPS_HOME")
    monkeypatch.chdir(tmp_path)
    assert default_root() == str(tmp_path / ".mlops")


def test_unknown_table_is_an_error(lakehouse):
    with pytest.raises(StorageError, match="unknown table 'trips'"):
        lakehouse.table_path("trips")


def test_write_then_read_round_trips(spark, lakehouse):
    df = spark.createDataFrame([(1, "a"), (2, "b")], "id long, v string")
    assert not lakehouse.exists(spark, RAW_TRIPS)
    lakehouse.write(df, RAW_TRIPS)
    assert lakehouse.exists(spark, RAW_TRIPS)
    assertDataFrameEqual(lakehouse.read(spark, RAW_TRIPS), df)


def test_reading_a_missing_table_names_it(spark, lakehouse):
    with pytest.raises(StorageError) as excinfo:
        lakehouse.read(spark, PICKUP_FEATURES)
    assert "table 'pickup_features' does not exist at" in str(excinfo.value)
    assert lakehouse.table_path(PICKUP_FEATURES) in str(excinfo.value)


def test_a_failed_write_names_the_table_and_leaves_the_old_data(spark, lakehouse):
    good = spark.createDataFrame([(1, "a")], "id long, v string")
    lakehouse.write(good, RAW_TRIPS)
    explode = F.udf(lambda v: v[10], "string")  # IndexError on the executor, mid-write
    failing = spark.createDataFrame([(1, "x")], "id long, v string").withColumn("v", explode("v"))
    with pytest.raises(StorageError, match="could not write table 'raw_trips'"):
        lakehouse.write(failing, RAW_TRIPS)
    assertDataFrameEqual(lakehouse.read(spark, RAW_TRIPS), good)
