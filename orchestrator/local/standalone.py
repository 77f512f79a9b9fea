"""A Spark standalone cluster on loopback: one master and two workers, each worker starting its own executor JVM
and Python workers, as a Databricks cluster does. Jobs reach it with ``MLOPS_SPARK_MASTER=spark://...``. It
catches code that only works when the driver and the executors share a process (a closure holding a large
object, state kept in the driver) that ``local[N]`` hides. It runs from the installed pyspark (bin/spark-class)."""
from __future__ import annotations

import json
import os
import time
import urllib.request
from pathlib import Path
from typing import Optional

from orchestrator.local.server import LocalServer, free_port, without_mlflow_stores


def spark_class() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "bin" / "spark-class"


class _Daemon(LocalServer):
    def __init__(self, name: str, command: list[str], log: Path, port: int):
        super().__init__(port)
        self.name, self.command, self.log = name, command, log

    def start(self, timeout_s: float = 120) -> "_Daemon":
        from orchestrator.environment import SPARK_JAVA_OPTIONS

        env = {**without_mlflow_stores(os.environ), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_NO_DAEMONIZE": "1",
               "SPARK_DAEMON_JAVA_OPTS": SPARK_JAVA_OPTIONS.get() or ""}
        with open(self.log, "ab") as log:
            self.launch(self.command, timeout_s, env=env, output=log, hint=f": see {self.log}")
        return self


class StandaloneCluster:
    def __init__(self, work: Path, workers: int = 2, cores_per_worker: int = 1, memory_per_worker: str = "1536m"):
        self.work = Path(work)
        self.workers = workers
        self.port, self.ui_port = free_port(), free_port()
        self.daemons: list[_Daemon] = []
        self.cores, self.memory = cores_per_worker, memory_per_worker

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    def alive_workers(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/", timeout=5) as response:
            return int(json.load(response).get("aliveworkers", 0))

    def start(self, timeout_s: float = 120) -> "StandaloneCluster":
        self.work.mkdir(parents=True, exist_ok=True)
        master = _Daemon("the Spark master", [str(spark_class()), "org.apache.spark.deploy.master.Master",
                                              "--host", "127.0.0.1", "--port", str(self.port),
                                              "--webui-port", str(self.ui_port)], self.work / "master.log", self.port)
        self.daemons.append(master.start(timeout_s))
        for i in range(self.workers):
            port = free_port()
            folder = self.work / f"worker-{i}"
            folder.mkdir(exist_ok=True)
            worker = _Daemon(f"Spark worker {i}", [
                str(spark_class()), "org.apache.spark.deploy.worker.Worker", self.url, "--host", "127.0.0.1",
                "--port", str(port), "--webui-port", str(free_port()), "--cores", str(self.cores),
                "--memory", self.memory, "--work-dir", str(folder)], self.work / f"worker-{i}.log", port)
            self.daemons.append(worker.start(timeout_s))
        deadline = time.monotonic() + timeout_s
        while self.alive_workers() < self.workers:
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"only {self.alive_workers()} of {self.workers} workers registered with "
                                   f"{self.url} within {timeout_s:.0f}s: see {self.work}")
            time.sleep(0.5)
        return self

    def stop(self) -> None:
        for daemon in reversed(self.daemons):
            daemon.stop(grace_s=20)
        self.daemons.clear()

    def __enter__(self) -> "StandaloneCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: Optional[list[str]] = None) -> int:  # pragma: no cover - a manual helper
    """`python -m orchestrator.local.standalone`: a cluster to point MLOPS_SPARK_MASTER at, by hand."""
    import argparse

    parser = argparse.ArgumentParser(description="run a local Spark standalone cluster until Ctrl-C")
    parser.add_argument("--work", type=Path, default=Path(".mlops/standalone"))
    args = parser.parse_args(argv)
    with StandaloneCluster(args.work) as cluster:
        print(f"MLOPS_SPARK_MASTER={cluster.url}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
