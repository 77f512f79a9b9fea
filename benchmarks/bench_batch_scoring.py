"""Benchmark: batch scoring throughput and driver memory at two sizes, against in-process predict.

    python benchmarks/bench_batch_scoring.py [--sizes 1000000 4000000]     (or: make bench)

For each size it generates that many trips into a temporary lakehouse, runs the batch-scoring job
(feature engineering, then scoring with the registered champion through ``mlflow.pyfunc.spark_udf`` and the
Delta write), and samples the driver's memory meanwhile: the Python driver's resident set (where a
``toPandas()`` would land) and the JVM heap (in local mode the JVM holds the executors too). The denominator
is ``model.predict`` on the same model, in this process, on rows already in memory. Figures are ratios
measured in one run on one machine; they are printed, never asserted.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")


class MemorySampler:
    """Peak Python RSS and peak JVM heap while a block runs (sampled every 0.2 s)."""

    def __init__(self, spark):
        self.spark = spark
        self.peak_rss = 0
        self.peak_heap = 0
        self._stop = threading.Event()

    def _rss(self) -> int:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _heap(self) -> int:
        bean = self.spark._jvm.java.lang.management.ManagementFactory.getMemoryMXBean()
        return int(bean.getHeapMemoryUsage().getUsed())

    def _loop(self):
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, self._rss())
            self.peak_heap = max(self.peak_heap, self._heap())
            time.sleep(0.2)

    def __enter__(self):
        self.spark._jvm.java.lang.System.gc()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 4_000_000])
    parser.add_argument("--train-rows", type=int, default=100_000)
    args = parser.parse_args(argv)

    import logging

    import mlflow
    import numpy as np

    from taxi_fares.features import MODEL_FEATURES
    from taxi_fares.synthetic import generate_trips
    from taxi_fares_mlops.config import (SCORING_PARAMETERS, TRAINING_PARAMETERS, ScoringConfig,
                                         TrainingConfig)
    from taxi_fares_mlops.jobs import run_job
    from taxi_fares_mlops.summary import JobSummary
    from taxi_fares_mlops.spark import get_spark
    from taxi_fares_mlops.storage import RAW_TRIPS, Lakehouse

    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="mlops-bench-"))
    mlflow.set_tracking_uri(f"sqlite:///{work}/mlflow.db")
    spark = get_spark("bench")
    start, end = "2016-01-01", "2016-03-01"

    def config(cls, parameters, lakehouse, **changes):
        values = {p.name: p.default for p in parameters}
        values.update(start_date=start, end_date=end, lakehouse_root=str(lakehouse), mlflow_experiment="bench",
                      **changes)
        return cls.from_mapping(values)

    print(f"[bench] training the model on {args.train_rows:,} rows", file=sys.stderr)
    train_home = work / "train"
    Lakehouse(str(train_home)).write(generate_trips(spark, args.train_rows, start, end, seed=1), RAW_TRIPS)
    run_job(config(TrainingConfig, TRAINING_PARAMETERS, train_home, max_iter="100"), spark)
    model = mlflow.sklearn.load_model("models:/taxi_fares@champion")

    rows = []
    for size in args.sizes:
        home = work / f"n{size}"
        lakehouse = Lakehouse(str(home))
        print(f"[bench] {size:,} rows: generating", file=sys.stderr)
        lakehouse.write(generate_trips(spark, size, start, end, seed=2), RAW_TRIPS)
        # The model's registry lives in the shared sqlite store; features come from this size's lakehouse.
        scoring = config(ScoringConfig, SCORING_PARAMETERS, home)
        print(f"[bench] {size:,} rows: feature engineering + batch scoring", file=sys.stderr)
        with MemorySampler(spark) as memory:
            summary = JobSummary.from_dict(run_job(scoring, spark))
        stage, features = summary.stages["batch_scoring"], summary.stages["feature_engineering"]

        sample = min(size, 1_000_000)
        frame = np.random.default_rng(0).random((sample, len(MODEL_FEATURES)))
        import pandas as pd

        pdf = pd.DataFrame(frame, columns=list(MODEL_FEATURES))
        t0 = time.perf_counter()
        model.predict(pdf)
        predict_rate = sample / (time.perf_counter() - t0)
        rows.append((size, stage.outputs["rows"], stage.duration_s, features.duration_s, memory.peak_rss,
                     memory.peak_heap, predict_rate))

    print()
    print("Batch scoring (local[2]; scoring = read + point-in-time join + spark_udf + Delta replaceWhere)")
    print(f"{'rows':>10} {'scored/s':>10} {'scoring s':>10} {'features s':>10} {'py driver MiB':>14} "
          f"{'JVM heap MiB':>13} {'predict/s':>11} {'ratio':>6}")
    for size, scored, seconds, fe_seconds, rss, heap, predict_rate in rows:
        rate = scored / seconds
        print(f"{size:>10,} {rate:>10,.0f} {seconds:>10.1f} {fe_seconds:>10.1f} {rss / 2**20:>14.0f} "
              f"{heap / 2**20:>13.0f} {predict_rate:>11,.0f} {rate / predict_rate:>6.3f}")
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        print(f"\n{last[0] / first[0]:.0f}x the rows: python driver peak RSS x{last[4] / first[4]:.2f}, "
              f"scoring throughput x{(last[1] / last[2]) / (first[1] / first[2]):.2f}")
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
