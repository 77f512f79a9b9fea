"""A local Spark Connect server with Delta Lake: what serverless jobs compute and shared-access clusters are to a
job (no ``sparkContext``, RDDs or JVM access from Python). It runs from the installed pyspark, which ships the
Connect server jar, with the same Delta jars and settings as the local session (``orchestrator.local.spark``).
Jobs reach it through ``MLOPS_SPARK_REMOTE=sc://127.0.0.1:<port>``; it listens on loopback only."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

from orchestrator.local.server import LocalServer, without_mlflow_stores

SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"


def spark_submit() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "bin" / "spark-submit"


class SparkConnectServer(LocalServer):
    name = "the Spark Connect server"

    def __init__(self, log: Path, port: Optional[int] = None, master: str = "local[2]",
                 python: str = sys.executable):
        super().__init__(port)
        self.log = Path(log)
        self.master = master
        self.python = python

    @property
    def url(self) -> str:
        return f"sc://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        from orchestrator.local.spark import local_conf

        conf = {**local_conf(), "spark.connect.grpc.binding.port": str(self.port),
                "spark.connect.grpc.binding.address": "127.0.0.1"}
        command = [str(spark_submit()), "--class", SERVER_CLASS, "--name", "mlops-spark-connect",
                   "--master", self.master]
        for key, value in conf.items():
            command += ["--conf", f"{key}={value}"]
        return command

    def start(self, timeout_s: float = 300) -> "SparkConnectServer":
        env = {**without_mlflow_stores(os.environ), "PYSPARK_PYTHON": self.python, "SPARK_LOCAL_IP": "127.0.0.1"}
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.launch(self.command(), timeout_s, env=env, output=log, hint=f": see {self.log}")
        return self
