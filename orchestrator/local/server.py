"""A local server process the embedded default starts (Azurite, a Spark Connect server): started, waited for
until it listens on its loopback port, stopped (terminate, then kill). Subclasses say what to run."""
from __future__ import annotations

import socket
import subprocess
import time
from typing import IO, Mapping, Optional, Union

# MLflow's store settings. A process that runs jobs for any lakehouse (a Spark Connect server, a cluster's daemons,
# a notebook kernel until its job's store is set) must not inherit the caller's (a shell, a test whose store an
# earlier command left in the environment): MLflow's spark_udf hands a Connect server's Python workers the job's
# tracking URI only, and an inherited registry URI would then resolve the job's models in another store.
MLFLOW_STORE_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def without_mlflow_stores(env: Mapping[str, str]) -> dict[str, str]:
    return {name: value for name, value in env.items() if name not in MLFLOW_STORE_VARIABLES}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    name = "server"

    def __init__(self, port: Optional[int] = None):
        self.port = port or free_port()
        self.process: Optional[subprocess.Popen] = None

    def launch(self, command: list[str], timeout_s: float, env: Optional[Mapping[str, str]] = None,
               output: Union[int, IO, None] = subprocess.DEVNULL, hint: str = "") -> None:
        """Start ``command`` and return once the port accepts connections; a clear error if it does not."""
        self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self.process.returncode}{hint}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"{self.name} did not listen on 127.0.0.1:{self.port} within {timeout_s:.0f}s{hint}")

    def stop(self, grace_s: float = 30) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def start(self):
        raise NotImplementedError

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
