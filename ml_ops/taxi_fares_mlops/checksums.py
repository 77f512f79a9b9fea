"""SHA-256 of files, read in 1 MiB blocks: for wheel SHA256SUMS, serving-bundle manifests and local wheel caches."""
from __future__ import annotations

import hashlib
from pathlib import Path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
