"""Incremental scoring on a Delta stream of raw_trips: the same predictions as the batch job whatever the commits'
shapes, a replayed micro-batch that changes nothing, an upstream schema change and another owner's checkpoint
refused by name. One champion (trained once for the module) scores every stream."""
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from taxi_fares.schema import DROPOFF_TS, PICKUP_TS, valid_rows
from taxi_fares_mlops.config import SCORING_STREAM_PARAMETERS, ScoringStreamConfig
from taxi_fares_mlops.errors import StageError
from taxi_fares_mlops.jobs import run_job
from taxi_fares_mlops.stages.batch_scoring import SCORING_CONF
from taxi_fares_mlops.storage import (DROPOFF_FEATURES, PICKUP_FEATURES, PREDICTIONS, QUARANTINED_TRIPS, RAW_TRIPS,
                                      Lakehouse)
from taxi_fares_mlops.telemetry import read_local

pytestmark = pytest.mark.slow

# A few days of the module's two weeks of trips: what every stream below receives, in commits of several shapes.
START, END = dt.datetime(2016, 1, 11), dt.datetime(2016, 1, 13)
# Columns that say which run wrote a row and when: the only ones a stream's rows and the batch's may differ in.
RUN_COLUMNS = ("mlflow_run_id", "scored_at")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One lakehouse and MLflow store for the module: the champion is trained once, by the first test."""
    return tmp_path_factory.mktemp("streaming")


@pytest.fixture
def trips_lakehouse(spark, lakehouse):
    """Five days of trips, written once for the module: enough for a champion, and its features cover every trip
    the streams score."""
    from taxi_fares.synthetic import generate_trips

    if not lakehouse.exists(spark, RAW_TRIPS):
        lakehouse.write(generate_trips(spark, 5000, "2016-01-10", "2016-01-15", seed=5), RAW_TRIPS)
    return lakehouse


@pytest.fixture
def champion(spark, trips_lakehouse, mlflow_store, training_config):
    trained = MlflowClient().search_registered_models("name = 'taxi_fares'")
    if not (trained and "champion" in trained[0].aliases):
        run_job(training_config(max_iter=5, start_date="2016-01-10", end_date="2016-01-15", execute_promotion=True),
                spark)
    return trips_lakehouse


@pytest.fixture
def stream_lakehouse(spark, champion, tmp_path):
    """A lakehouse of its own with the champion's feature tables and no trips yet: commits are the test's."""
    lakehouse = Lakehouse(str(tmp_path / "stream-lakehouse"))
    for table in (PICKUP_FEATURES, DROPOFF_FEATURES):
        lakehouse.write(champion.read(spark, table), table)
    return lakehouse


def stream_config(lakehouse, **changes):
    """The job's config on ``lakehouse``; its features are the test's (copied from the champion's lakehouse, which
    had the trips before the range too) unless ``execute_feature_engineering`` says otherwise."""
    values = {p.name: p.default for p in SCORING_STREAM_PARAMETERS}
    values.update(lakehouse_root=lakehouse.root, mlflow_experiment="tests", execute_feature_engineering="false")
    values.update(changes)
    return ScoringStreamConfig.from_mapping(values)


def trips_between(spark, lakehouse, start, end):
    return lakehouse.read(spark, RAW_TRIPS).filter((F.col(PICKUP_TS) >= start) & (F.col(PICKUP_TS) < end))


def append_and_score(spark, source, lakehouse, bounds):
    """Append the source's trips of each [start, end) of ``bounds`` to the stream's raw_trips as one commit, and run
    the incremental job (available now) after each."""
    summaries = []
    for start, end in bounds:
        lakehouse.write(trips_between(spark, source, start, end), RAW_TRIPS, mode="append")
        summaries.append(run_job(stream_config(lakehouse), spark))
    return summaries


def without_run_columns(df):
    return df.drop(*RUN_COLUMNS)


def test_streaming_in_any_commit_shape_gives_the_batch_predictions(
        spark, champion, stream_lakehouse, tmp_path, scoring_config):
    batch = run_job(scoring_config(start_date="2016-01-11", end_date="2016-01-13",
                                   execute_feature_engineering="false"), spark)
    assert batch["stages"]["batch_scoring"]["rows"] > 1000
    expected = without_run_columns(champion.read(spark, PREDICTIONS).filter(
        (F.col(PICKUP_TS) >= START) & (F.col(PICKUP_TS) < END)))
    day = dt.timedelta(days=1)
    shapes = {
        "all at once": [(START, END)],
        "day by day": [(START, START + day), (START + day, END)],
        # commits that cut days in two: a micro-batch's trips span parts of two days
        "a few small ones": [(START, START + dt.timedelta(hours=20)),
                             (START + dt.timedelta(hours=20), START + dt.timedelta(hours=21)),
                             (START + dt.timedelta(hours=21), END)],
    }
    for index, (shape, bounds) in enumerate(shapes.items()):
        lakehouse = stream_lakehouse if index == 0 else _copy_features(spark, stream_lakehouse, tmp_path / f"s{index}")
        summaries = append_and_score(spark, champion, lakehouse, bounds)
        assert [s["stages"]["streaming_scoring"]["micro_batches"] for s in summaries] == [1] * len(bounds), shape
        assertDataFrameEqual(without_run_columns(lakehouse.read(spark, PREDICTIONS)), expected)
    # a run with nothing new scores nothing and writes nothing
    again = run_job(stream_config(lakehouse), spark)["stages"]["streaming_scoring"]
    assert (again["micro_batches"], again["rows"]) == (0, 0)


def test_features_computed_as_trips_arrive_equal_batch_features_and_a_late_trip_updates_its_windows(
        spark, champion, tmp_path):
    """A lakehouse with no features: the job computes them micro-batch by micro-batch (its default), each the feature
    windows its trips fall in, from raw_trips, with feature engineering's code; after commits of a day before the
    range, then of the range day by day, the features of the range are what batch feature engineering gives, and
    every trip has one prediction. A trip of the first day arriving last updates the windows it falls in; one older
    than the watermark is scored with the features held and counted late."""
    from pyspark.sql import DataFrame

    from taxi_fares.features import dropoff_features, pickup_features

    lakehouse = Lakehouse(str(tmp_path / "incremental"))
    day = dt.timedelta(days=1)

    def batch_features(source: DataFrame) -> dict:
        valid = valid_rows(source)
        return {PICKUP_FEATURES: pickup_features(valid, START, END),
                DROPOFF_FEATURES: dropoff_features(valid, START, END)}

    def held(table):
        return lakehouse.read(spark, table).filter((F.col("ts") >= START) & (F.col("ts") < END))

    source = trips_between(spark, champion, START - day, END)
    bounds = [(START - day, START), (START, START + day), (START + day, END)]
    late = valid_rows(source).filter((F.col(PICKUP_TS) >= START) & (F.col(PICKUP_TS) < START + dt.timedelta(hours=8))
                                     ).orderBy("trip_id").limit(1).collect()[0]
    first_commits = source.filter(F.col("trip_id") != late["trip_id"])
    for start, end in bounds:
        lakehouse.write(first_commits.filter((F.col(PICKUP_TS) >= start) & (F.col(PICKUP_TS) < end)), RAW_TRIPS,
                        mode="append")
        summary = run_job(stream_config(lakehouse, execute_feature_engineering="true"), spark)
        assert summary["stages"]["streaming_scoring"]["feature_rows_merged"] > 0
    expected = batch_features(first_commits)
    for table in (PICKUP_FEATURES, DROPOFF_FEATURES):
        assertDataFrameEqual(held(table), expected[table])

    # the first day's trip arrives last: its windows are recomputed with it, as batch would compute them now
    lakehouse.write(spark.createDataFrame([late], source.schema), RAW_TRIPS, mode="append")
    updated = run_job(stream_config(lakehouse, execute_feature_engineering="true"), spark)["stages"]
    assert (updated["streaming_scoring"]["rows"], updated["streaming_scoring"]["late"]) == (1, 0)
    expected = batch_features(source)
    for table in (PICKUP_FEATURES, DROPOFF_FEATURES):
        assertDataFrameEqual(held(table), expected[table])
    rows = lakehouse.read(spark, PREDICTIONS)
    assert rows.count() == rows.select("trip_id").distinct().count() == valid_rows(source).count()

    # a trip older than the watermark (1 hour before the newest features): scored, its windows left as they were
    older = valid_rows(source).filter(F.col(PICKUP_TS) < START).orderBy("trip_id").limit(1).collect()[0].asDict()
    lakehouse.write(spark.createDataFrame([{**older, "trip_id": 10**9}], source.schema), RAW_TRIPS, mode="append")
    before = lakehouse.read(spark, PICKUP_FEATURES).collect()
    watermarked = run_job(stream_config(lakehouse, execute_feature_engineering="true", feature_watermark_hours="1"),
                          spark)["stages"]["streaming_scoring"]
    assert (watermarked["rows"], watermarked["late"]) == (1, 1)
    assert sorted(lakehouse.read(spark, PICKUP_FEATURES).collect()) == sorted(before)

    # a trip dated years ahead gets windows of its own day, and does not become the newest row the next trips are
    # judged late against (without the cap, a trip of the range's first day would now count as late)
    ahead = {**older, "trip_id": 10**9 + 1, PICKUP_TS: older[PICKUP_TS].replace(year=2030),
             DROPOFF_TS: older[DROPOFF_TS].replace(year=2030)}
    again = {**late.asDict(), "trip_id": 10**9 + 2}
    for trip in (ahead, again):
        lakehouse.write(spark.createDataFrame([trip], source.schema), RAW_TRIPS, mode="append")
        scored = run_job(stream_config(lakehouse, execute_feature_engineering="true"), spark)["stages"]
        assert (scored["streaming_scoring"]["rows"], scored["streaming_scoring"]["late"]) == (1, 0), trip


def _copy_features(spark, source, root):
    lakehouse = Lakehouse(str(root))
    for table in (PICKUP_FEATURES, DROPOFF_FEATURES):
        lakehouse.write(source.read(spark, table), table)
    return lakehouse


def test_a_replayed_micro_batch_changes_nothing(spark, champion, stream_lakehouse, make_trips, monkeypatch):
    """A crash after a micro-batch's writes and before its checkpoint commit: Spark runs the batch again, with the
    same id and trips. Its predictions and quarantined trips are not appended twice, and none is missing."""
    arrow_rows = []  # the Arrow batch size the predictions are written (and the model called) with
    append = Lakehouse.append_once

    def noting(self, df, table, *args, **kwargs):
        if table == PREDICTIONS:
            arrow_rows.append(df.sparkSession.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch"))
        return append(self, df, table, *args, **kwargs)

    monkeypatch.setattr(Lakehouse, "append_once", noting)
    append_and_score(spark, champion, stream_lakehouse, [(START, START + dt.timedelta(hours=12))])
    assert arrow_rows == [SCORING_CONF["spark.sql.execution.arrow.maxRecordsPerBatch"]]  # batch scoring's, not 10k
    # the table the stream created keeps statistics on batch scoring's columns, not on the run's labels
    properties = spark.sql(f"SHOW TBLPROPERTIES delta.`{stream_lakehouse.table_path(PREDICTIONS)}`").collect()
    stats = {r["key"]: r["value"] for r in properties}.get("delta.dataSkippingStatsColumns", "")
    assert "prediction" in stats and "scored_at" in stats and "model_name" not in stats, stats
    invalid = make_trips([("2016-01-11 13:00", "2016-01-11 13:20", 2.0, -5.0, 10001, 10002)])
    stream_lakehouse.write(invalid, RAW_TRIPS, mode="append")
    first = append_and_score(spark, champion, stream_lakehouse, [(START + dt.timedelta(hours=12),
                                                                  START + dt.timedelta(hours=14))])
    assert first[0]["stages"]["streaming_scoring"]["quarantined"] == 1
    predictions = stream_lakehouse.read(spark, PREDICTIONS).count()
    checkpoint = Path(first[0]["stages"]["streaming_scoring"]["checkpoint"])
    last = max(int(p.name) for p in (checkpoint / "commits").iterdir() if p.name.isdigit())
    for name in (str(last), f".{last}.crc"):  # the batch's writes are done, its commit is not
        (checkpoint / "commits" / name).unlink(missing_ok=True)

    summary = run_job(stream_config(stream_lakehouse), spark)
    replayed = summary["stages"]["streaming_scoring"]
    assert (replayed["micro_batches"], replayed["replayed"], replayed["rows"]) == (1, 1, 0)
    # one MLflow run per job run, with its totals; a telemetry span per micro-batch, under the job's, with its counts
    metrics = MlflowClient().get_run(summary["mlflow_run_id"]).data.metrics
    assert (metrics["streaming.micro_batches"], metrics["streaming.replayed"]) == (1.0, 1.0)
    spans = [r for r in read_local(Path(stream_lakehouse.path("runs", summary["mlflow_run_id"], "telemetry.jsonl")))
             if r["type"] == "span"]
    [batch] = [r for r in spans if r["name"] == "micro-batch"]
    assert batch["attributes"]["rows"] == 0 and batch["attributes"]["rows_read"] > 0
    assert batch["parent_id"] in {r["span_id"] for r in spans if r["name"] == "stage streaming_scoring"}
    rows = stream_lakehouse.read(spark, PREDICTIONS)
    assert rows.count() == predictions == trips_between(spark, champion, START, START + dt.timedelta(hours=14)
                                                        ).count() - _invalid(spark, champion)
    assert rows.groupBy("trip_id").count().filter("count > 1").isEmpty()
    assert stream_lakehouse.read(spark, QUARANTINED_TRIPS).filter(F.col("fare_amount") == -5.0).count() == 1


def _invalid(spark, source):
    """The source's invalid trips of the replay test's span (the stream quarantines them; none is expected). From
    the trips themselves: the source's predictions exist only if another test scored them first."""
    trips = trips_between(spark, source, START, START + dt.timedelta(hours=14))
    return trips.count() - valid_rows(trips).count()


def test_an_upstream_schema_change_stops_the_stream_naming_the_column(spark, champion, stream_lakehouse):
    append_and_score(spark, champion, stream_lakehouse, [(START, START + dt.timedelta(hours=6))])
    renamed = stream_lakehouse.read(spark, RAW_TRIPS).withColumnRenamed("fare_amount", "fare")
    stream_lakehouse.write(renamed, RAW_TRIPS)
    with pytest.raises(StageError) as excinfo:
        run_job(stream_config(stream_lakehouse), spark)
    assert "column 'fare_amount': is missing" in str(excinfo.value)


def test_a_checkpoint_of_another_target_is_refused_by_name(spark, champion, stream_lakehouse):
    summary = append_and_score(spark, champion, stream_lakehouse, [(START, START + dt.timedelta(hours=6))])[0]
    marker = Path(summary["stages"]["streaming_scoring"]["checkpoint"]).parent / "owner.json"
    owner = json.loads(marker.read_text())
    assert (owner["target"], owner["model_name"]) == ("local", "taxi_fares")
    marker.write_text(json.dumps({**owner, "target": "prod"}))
    with pytest.raises(StageError) as excinfo:
        run_job(stream_config(stream_lakehouse), spark)
    assert "target 'prod'" in str(excinfo.value) and "not to job 'scoring_stream', target 'local'" in str(excinfo.value)
    shutil.rmtree(marker.parent)  # removing the folder starts over: every trip is scored again, under a new id
    again = run_job(stream_config(stream_lakehouse), spark)["stages"]["streaming_scoring"]
    assert again["rows"] == summary["stages"]["streaming_scoring"]["rows"] > 0


# The job in a process of its own, with the stream config's parameters (JSON) as its argument.
JOB = """
import json, sys
from taxi_fares_mlops.config import ScoringStreamConfig
from taxi_fares_mlops.jobs import run_job
from taxi_fares_mlops.stages.batch_scoring import SCORING_CONF
run_job(ScoringStreamConfig.from_mapping({**ScoringStreamConfig.defaults(), **json.loads(sys.argv[1])}))
"""


def test_a_job_killed_mid_micro_batch_then_rerun_scores_each_trip_once(spark, champion, stream_lakehouse):
    """SIGKILL after a micro-batch's predictions are appended and before its checkpoint commit (no finally, no
    atexit), then the job again: the batch is replayed and skipped, and every trip has one prediction."""
    stream_lakehouse.write(trips_between(spark, champion, START, START + dt.timedelta(hours=6)), RAW_TRIPS)
    env = {**os.environ, "MLOPS_CRASH_AT": "streaming_scoring.after_predictions_append"}
    done = subprocess.run([sys.executable, "-c", JOB, json.dumps({"lakehouse_root": stream_lakehouse.root,
                                                                  "mlflow_experiment": "tests"})],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    appended = stream_lakehouse.read(spark, PREDICTIONS).count()
    assert appended > 0

    # the killed run computed the batch's features first (the job's default), and so does the replay
    again = run_job(stream_config(stream_lakehouse, execute_feature_engineering="true"), spark
                    )["stages"]["streaming_scoring"]
    assert (again["micro_batches"], again["replayed"], again["rows"]) == (1, 1, 0)
    assert again["feature_rows_merged"] == 0  # merged before the kill: the same rows again change nothing
    rows = stream_lakehouse.read(spark, PREDICTIONS)
    trips = valid_rows(trips_between(spark, champion, START, START + dt.timedelta(hours=6))).count()
    assert rows.count() == appended == rows.select("trip_id").distinct().count() == trips
