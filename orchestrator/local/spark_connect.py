"""A local Spark Connect server with Delta Lake: what serverless jobs compute and shared-access clusters are to a
job (no ``sparkContext``, RDDs or JVM access from Python). It runs from the installed pyspark, which ships the
Connect server jar, with the same Delta jars and settings as the local session (``taxi_fares_mlops.spark``).
Jobs reach it through ``MLOPS_SPARK_REMOTE=sc://127.0.0.1:<port>``; it listens on loopback only."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from orchestrator.local.azurite import free_port

SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"


def spark_submit() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "bin" / "spark-submit"


class SparkConnectServer:
    def __init__(self, log: Path, port: Optional[int] = None, master: str = "local[2]",
                 python: str = sys.executable):
        self.log = Path(log)
        self.port = port or free_port()
        self.master = master
        self.python = python
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"sc://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        from taxi_fares_mlops.spark import local_conf

        conf = {**local_conf(), "spark.connect.grpc.binding.port": str(self.port),
                "spark.connect.grpc.binding.address": "127.0.0.1"}
        command = [str(spark_submit()), "--class", SERVER_CLASS, "--name", "mlops-spark-connect",
                   "--master", self.master]
        for key, value in conf.items():
            command += ["--conf", f"{key}={value}"]
        return command

    def start(self, timeout_s: float = 300) -> "SparkConnectServer":
        env = {**os.environ, "PYSPARK_PYTHON": self.python, "SPARK_LOCAL_IP": "127.0.0.1"}
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the Spark Connect server exited with code {self.process.returncode}: "
                                   f"see {self.log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"the Spark Connect server did not listen on 127.0.0.1:{self.port} within "
                           f"{timeout_s:.0f}s: see {self.log}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> "SparkConnectServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
