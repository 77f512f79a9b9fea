"""The A/B comparison from the inference table: requests through the service's app in shadow mode (tests/fakes'
bundle, champion version 1, challenger version 2) land in the lakehouse's inference table; the fares of some of
those trips arrive in raw_trips; `compare_variants` (Spark) gives each variant's trips, rmse and mae, equal to
what the answers and the fares give computed here by hand, and writes them to variant_comparison."""
import datetime as dt
import json
import math

import pandas as pd
import pytest

from fakes.serving import build_bundle, call_asgi, loaded_app, sample_trips
from taxi_fares.columns import DISTANCE, DROPOFF_TS, DROPOFF_ZIP, FARE, PICKUP_TS, PICKUP_ZIP
from taxi_fares_mlops.online_traffic import (compare_variants, comparison_tags, describe_comparison,
                                             inference_predictions)
from taxi_fares_mlops.serving.app import Settings
from taxi_fares_mlops.storage import INFERENCE_REQUESTS, RAW_TRIPS, VARIANT_COMPARISON


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return build_bundle(tmp_path_factory.mktemp("comparison"), with_challenger=True)


def test_the_variants_errors_side_by_side_equal_the_answers_against_the_fares(spark, lakehouse, bundle, capsys):
    app = loaded_app(Settings(bundle=str(bundle[0]), trusted_key=str(bundle[1]), challenger_mode="shadow",
                              inference_table=lakehouse.table_path(INFERENCE_REQUESTS)))
    requests = [sample_trips(4, seed=10 + i) for i in range(5)]
    answers = [call_asgi(app, "POST", "/v1/predict", {"trips": trips})[1] for trips in requests]
    assert app.state.service.inference_log.flush()
    app.state.service.stop()

    trips = [t for r in requests for t in r]
    rows = inference_predictions(spark, lakehouse.read(spark, INFERENCE_REQUESTS)).toPandas()
    assert len(rows) == 2 * len(trips) and set(rows["variant"]) == {"champion", "shadow"}
    assert set(rows["model_version"]) == {"1", "2"}

    # the fares of every other trip arrived: a fare is 3 + 2.6 x the distance
    arrived = trips[::2]
    fares = pd.DataFrame({
        PICKUP_TS: pd.to_datetime([t["pickup_time"] for t in arrived]),
        DROPOFF_TS: pd.to_datetime([t["dropoff_time"] for t in arrived]),
        PICKUP_ZIP: [t["pickup_zip"] for t in arrived], DROPOFF_ZIP: [t["dropoff_zip"] for t in arrived],
        DISTANCE: [t["trip_distance"] for t in arrived], FARE: [3 + 2.6 * t["trip_distance"] for t in arrived]})
    lakehouse.write(spark.createDataFrame(fares).withColumn(PICKUP_ZIP, spark_int(PICKUP_ZIP))
                    .withColumn(DROPOFF_ZIP, spark_int(DROPOFF_ZIP)), RAW_TRIPS)

    compared = {r["variant"]: r for r in compare_variants(spark, lakehouse)}
    assert set(compared) == {"champion", "shadow"}
    label = {(t["pickup_time"], t["pickup_zip"], t["dropoff_zip"]): 3 + 2.6 * t["trip_distance"] for t in arrived}
    shadow_answers = _shadow_answers(spark, lakehouse)
    for variant, predictions in (("champion", [p["fare_amount"] for a in answers for p in a["predictions"]]),
                                 ("shadow", shadow_answers)):
        errors = [p - label[(t["pickup_time"], t["pickup_zip"], t["dropoff_zip"])]
                  for t, p in zip(trips, predictions) if (t["pickup_time"], t["pickup_zip"], t["dropoff_zip"]) in label]
        row = compared[variant]
        assert row["trips"] == len(trips) and row["trips_with_fare"] == len(arrived) == len(errors)
        assert math.isclose(row["rmse"], math.sqrt(sum(e * e for e in errors) / len(errors)), abs_tol=1e-9)
        assert math.isclose(row["mae"], sum(abs(e) for e in errors) / len(errors), abs_tol=1e-9)
    assert compared["champion"]["model_version"] == "1" and compared["shadow"]["model_version"] == "2"
    assert compared["shadow"]["mean_prediction"] > compared["champion"]["mean_prediction"]  # trained on +20% fares
    written = lakehouse.read(spark, VARIANT_COMPARISON).toPandas()
    assert sorted(written["variant"]) == ["champion", "shadow"] and written["compared_at"].notna().all()
    # nothing since the future, nor picked up in a window without these trips
    assert compare_variants(spark, lakehouse, since=dt.datetime(2100, 1, 1)) == []
    assert compare_variants(spark, lakehouse, start=dt.datetime(2016, 6, 1), end=dt.datetime(2016, 7, 1)) == []
    # what the approval step and `mlops approve` show: the shadow version's figures beside the champion's
    tags = comparison_tags(list(compared.values()), "1")
    assert list(tags) == ["2"]
    assert tags["2"]["online.variant"] == "shadow" and tags["2"]["online.champion_version"] == "1"
    assert tags["2"]["online.rmse"] == f"{compared['shadow']['rmse']:.4f}"
    assert tags["2"]["online.champion_rmse"] == f"{compared['champion']['rmse']:.4f}"
    assert tags["2"]["online.trips_with_fare"] == str(len(arrived))
    line = describe_comparison(tags["2"])
    assert f"rmse {compared['shadow']['rmse']:.4f} on {len(arrived)} trips with a fare" in line
    assert f"champion version 1: rmse {compared['champion']['rmse']:.4f}" in line
    assert describe_comparison({}).startswith("no online comparison recorded yet")
    assert comparison_tags(list(compared.values()), "2") == {}
    # without the champion's row, its figures are written as none (never left from an earlier comparison)
    alone = comparison_tags([compared["shadow"]], "1")["2"]
    assert (alone["online.champion_version"], alone["online.champion_rmse"]) == ("none", "none")
    assert "the champion answered none of that traffic" in describe_comparison(alone)
    # another model's answers in the same table are not this model's
    assert compare_variants(spark, lakehouse, model_name="another_model") == []
    # the operator's command: the same figures, printed, appended and logged to MLflow
    from orchestrator.cli import main as mlops_main

    assert mlops_main(["serving", "compare", "--local", "--since", "2016-01-01"]) == 0
    printed = capsys.readouterr()
    assert "shadow" in printed.out and f"{compared['shadow']['rmse']:>8.3f}" in printed.out
    assert "variant_comparison" in printed.err and "MLflow experiment 'taxi_fares_variant_comparison'" in printed.err
    assert len(lakehouse.read(spark, VARIANT_COMPARISON).toPandas()) == 4
    import mlflow

    run = mlflow.search_runs(experiment_names=["taxi_fares_variant_comparison"], output_format="list")[0]
    assert math.isclose(run.data.metrics["shadow_v2_rmse"], compared["shadow"]["rmse"], abs_tol=1e-9)
    assert mlops_main(["serving", "compare", "--local", "--since", "last tuesday"]) == 2


def spark_int(column):
    from pyspark.sql import functions as F

    return F.col(column).cast("int")


def _shadow_answers(spark, lakehouse) -> list[float]:
    """The challenger's predictions in request order, from the shadow rows of the table."""
    table = lakehouse.read(spark, INFERENCE_REQUESTS).toPandas().sort_values("request_time")
    shadow = [json.loads(r) for r, e in zip(table["response"], table["served_entity_id"]) if e.endswith("/2")]
    return [p["fare_amount"] for answer in shadow for p in answer["predictions"]]
