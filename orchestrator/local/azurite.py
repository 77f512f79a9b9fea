"""Azurite, the official Azure Storage emulator (npm package ``azurite``, installed by ``make install``), as a
local Blob endpoint for the demo and the tests. It listens on 127.0.0.1 only and keeps its data in a folder."""
from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

from orchestrator.paths import REPO_ROOT

AZURITE_BLOB = REPO_ROOT / "node_modules" / ".bin" / "azurite-blob"
# Azurite's well-known development account (public, documented; not a secret).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Azurite:
    def __init__(self, location: Path, port: Optional[int] = None):
        self.location = Path(location)
        self.port = port or free_port()
        self.process: Optional[subprocess.Popen] = None

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
                f"BlobEndpoint=http://127.0.0.1:{self.port}/{ACCOUNT};")

    def start(self, timeout_s: float = 30) -> "Azurite":
        if not AZURITE_BLOB.exists():
            raise FileNotFoundError(f"{AZURITE_BLOB} is missing: run `make install` (it installs Azurite from npm)")
        self.location.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [str(AZURITE_BLOB), "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--location",
             str(self.location), "--silent", "--skipApiVersionCheck", "--disableTelemetry"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Azurite exited with code {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"Azurite did not listen on 127.0.0.1:{self.port} within {timeout_s:.0f}s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> "Azurite":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
