"""The online service's traffic, read back from its inference table (``storage.INFERENCE_REQUESTS``: Databricks'
inference-table columns, written by ``taxi_fares_mlops.serving.inference_log``) with Spark, and the A/B comparison
drawn from it.

``inference_predictions`` turns each answered request into one row per trip: the trip's fields (the batch
column names), the prediction, the version that made it and the variant (``champion``, ``challenger`` or
``shadow``). ``online_scored`` gives the rows one version answered in the shape the monitoring stage reads from
the predictions table (the trip's columns, ``prediction``, ``model_version`` and the fare where it arrived), so
online traffic is monitored as batch predictions are. ``compare_variants`` joins those rows with the fares that
arrived since (``raw_trips``, on the trip's times, zips and distance) and writes, per variant and version, the
trips scored, the trips with a fare, rmse, mae and the mean prediction to ``variant_comparison`` and to an MLflow
run: the two models' errors side by side, on the same traffic (shadow) or the same kind of traffic (A/B), for the
approval step to read. All in Spark: nothing is collected but the per-variant aggregates.
"""
from __future__ import annotations

import datetime as dt
from typing import Optional

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from taxi_fares.columns import DISTANCE, DROPOFF_TS, DROPOFF_ZIP, FARE, PICKUP_TS, PICKUP_ZIP
from taxi_fares_mlops.storage import INFERENCE_REQUESTS, RAW_TRIPS, VARIANT_COMPARISON, Lakehouse

PREDICTION = "prediction"
FIGURES = ("trips", "trips_with_fare", "rmse", "mae", "mean_prediction")
REQUEST = T.StructType([T.StructField("trips", T.ArrayType(T.StructType([
    T.StructField("pickup_time", T.StringType()), T.StructField("dropoff_time", T.StringType()),
    T.StructField("pickup_zip", T.LongType()), T.StructField("dropoff_zip", T.LongType()),
    T.StructField("trip_distance", T.DoubleType())])))])
RESPONSE = T.StructType([T.StructField("variant", T.StringType()), T.StructField("model_version", T.StringType()),
                         T.StructField("predictions", T.ArrayType(T.StructType([
                             T.StructField("fare_amount", T.DoubleType())])))])
KEYS = (PICKUP_TS, DROPOFF_TS, PICKUP_ZIP, DROPOFF_ZIP, DISTANCE)


def _instant(text):
    """An ISO time as the service read it: with a zone as given, without one as UTC (the session's zone is UTC on
    the jobs' clusters and locally)."""
    return F.to_timestamp(text)


def inference_predictions(spark: SparkSession, requests: DataFrame) -> DataFrame:
    """One row per trip of each answered request (status 200): request id and time, version, variant, the trip's
    fields and the prediction."""
    answered = (requests.filter(F.col("status_code") == 200)
                .withColumn("_request", F.from_json("request", REQUEST))
                .withColumn("_response", F.from_json("response", RESPONSE)))
    pairs = answered.select(
        "databricks_request_id", "request_time", "served_entity_id",
        F.coalesce(F.col("_response.variant"), F.lit("champion")).alias("variant"),
        F.element_at(F.split("served_entity_id", "/"), -1).alias("model_version"),
        F.posexplode(F.arrays_zip(F.col("_request.trips").alias("trip"),
                                  F.col("_response.predictions").alias("answer"))).alias("position", "pair"))
    return pairs.select(
        "databricks_request_id", "request_time", "served_entity_id", "variant", "model_version", "position",
        _instant(F.col("pair.trip.pickup_time")).alias(PICKUP_TS),
        _instant(F.col("pair.trip.dropoff_time")).alias(DROPOFF_TS),
        F.col("pair.trip.pickup_zip").cast("int").alias(PICKUP_ZIP),
        F.col("pair.trip.dropoff_zip").cast("int").alias(DROPOFF_ZIP),
        F.col("pair.trip.trip_distance").alias(DISTANCE),
        F.col("pair.answer.fare_amount").alias(PREDICTION))


def _fares(spark: SparkSession, lakehouse: Lakehouse) -> DataFrame:
    """The fares that arrived, one per trip key (raw_trips may hold a trip twice)."""
    return lakehouse.read(spark, RAW_TRIPS).select(*[F.col(k) for k in KEYS], F.col(FARE)).dropDuplicates(list(KEYS))


def online_scored(spark: SparkSession, lakehouse: Lakehouse, model_version: str, start: dt.datetime,
                  end: dt.datetime, requests: Optional[DataFrame] = None) -> DataFrame:
    """The trips ``model_version`` answered online (not its shadow scores) picked up in [start, end), as the
    predictions table holds scored trips: the trip's columns, ``prediction``, ``model_version`` and the fare
    (null until it arrives in raw_trips)."""
    requests = requests if requests is not None else lakehouse.read(spark, INFERENCE_REQUESTS)
    answered = inference_predictions(spark, requests).filter(
        (F.col("model_version") == str(model_version)) & (F.col("variant") != "shadow")
        & (F.col(PICKUP_TS) >= F.lit(start)) & (F.col(PICKUP_TS) < F.lit(end)))
    return (answered.select(*KEYS, PREDICTION, "model_version", "request_time", "databricks_request_id")
            .join(_fares(spark, lakehouse), on=list(KEYS), how="left"))


def compare_variants(spark: SparkSession, lakehouse: Lakehouse, since: Optional[dt.datetime] = None,
                     requests: Optional[DataFrame] = None, start: Optional[dt.datetime] = None,
                     end: Optional[dt.datetime] = None, model_name: Optional[str] = None) -> list[dict]:
    """Per variant and version: trips scored, trips whose fare arrived, rmse, mae, mean prediction; written to
    ``variant_comparison`` (appended, one set per comparison, stamped with its time) and returned. ``since``: the
    requests answered from then on; ``start``/``end``: the trips picked up in [start, end) (a monitoring window);
    ``model_name``: only that model's answers (``served_entity_id`` ``<model>/<version>``)."""
    requests = requests if requests is not None else lakehouse.read(spark, INFERENCE_REQUESTS)
    if since is not None:
        requests = requests.filter(F.col("request_time") >= F.lit(since))
    if model_name is not None:
        requests = requests.filter(F.col("served_entity_id").startswith(f"{model_name}/"))
    scored = inference_predictions(spark, requests)
    if start is not None:
        scored = scored.filter(F.col(PICKUP_TS) >= F.lit(start))
    if end is not None:
        scored = scored.filter(F.col(PICKUP_TS) < F.lit(end))
    joined = scored.join(_fares(spark, lakehouse), on=list(KEYS), how="left")
    error = F.col(PREDICTION) - F.col(FARE)
    summary = (joined.groupBy("variant", "model_version").agg(
        F.count(F.lit(1)).alias("trips"), F.count(FARE).alias("trips_with_fare"),
        F.sqrt(F.avg(error * error)).alias("rmse"), F.avg(F.abs(error)).alias("mae"),
        F.avg(PREDICTION).alias("mean_prediction"), F.min("request_time").alias("window_start"),
        F.max("request_time").alias("window_end"))
        .withColumn("compared_at", F.current_timestamp()))
    rows = [r.asDict() for r in summary.orderBy("variant", "model_version").collect()]  # a few aggregate rows
    if rows:
        lakehouse.write(spark.createDataFrame(rows, summary.schema), VARIANT_COMPARISON, mode="append")
    return rows


def log_comparison(rows: list[dict], experiment: str) -> str:
    """The comparison's figures as one MLflow run of ``experiment`` (metrics ``<variant>_v<version>_<figure>``);
    returns the run id."""
    import mlflow

    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name="variant-comparison") as run:
        for row in rows:
            prefix = f"{row['variant']}_v{row['model_version']}"
            mlflow.log_metrics({f"{prefix}_{k}": float(row[k]) for k in FIGURES if row[k] is not None})
    return run.info.run_id


# The tags a compared version carries in the registry (the approval step and `mlops approve` show them): its own
# figures and the champion's of the same comparison.
ONLINE_TAG_PREFIX = "online."


def comparison_tags(rows: list[dict], champion_version: Optional[str]) -> dict[str, dict[str, str]]:
    """Version -> the registry tags recording its latest online comparison against ``champion_version``, for each
    version a comparison's ``rows`` (``compare_variants``) show answering as challenger or in shadow."""
    champion = next((r for r in rows if r["variant"] == "champion" and str(r["model_version"]) == str(
        champion_version)), None)
    tags: dict[str, dict[str, str]] = {}
    for row in rows:
        if row["variant"] == "champion" or str(row["model_version"]) == str(champion_version):
            continue
        # every key, each time: a comparison without the champion must not leave an earlier one's figures
        recorded = {"variant": row["variant"], "compared_at": _text(row.get("compared_at")),
                    **{figure: _text(row.get(figure)) for figure in FIGURES},
                    "champion_version": str(champion["model_version"]) if champion is not None else "none",
                    **{f"champion_{figure}": _text(champion.get(figure) if champion is not None else None)
                       for figure in FIGURES}}
        tags[str(row["model_version"])] = {ONLINE_TAG_PREFIX + k: v for k, v in recorded.items()}
    return tags


NO_ONLINE_COMPARISON = ("no online comparison recorded yet (serve it beside the champion: `mlops serving package "
                        "--with-challenger`, shadow or A/B; the monitoring job on inference_requests records one)")


def describe_comparison(tags: dict[str, str]) -> str:
    """One line a person reads before approving, from a version's tags (``NO_ONLINE_COMPARISON`` without)."""
    if ONLINE_TAG_PREFIX + "rmse" not in tags:
        return NO_ONLINE_COMPARISON
    line = (f"online ({tags.get('online.variant')}, compared {tags.get('online.compared_at')}): rmse "
            f"{tags.get('online.rmse')} on {tags.get('online.trips_with_fare')} trips with a fare of "
            f"{tags.get('online.trips')} scored")
    if tags.get("online.champion_version", "none") != "none":
        line += (f"; champion version {tags['online.champion_version']}: rmse {tags.get('online.champion_rmse')} on "
                 f"{tags.get('online.champion_trips_with_fare')} of {tags.get('online.champion_trips')}")
    else:
        line += "; the champion answered none of that traffic"
    return line


def _text(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dt.datetime):
        return value.isoformat(timespec="seconds")
    return str(value)
