"""Benchmark: batch scoring throughput, where its time goes, and driver memory, against in-process predict.

    python benchmarks/bench_batch_scoring.py [--sizes 1000000 4000000] [--with-16m] [--cluster-rows N]
    (or: make bench; make bench BENCH_ARGS=--with-16m)

For each size it generates that many trips into a temporary lakehouse and runs the batch-scoring job the way a
user does (feature engineering, then scoring with the registered champion and the Delta write), sampling the
driver's memory meanwhile: the Python driver's resident set (where a ``toPandas()`` would land) and the JVM heap
(in local mode the JVM holds the executors too).

The stage breakdown then re-runs the scoring pipeline's parts on the same session, each ending in Spark's
``noop`` sink so nothing is written: read and validate; + the point-in-time feature join; + prediction (each
part's time is the difference to the previous one); model load is ``mlflow.pyfunc.load_model`` of the same
version; Delta write is the stage's "score and write" span minus the same pipeline into ``noop``; "other" is
the rest of the stage (registry, checks, commit). Blob publish is not in the stage's figure (the stage publishes
only when a storage connection is configured): it is the stage's publish step run on the written predictions
against a local Azurite. The denominator is ``model.predict`` on the same model, in this process, on the
stage's own model inputs (up to a million rows of them, in memory, taken after the stages ran). Where the CPU
goes: the scoring stage runs again (replacing the rows it wrote) while the CPU seconds of the JVM (driver, and in
local mode the executors: scan, join, Arrow, write, JIT, GC) and of the Python workers it started are counted,
beside what as many of the stage's rows cost ``model.predict`` on one core (the rate measured on that sample).
The monitoring stage then runs alone on the scored range (rows/s and driver memory). Then the scoring job runs
again on a Spark standalone cluster on loopback (one master, two one-core workers) beside ``local[2]``. Figures
are ratios measured in one run on one machine; printed, never asserted.
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
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the orchestrator's local servers (Azurite, the standalone cluster)

START, END = "2016-01-01", "2016-03-01"


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


def cpu_seconds(spark) -> tuple[float, float]:
    """CPU seconds used so far by the JVM itself and by the processes under it (pyspark's daemon and the Python
    workers it forks, alive or already reaped by their parent), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    times, children = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        times[int(entry)] = [int(f) for f in fields[11:15]]  # utime, stime, and those of reaped children
        children.setdefault(int(fields[1]), []).append(int(entry))
    jvm = int(spark._jvm.ProcessHandle.current().pid())
    below, todo = 0, list(children.get(jvm, []))
    while todo:
        pid = todo.pop()
        below += sum(times[pid])
        todo += children.get(pid, [])
    return sum(times[jvm][:2]) / tick, below / tick


# The JVM's threads by the work they do, from their names (Linux shows the first 15 characters).
JVM_THREAD_KINDS = (("tasks", ("Executor task l",)), ("JIT", ("C1 CompilerThre", "C2 CompilerThre")),
                    ("GC", ("GC Thread", "G1 ")))


def jvm_thread_seconds(spark) -> dict[str, float]:
    """CPU seconds used so far by the JVM's live threads, summed per kind (``JVM_THREAD_KINDS``, the rest as
    "other"): the executors' tasks (scan, join, Arrow, write), the JIT compilers, the garbage collector."""
    tick = os.sysconf("SC_CLK_TCK")
    jvm = int(spark._jvm.ProcessHandle.current().pid())
    seconds = {kind: 0.0 for kind, _ in JVM_THREAD_KINDS} | {"other": 0.0}
    for task in os.listdir(f"/proc/{jvm}/task"):
        try:
            stat = Path(f"/proc/{jvm}/task/{task}/stat").read_text()
        except OSError:  # ended meanwhile
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        used = sum(int(f) for f in stat.rsplit(")", 1)[1].split()[11:13]) / tick
        kind = next((k for k, prefixes in JVM_THREAD_KINDS if name.startswith(prefixes)), "other")
        seconds[kind] += used
    return seconds


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def noop(df) -> None:
    df.write.format("noop").mode("overwrite").save()


def config(cls, parameters, lakehouse, **changes):
    values = {p.name: p.default for p in parameters}
    values.update(start_date=START, end_date=END, lakehouse_root=str(lakehouse), mlflow_experiment="bench")
    values.update(changes)
    return cls.from_mapping(values)


def train_champion(spark, work: Path, rows: int) -> str:
    """The model the benchmarks score with: trained on ``rows`` synthetic trips of [START, END) in a lakehouse of
    its own under ``work``, registered and promoted to champion (in the tracking store already set). Returns its
    URI."""
    from taxi_fares.synthetic import generate_trips
    from taxi_fares_mlops.config import TRAINING_PARAMETERS, TrainingConfig
    from taxi_fares_mlops.jobs import run_job
    from taxi_fares_mlops.storage import RAW_TRIPS, Lakehouse

    print(f"[bench] training the model on {rows:,} rows", file=sys.stderr)
    train_home = work / "train"
    Lakehouse(str(train_home)).write(generate_trips(spark, rows, START, END, seed=1), RAW_TRIPS)
    run_job(config(TrainingConfig, TRAINING_PARAMETERS, train_home, max_iter="100", execute_promotion="true"), spark)
    return "models:/taxi_fares@champion"


def span_seconds(lakehouse: Path, run_id: str, name: str) -> float:
    from taxi_fares_mlops.telemetry import read_local

    rows = read_local(lakehouse / "runs" / run_id / "telemetry.jsonl")
    return sum(r["duration_ms"] for r in rows if r["type"] == "span" and r["name"] == name) / 1000


def breakdown(spark, home: Path, summary, model_uri: str, connection: str) -> dict[str, float]:
    """Seconds per part of the scoring stage (see the module's docstring)."""
    import mlflow

    from taxi_fares_mlops import datasets, tracking
    from taxi_fares_mlops.config import SCORING_PARAMETERS, ScoringConfig
    from taxi_fares_mlops.stages.batch_scoring import SCORING_CONF
    from taxi_fares_mlops.spark import session_conf
    from taxi_fares_mlops.storage import Lakehouse

    lakehouse = Lakehouse(str(home))
    scoring = config(ScoringConfig, SCORING_PARAMETERS, home)
    model = tracking.Registry(scoring.model_name).resolve(scoring.model_alias)
    read = timed(lambda: noop(datasets.valid_trips(spark, lakehouse, scoring)))
    joined = timed(lambda: noop(datasets.trips_with_features(spark, lakehouse, scoring)))
    load = timed(lambda: mlflow.pyfunc.load_model(model_uri))
    with session_conf(spark, SCORING_CONF):
        scored = timed(lambda: noop(tracking.score(spark, datasets.trips_with_features(spark, lakehouse, scoring),
                                                   model)))
    stage = summary.stages["batch_scoring"].duration_s
    write = max(0.0, span_seconds(home, summary.mlflow_run_id, "score and write predictions") - scored)
    publish = timed(lambda: publish_predictions(spark, lakehouse, summary.mlflow_run_id, connection))
    parts = {"read+validate": read, "feature join": joined - read, "model load": load,
             "predict": scored - joined, "Delta write": write}
    parts["other"] = max(0.0, stage - sum(v for k, v in parts.items() if k != "model load"))
    parts["Blob publish"] = publish
    return parts


def publish_predictions(spark, lakehouse, run_id: str, connection: str) -> None:
    """What the stage does after the Delta write when a storage connection is configured."""
    from pyspark.sql import functions as F

    from taxi_fares_mlops import blob
    from taxi_fares_mlops.storage import PREDICTIONS

    written = lakehouse.read(spark, PREDICTIONS).filter(F.col("mlflow_run_id") == run_id)
    target = blob.BlobTarget(connection, "bench")
    blob.ensure_container(target)
    blob.publish(written, target, f"predictions/{run_id}", {"mlflow_run_id": run_id})


def model_inputs(spark, home: Path, rows: int = 1_000_000):
    """Up to ``rows`` of the stage's own model inputs (the valid trips of the range with their features) as the
    pandas frame the model gets: the trees' paths, hence predict's cost, depend on the values (uniform random
    inputs, the denominator before 2026-11-28, were predicted 1.65x faster than these rows)."""
    from taxi_fares.features import model_input_columns
    from taxi_fares_mlops import datasets
    from taxi_fares_mlops.config import SCORING_PARAMETERS, ScoringConfig
    from taxi_fares_mlops.storage import Lakehouse

    scoring = config(ScoringConfig, SCORING_PARAMETERS, home)
    joined = datasets.trips_with_features(spark, Lakehouse(str(home)), scoring)
    return joined.select(*model_input_columns()).limit(rows).toPandas()


def in_process_rate(model, frame, threads=None) -> float:
    """Rows/s of ``model.predict`` in this process on ``frame`` (rows in memory), on ``threads`` OpenMP threads
    (all cores when None)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(threads):
        return len(frame) / timed(lambda: model.predict(frame))


def scoring_cpu(spark, home: Path) -> tuple[float, float, dict[str, float], float]:
    """(stage seconds, JVM CPU seconds, those per kind of JVM thread, Python workers' CPU seconds) of a rerun of
    the scoring stage alone."""
    from taxi_fares_mlops.config import SCORING_PARAMETERS, ScoringConfig
    from taxi_fares_mlops.jobs import run_job
    from taxi_fares_mlops.summary import JobSummary

    scoring = config(ScoringConfig, SCORING_PARAMETERS, home, execute_feature_engineering="false")
    jvm, workers = cpu_seconds(spark)
    threads = jvm_thread_seconds(spark)
    summary = JobSummary.from_dict(run_job(scoring, spark))
    jvm_after, workers_after = cpu_seconds(spark)
    threads = {kind: used - threads.get(kind, 0.0) for kind, used in jvm_thread_seconds(spark).items()}
    return summary.stages["batch_scoring"].duration_s, jvm_after - jvm, threads, workers_after - workers


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 4_000_000])
    parser.add_argument("--with-16m", action="store_true", help="also score 16M rows (about 10 more minutes)")
    parser.add_argument("--train-rows", type=int, default=100_000)
    parser.add_argument("--cluster-rows", type=int, default=1_000_000,
                        help="rows scored on the standalone cluster (0: skip it)")
    args = parser.parse_args(argv)
    sizes = sorted(set(args.sizes + ([16_000_000] if args.with_16m else [])))

    import logging

    import mlflow

    from orchestrator.local.azurite import Azurite
    from taxi_fares.synthetic import generate_trips
    from taxi_fares_mlops.config import SCORING_PARAMETERS, ScoringConfig
    from taxi_fares_mlops.jobs import run_job
    from orchestrator.local.spark import tuned_session
    from taxi_fares_mlops.storage import RAW_TRIPS, Lakehouse
    from taxi_fares_mlops.summary import JobSummary

    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="mlops-bench-"))
    mlflow.set_tracking_uri(f"sqlite:///{work}/mlflow.db")
    spark_start = timed(lambda: tuned_session("bench"))
    spark = tuned_session("bench")

    model_uri = train_champion(spark, work, args.train_rows)
    model = mlflow.sklearn.load_model(model_uri)

    results = []
    with Azurite(work / "azurite") as azurite:
        for size in sizes:
            home = work / f"n{size}"
            print(f"[bench] {size:,} rows: generating", file=sys.stderr)
            Lakehouse(str(home)).write(generate_trips(spark, size, START, END, seed=2), RAW_TRIPS)
            print(f"[bench] {size:,} rows: feature engineering + batch scoring", file=sys.stderr)
            with MemorySampler(spark) as memory:
                summary = JobSummary.from_dict(run_job(config(ScoringConfig, SCORING_PARAMETERS, home), spark))
            print(f"[bench] {size:,} rows: monitoring", file=sys.stderr)
            with MemorySampler(spark) as watched:
                monitored = JobSummary.from_dict(run_job(config(
                    ScoringConfig, SCORING_PARAMETERS, home, execute_feature_engineering="false",
                    execute_batch_scoring="false", execute_monitoring="true"), spark)).stages["monitoring"]
            monitoring = (monitored.outputs["rows"] / monitored.duration_s, watched.peak_rss)
            print(f"[bench] {size:,} rows: stage breakdown", file=sys.stderr)
            parts = breakdown(spark, home, summary, model_uri, azurite.connection_string)
            print(f"[bench] {size:,} rows: scoring again, counting CPU", file=sys.stderr)
            cpu = scoring_cpu(spark, home)
            frame = model_inputs(spark, home)  # after the stages: their driver memory is measured without it
            cpu = (*cpu, size / in_process_rate(model, frame, threads=1))
            results.append((size, summary, parts, memory.peak_rss, memory.peak_heap, in_process_rate(model, frame),
                            monitoring, cpu))
            del frame
    spark.stop()

    cluster_rate = None
    if args.cluster_rows:
        cluster_rate = standalone_rate(work, args.cluster_rows, min(sizes, key=lambda s: abs(s - args.cluster_rows)))

    report(spark_start, results, cluster_rate)
    from bench_results import figure, record

    name = "batch_scoring"
    figures = [figure(name, "Spark session start", spark_start, "s", "JVM start and class loading")]
    for size, summary, _, rss, _heap, predict_rate, (monitor_rate, _), _cpu in results:
        stage = summary.stages["batch_scoring"]
        rate = stage.outputs["rows"] / stage.duration_s
        figures += [
            figure(name, f"scoring, {size:,} rows", rate, "rows/s", "2 cores shared by the JVM's tasks and the "
                   "Python workers' predict"),
            figure(name, f"scoring / in-process predict, {size:,} rows", rate / predict_rate, "ratio",
                   "Arrow transfer and the join around the same predict"),
            figure(name, f"feature engineering, {size:,} rows", summary.stages["feature_engineering"].duration_s, "s",
                   "Delta MERGE of the feature tables"),
            figure(name, f"python driver peak RSS, {size:,} rows", rss / 2**20, "MiB",
                   "constant in the rows: nothing collected to the driver"),
            figure(name, f"monitoring, {size:,} rows", monitor_rate, "rows/s", "one aggregation pass per statistic")]
    if cluster_rate is not None:
        figures.append(figure(name, f"scoring on a standalone cluster, {cluster_rate[0]:,} rows", cluster_rate[1],
                              "rows/s", "2 one-core workers on the same 2 cores, loopback shuffle"))
    record(name, "make bench", figures)
    return 0


def standalone_rate(work: Path, rows: int, size: int):
    """Scoring rows/s of the same job on a standalone cluster (one master, two one-core workers)."""
    from orchestrator.local.standalone import StandaloneCluster
    from taxi_fares_mlops.config import SCORING_PARAMETERS, ScoringConfig
    from taxi_fares_mlops.jobs import run_job
    from orchestrator.local.spark import tuned_session
    from taxi_fares_mlops.summary import JobSummary

    print(f"[bench] {size:,} rows on a standalone cluster (2 workers x 1 core)", file=sys.stderr)
    with StandaloneCluster(work / "cluster") as cluster:
        os.environ["MLOPS_SPARK_MASTER"] = cluster.url
        try:
            spark = tuned_session("bench-standalone")
            scoring = config(ScoringConfig, SCORING_PARAMETERS, work / f"n{size}", execute_feature_engineering="false")
            run_job(scoring, spark)  # the first run starts the executors' Python workers
            summary = JobSummary.from_dict(run_job(scoring, spark))
            spark.stop()
        finally:
            os.environ.pop("MLOPS_SPARK_MASTER", None)
    stage = summary.stages["batch_scoring"]
    return size, stage.outputs["rows"] / stage.duration_s


def report(spark_start: float, results, cluster_rate) -> None:
    print()
    print(f"Batch scoring on local[2]; Spark session start {spark_start:.1f}s (not in the figures below)")
    print(f"{'rows':>10} {'scored/s':>10} {'scoring s':>10} {'features s':>10} {'py driver MiB':>14} "
          f"{'JVM heap MiB':>13} {'predict/s':>11} {'ratio':>6}")
    for size, summary, _, rss, heap, predict_rate, *_ in results:
        stage = summary.stages["batch_scoring"]
        rate = stage.outputs["rows"] / stage.duration_s
        print(f"{size:>10,} {rate:>10,.0f} {stage.duration_s:>10.1f} "
              f"{summary.stages['feature_engineering'].duration_s:>10.1f} {rss / 2**20:>14.0f} "
              f"{heap / 2**20:>13.0f} {predict_rate:>11,.0f} {rate / predict_rate:>6.3f}")
    print("\nWhere the scoring stage's seconds go (read, join and predict run as one Spark job in the stage; here "
          "each is timed apart; Blob publish comes on top when a storage connection is configured)")
    names = list(results[0][2])
    print(f"{'rows':>10} " + " ".join(f"{n:>13}" for n in names))
    for size, _, parts, *_ in results:
        print(f"{size:>10,} " + " ".join(f"{parts[n]:>13.2f}" for n in names))
    cores = os.cpu_count()
    print(f"\nWhere the CPU goes: the scoring stage again (replacing its rows), CPU seconds counted; {cores} cores; "
          "'predict 1 core' is model.predict of as many rows in this process on one thread; the JVM's CPU split by "
          "its threads: executor tasks, JIT compilers, garbage collector, the rest")
    kinds = [kind for kind, _ in JVM_THREAD_KINDS] + ["other"]
    print(f"{'rows':>10} {'stage s':>8} {'JVM cpu s':>10} " + " ".join(f"{'JVM ' + k:>10}" for k in kinds)
          + f" {'Python workers cpu s':>21} {'predict 1 core s':>17} {'(JVM+workers)/cores':>20}")
    for size, *_, (stage, jvm, threads, workers, alone) in results:
        print(f"{size:>10,} {stage:>8.1f} {jvm:>10.1f} " + " ".join(f"{threads[k]:>10.1f}" for k in kinds)
              + f" {workers:>21.1f} {alone:>17.1f} {(jvm + workers) / cores:>20.1f}")
    print("\nMonitoring stage (drift against the training profile, outlier share, realized error) on the same rows")
    print(f"{'rows':>10} {'rows/s':>10} {'py driver MiB':>14}")
    for size, *_, (rate, rss), _ in results:
        print(f"{size:>10,} {rate:>10,.0f} {rss / 2**20:>14.0f}")
    if len(results) >= 2:
        first, last = results[0], results[-1]
        rate = [r[1].stages["batch_scoring"].outputs["rows"] / r[1].stages["batch_scoring"].duration_s
                for r in (first, last)]
        print(f"\n{last[0] / first[0]:.0f}x the rows: python driver peak RSS x{last[3] / first[3]:.2f}, "
              f"scoring throughput x{rate[1] / rate[0]:.2f}")
    if cluster_rate is not None:
        size, rate = cluster_rate
        local = next(r for r in results if r[0] == size)[1].stages["batch_scoring"]
        print(f"\nStandalone cluster (1 master, 2 workers x 1 core, loopback), {size:,} rows: {rate:,.0f} rows/s "
              f"(local[2]: {local.outputs['rows'] / local.duration_s:,.0f} rows/s)")


if __name__ == "__main__":
    sys.exit(main())
