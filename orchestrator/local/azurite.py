"""Azurite, the official Azure Storage emulator (npm package ``azurite``, installed by ``make install``), as a
local Blob endpoint for the demo and the tests. It listens on 127.0.0.1 only and keeps its data in a folder."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from orchestrator.local.server import LocalServer
from orchestrator.paths import REPO_ROOT

AZURITE_BLOB = REPO_ROOT / "node_modules" / ".bin" / "azurite-blob"
# Azurite's well-known development account (public, documented; not a secret).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class Azurite(LocalServer):
    name = "Azurite"

    def __init__(self, location: Path, port: Optional[int] = None):
        super().__init__(port)
        self.location = Path(location)

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
                f"BlobEndpoint=http://127.0.0.1:{self.port}/{ACCOUNT};")

    def start(self, timeout_s: float = 30) -> "Azurite":
        if not AZURITE_BLOB.exists():
            raise FileNotFoundError(f"{AZURITE_BLOB} is missing: run `make install` (it installs Azurite from npm)")
        self.location.mkdir(parents=True, exist_ok=True)
        self.launch([str(AZURITE_BLOB), "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--location",
                     str(self.location), "--silent", "--skipApiVersionCheck", "--disableTelemetry"], timeout_s)
        return self
