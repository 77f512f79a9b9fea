"""One JSON result per benchmark run, under benchmarks/results/: the machine, the commit, the date and the figures.

The performance page (docs/performance.md) shows the newest result of each benchmark as one table
(``make docs``); the history is the folder itself, never prose. A figure is a name, a value, a unit and what bounds it.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def figure(benchmark: str, name: str, value: float, unit: str, bound: str = "") -> dict[str, Any]:
    return {"benchmark": benchmark, "name": name, "value": value, "unit": unit, "bound": bound}


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        pages = 0
    return {"cpus": len(os.sched_getaffinity(0)), "cpu": cpu, "memory_gib": round(pages / 2**30),
            "python": platform.python_version(), "system": platform.platform()}


def _commit() -> str:
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return (done.stdout.strip() or "unknown") + ("-dirty" if dirty else "")


def record(benchmark: str, command: str, figures: list[dict[str, Any]]) -> Path:
    """Write the run's result file and return its path."""
    now = dt.datetime.now(dt.timezone.utc)
    RESULTS.mkdir(parents=True, exist_ok=True)
    commit = _commit()
    path = RESULTS / f"{now:%Y%m%dT%H%M%SZ}-{benchmark}-{commit[:12]}.json"
    result = {"benchmark": benchmark, "command": command, "date": now.isoformat(timespec="seconds"),
              "commit": commit, "machine": _machine(), "figures": figures, "file": path.name}
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"[bench] result written to {path}")
    return path
