"""Benchmark: the incremental scoring job's throughput on new trips, beside the batch job's on the same trips.

    python benchmarks/bench_streaming.py [--rows 1000000] [--earlier-rows 20000] [--max-files-per-trigger N]
    (or: make bench)

One Spark session, one temporary lakehouse, the champion trained and registered as the batch benchmark does it
(``bench_batch_scoring.train_champion``). Earlier trips (January and February) are already in ``raw_trips`` with
their features, and a first run of the ``scoring_stream`` job (``availableNow``) has scored them, so its
checkpoint is past them. Then ``--rows`` new trips of a later range (March and April, their ids after the earlier
ones') are appended to ``raw_trips`` in one commit, feature engineering runs over their range (the batch job's
stage, as a scheduled pipeline runs it before scoring; not in the figures), and the stream job runs again: it
reads only that commit. Its rate is the stage's rows over the stage's wall time (registry, checks, the query's
start and checkpoint, and the micro-batches: validation counts, the feature join, predict, the idempotent
append); its micro-batches' own seconds are the telemetry's ``micro-batch`` spans. The predictions of the new
trips' ids are counted: each new trip once is exactly ``--rows`` (printed, not asserted). Then the batch-scoring
job (scoring only) runs over the new trips' range, the same rows, and replaces them: its rate is its stage's rows
over its wall time, as in the batch benchmark. Figures are ratios measured in one run on one machine; printed,
never asserted.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench_batch_scoring import END, START, config, span_seconds, timed, train_champion

NEW_START, NEW_END = "2016-03-01", "2016-05-01"  # the new trips' range, after the earlier trips' [START, END)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="new trips the stream scores")
    parser.add_argument("--earlier-rows", type=int, default=20_000,
                        help="trips already in raw_trips and scored by a first stream run")
    parser.add_argument("--train-rows", type=int, default=100_000)
    parser.add_argument("--max-files-per-trigger", type=int, default=None,
                        help="the stream job's parameter (default: the job's default)")
    args = parser.parse_args(argv)

    import logging

    import mlflow
    from pyspark.sql import functions as F

    from orchestrator.local.spark import tuned_session
    from taxi_fares.synthetic import generate_trips
    from taxi_fares_mlops.config import (SCORING_PARAMETERS, SCORING_STREAM_PARAMETERS, ScoringConfig,
                                         ScoringStreamConfig)
    from taxi_fares_mlops.jobs import run_job
    from taxi_fares_mlops.storage import PREDICTIONS, RAW_TRIPS, Lakehouse
    from taxi_fares_mlops.summary import JobSummary

    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="mlops-bench-stream-"))
    mlflow.set_tracking_uri(f"sqlite:///{work}/mlflow.db")
    started = time.perf_counter()
    spark = tuned_session("bench")
    train_champion(spark, work, args.train_rows)

    home = work / "stream"
    lakehouse = Lakehouse(str(home))
    stream_changes = {} if args.max_files_per_trigger is None else {
        "max_files_per_trigger": str(args.max_files_per_trigger)}
    # scoring beside scoring: both jobs find the features computed over the range first
    stream = config(ScoringStreamConfig, SCORING_STREAM_PARAMETERS, home, execute_feature_engineering="false",
                    **stream_changes)

    def features(start: str, end: str) -> None:
        run_job(config(ScoringConfig, SCORING_PARAMETERS, home, start_date=start, end_date=end,
                       execute_batch_scoring="false"), spark)

    def stream_run():
        summary = JobSummary.from_dict(run_job(stream, spark))
        return summary, summary.stages["streaming_scoring"]

    print(f"[bench] {args.earlier_rows:,} earlier trips ({START}..{END}): features, first stream run",
          file=sys.stderr)
    lakehouse.write(generate_trips(spark, args.earlier_rows, START, END, seed=2), RAW_TRIPS)
    features(START, END)
    _, first = stream_run()

    print(f"[bench] {args.rows:,} new trips ({NEW_START}..{NEW_END}): appending, features", file=sys.stderr)
    offset = args.earlier_rows  # the earlier trips' ids are 0..earlier_rows-1
    new = generate_trips(spark, args.rows, NEW_START, NEW_END, seed=3)
    lakehouse.write(new.withColumn("trip_id", new["trip_id"] + offset), RAW_TRIPS, mode="append")
    feature_seconds = timed(lambda: features(NEW_START, NEW_END))

    print(f"[bench] {args.rows:,} new trips: scoring stream (availableNow)", file=sys.stderr)
    summary, streamed = stream_run()
    in_batches = span_seconds(home, summary.mlflow_run_id, "micro-batch")
    scored = lakehouse.read(spark, PREDICTIONS).filter(F.col("trip_id") >= offset)
    new_predictions = scored.count()
    new_trip_ids = scored.select("trip_id").distinct().count()

    print(f"[bench] {args.rows:,} new trips: batch scoring of {NEW_START}..{NEW_END}", file=sys.stderr)
    batch = JobSummary.from_dict(run_job(config(ScoringConfig, SCORING_PARAMETERS, home, start_date=NEW_START,
                                                end_date=NEW_END, execute_feature_engineering="false",
                                                publish_predictions="false"),
                                         spark)).stages["batch_scoring"]
    spark.stop()

    stream_rate = streamed.outputs["rows"] / streamed.duration_s
    batch_rate = batch.outputs["rows"] / batch.duration_s
    print()
    print(f"Incremental scoring (scoring_stream, availableNow) beside batch scoring on local[2]: {args.rows:,} new "
          f"trips ({NEW_START}..{NEW_END}) appended in one commit after {args.earlier_rows:,} earlier ones")
    print(f"{'job':>8} {'rows':>10} {'stage s':>8} {'rows/s':>10} {'micro-batches':>14} {'in micro-batches s':>19}")
    print(f"{'stream':>8} {streamed.outputs['rows']:>10,} {streamed.duration_s:>8.1f} {stream_rate:>10,.0f} "
          f"{streamed.outputs['micro_batches']:>14} {in_batches:>19.1f}")
    print(f"{'batch':>8} {batch.outputs['rows']:>10,} {batch.duration_s:>8.1f} {batch_rate:>10,.0f} "
          f"{'-':>14} {'-':>19}")
    print(f"\nstream / batch throughput: {stream_rate / batch_rate:.3f}")
    print(f"predictions of the new trips' ids after the stream: {new_predictions:,} ({new_trip_ids:,} distinct) "
          f"of {args.rows:,} new trips; quarantined by the stream: {streamed.outputs['quarantined']:,}")
    print(f"first stream run ({first.outputs['rows']:,} earlier trips, {first.outputs['micro_batches']} "
          f"micro-batch(es)): {first.duration_s:.1f}s; feature engineering of the new trips' range: "
          f"{feature_seconds:.1f}s (neither in the figures); whole run {time.perf_counter() - started:.0f}s")

    from bench_results import figure, record

    name, size = "streaming", f"{args.rows:,} new trips"
    record(name, "make bench", [
        figure(name, f"scoring stream, {size}", stream_rate, "rows/s", "one availableNow run: validation counts, "
               "feature join, predict and the idempotent append per micro-batch, on 2 cores"),
        figure(name, f"scoring stream micro-batches, {size}", streamed.outputs["micro_batches"], "count",
               "files per commit and max_files_per_trigger"),
        figure(name, f"scoring stream stage, {size}", streamed.duration_s, "s", "the micro-batches, the query's "
               "start and checkpoint, registry and checks"),
        figure(name, f"scoring stream in micro-batches, {size}", in_batches, "s", "the micro-batch spans"),
        figure(name, f"batch scoring of the same trips, {size}", batch_rate, "rows/s",
               "the batch job's scoring stage over the new trips' range"),
        figure(name, f"stream / batch throughput, {size}", stream_rate / batch_rate, "ratio",
               "the same join and predict; the stream adds the micro-batch's cache, validation counts and days"),
        figure(name, f"stream predictions of the new trip ids, {size}", new_predictions, "rows",
               "each new trip scored once"),
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
