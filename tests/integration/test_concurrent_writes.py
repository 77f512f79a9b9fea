"""Jobs of overlapping ranges started together write the same Delta tables: feature engineering MERGEs into the
feature tables (training and scoring both run it), replaces ranges of ``quarantined_trips``, scoring and monitoring
replace ranges of theirs. Delta refuses a commit that conflicts with one made since it read the table; the
lakehouse runs such a write again, with backoff, and names the table when it gives up (docs/failure-behaviour.md,
"Concurrency"). Real writers: threads on the shared Spark session, through ``Lakehouse``."""
import datetime as dt
from concurrent.futures import ThreadPoolExecutor

import pytest
from pyspark.sql import functions as F

from taxi_fares_mlops import storage
from taxi_fares_mlops.errors import StorageError
from taxi_fares_mlops.storage import PICKUP_FEATURES, QUARANTINED_TRIPS

DAY = dt.datetime(2016, 1, 4)
WRITERS = 4


def _together(work, count=WRITERS):
    """Run ``work(i)`` for each writer at once; the results, or the exceptions, in writer order."""
    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = [pool.submit(work, i) for i in range(count)]
    results = []
    for future in futures:
        try:
            results.append(future.result())
        except Exception as exc:  # collected, so the test can say which writers failed and why
            results.append(exc)
    return results


def _features(spark, writer, first_hour, hours):
    """Feature-table rows (zip, ts) of ``hours`` hours from ``first_hour``, their value naming the writer."""
    return (spark.range(first_hour, first_hour + hours).select(
        F.lit(10001).alias("zip"),
        (F.lit(DAY) + F.make_interval(hours=F.col("id").cast("int"))).alias("ts"),
        F.lit(float(writer)).alias("mean_fare")))


def test_overlapping_merges_into_a_missing_feature_table_all_succeed(spark, lakehouse):
    # each writer's hours overlap the next one's; the table does not exist yet, so they also race to create it
    def merge(writer):
        return lakehouse.merge(spark, _features(spark, writer, writer * 6, 12), PICKUP_FEATURES, ("zip", "ts"))

    results = _together(merge)
    assert [r for r in results if isinstance(r, Exception)] == []
    table = lakehouse.read(spark, PICKUP_FEATURES)
    assert table.count() == table.select("zip", "ts").distinct().count() == (WRITERS - 1) * 6 + 12
    assert sum(r["inserted"] for r in results) == (WRITERS - 1) * 6 + 12  # each key inserted once, by someone


def _quarantined(spark, writer, start, days):
    return spark.range(days * 24).select(
        (F.lit(start) + F.make_interval(hours=F.col("id").cast("int"))).alias("tpep_pickup_datetime"),
        F.lit(f"writer {writer}").alias("mlflow_run_id"))


def _replace_overlapping_ranges(spark, lakehouse):
    def replace(writer):
        start = DAY + dt.timedelta(days=writer)  # ranges of 3 days, each overlapping the next two
        end = start + dt.timedelta(days=3)
        return lakehouse.replace_range(spark, _quarantined(spark, writer, start, 3), QUARANTINED_TRIPS,
                                       "tpep_pickup_datetime", start, end)

    lakehouse.write(_quarantined(spark, "old", DAY, WRITERS + 2), QUARANTINED_TRIPS)
    return _together(replace)


def test_overlapping_range_replacements_all_succeed_and_leave_one_row_per_hour(spark, lakehouse):
    results = _replace_overlapping_ranges(spark, lakehouse)
    assert [r for r in results if isinstance(r, Exception)] == []
    table = lakehouse.read(spark, QUARANTINED_TRIPS)
    hours = table.groupBy("tpep_pickup_datetime").count()
    assert hours.count() == (WRITERS + 2) * 24 and hours.filter("count > 1").count() == 0
    # every hour is some writer's (the last to replace it); the first day only writer 0 replaces
    assert {r["mlflow_run_id"] for r in table.collect()} <= {f"writer {w}" for w in range(WRITERS)}
    first_day = table.filter(F.col("tpep_pickup_datetime") < DAY + dt.timedelta(days=1))
    assert {r["mlflow_run_id"] for r in first_day.collect()} == {"writer 0"}


def test_a_writer_that_keeps_conflicting_gives_up_naming_the_table(spark, lakehouse, monkeypatch):
    monkeypatch.setattr(storage, "CONFLICT_ATTEMPTS", 1)  # no retry: the conflicts Delta raises come through
    failures = [r for r in _replace_overlapping_ranges(spark, lakehouse) if isinstance(r, Exception)]
    assert failures, "no writer met a conflict: the test did not test anything"
    for failure in failures:
        assert isinstance(failure, StorageError)
        assert str(failure).startswith(
            f"could not replace a range of table 'quarantined_trips' at {lakehouse.root}/tables/quarantined_trips: "
            "gave up after 1 attempts, each in conflict with another writer of the table (the last: ")
        assert "Concurrent" in str(failure) or "DELTA_" in str(failure)


@pytest.mark.parametrize("marker", ["ConcurrentAppendException", "DELTA_CONCURRENT_APPEND", "ProtocolChangedException",
                                    "DELTA_PATH_EXISTS"])
def test_what_counts_as_a_conflict(marker):
    wrapped = StorageError("could not merge into table 'x'")
    wrapped.__cause__ = RuntimeError(f"[{marker}] Files were added by a concurrent update")
    assert storage._conflict(wrapped)
    assert not storage._conflict(StorageError("could not write table 'x': No space left on device"))


def test_a_table_created_by_another_writer_after_the_check_is_merged_into_not_overwritten(spark, lakehouse):
    # The race the threads above rarely hit: another writer creates the table between this writer's existence
    # check and its create. The check is made to answer as it would have a moment earlier; the tables are real.
    class CheckedJustBefore(storage.Lakehouse):
        answered = False

        def exists(self, spark, table):
            if not self.answered:
                self.answered = True
                return False
            return super().exists(spark, table)

    lakehouse.write(_features(spark, 1, 0, 12), PICKUP_FEATURES)  # the other writer's table
    late = CheckedJustBefore(lakehouse.root)
    assert late.merge(spark, _features(spark, 2, 6, 12), PICKUP_FEATURES, ("zip", "ts")) == {
        "inserted": 6, "updated": 6}
    table = lakehouse.read(spark, PICKUP_FEATURES)
    assert table.count() == 18 and table.filter("mean_fare = 1.0").count() == 6
