"""The lakehouse: one root, known tables only, Delta round trips, errors that name the table."""
import datetime as dt
import json
from pathlib import Path

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from taxi_fares_mlops.errors import StorageError
from taxi_fares_mlops.storage import PICKUP_FEATURES, PREDICTIONS, QUARANTINED_TRIPS, RAW_TRIPS, Lakehouse, default_root


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


def test_timestamps_are_written_as_int64_microseconds_as_on_databricks(spark, lakehouse):
    import pyarrow.parquet as pq

    df = spark.createDataFrame([(dt.datetime(2016, 1, 1, 12, 0, 0, 123456),)], "ts timestamp")
    lakehouse.write(df, RAW_TRIPS)
    files = list(Path(lakehouse.table_path(RAW_TRIPS)).glob("*.parquet"))
    assert files and {pq.ParquetFile(f).schema.column(0).physical_type for f in files} == {"INT64"}
    assert lakehouse.read(spark, RAW_TRIPS).first()["ts"] == dt.datetime(2016, 1, 1, 12, 0, 0, 123456)


def _added_files_stats(table_path: str) -> list[dict]:
    log = sorted(Path(table_path, "_delta_log").glob("*.json"))[-1]
    actions = [json.loads(line) for line in log.read_text().splitlines()]
    return [json.loads(a["add"]["stats"]) for a in actions if "add" in a]


def test_replace_range_replaces_only_the_range_and_keeps_statistics_for_the_named_columns(spark, lakehouse):
    schema = "ts timestamp, value double, label string"
    # One file holds both days, so replacing one rewrites the file: the other day's row is copied, not written.
    old = spark.createDataFrame([(dt.datetime(2016, 1, 1, 12), 1.0, "old"), (dt.datetime(2016, 1, 2, 12), 2.0, "old")],
                                schema).coalesce(1)
    assert lakehouse.replace_range(spark, old, PREDICTIONS, "ts", dt.datetime(2016, 1, 1), dt.datetime(2016, 1, 3),
                                   stats_columns=["ts", "value"]) == 2
    new = spark.createDataFrame([(dt.datetime(2016, 1, 2, 6), 3.0, "new")], schema)
    assert lakehouse.replace_range(spark, new, PREDICTIONS, "ts", dt.datetime(2016, 1, 2), dt.datetime(2016, 1, 3),
                                   stats_columns=["ts", "value"]) == 1
    assertDataFrameEqual(lakehouse.read(spark, PREDICTIONS), spark.createDataFrame(
        [(dt.datetime(2016, 1, 1, 12), 1.0, "old"), (dt.datetime(2016, 1, 2, 6), 3.0, "new")], schema))
    # No min/max for the label: statistics cost every written row an update (a copy, for a string).
    stats = _added_files_stats(lakehouse.table_path(PREDICTIONS))
    assert stats and all(set(s["minValues"]) == {"ts", "value"} for s in stats)
    # Extra columns of a type Delta keeps no statistics for are left out rather than failing the write.
    extra = new.selectExpr("*", "true AS flag", "array(1, 2) AS tags", "value AS `value.copy`")
    assert lakehouse.replace_range(spark, extra, QUARANTINED_TRIPS, "ts", dt.datetime(2016, 1, 2),
                                   dt.datetime(2016, 1, 3), stats_columns=extra.columns) == 1
    assert set(_added_files_stats(lakehouse.table_path(QUARANTINED_TRIPS))[0]["minValues"]) == {
        "ts", "value", "label", "value.copy"}
    # The range as typed literals: Delta checks the condition on every written row without constant folding,
    # and a string literal would be parsed into a timestamp (or a date) once per row.
    history = spark.sql(f"DESCRIBE HISTORY delta.`{lakehouse.table_path(PREDICTIONS)}` LIMIT 1").first()
    assert history["operationParameters"]["predicate"] == (
        "`ts` >= TIMESTAMP '2016-01-02 00:00:00' AND `ts` < TIMESTAMP '2016-01-03 00:00:00'")
